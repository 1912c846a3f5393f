"""A constant-velocity Kalman filter over a box, as SORT, DeepSORT and ByteTrack keep one per
track: the state is the box's center, aspect ratio (w / h) and height, and their velocities per
frame; the noise grows with the box's height, so a big near object may move more pixels than a
small far one."""

from __future__ import annotations

import numpy as np

POSITION_WEIGHT = 1.0 / 20
VELOCITY_WEIGHT = 1.0 / 160

_MOTION = np.eye(8)
_MOTION[:4, 4:] = np.eye(4)  # each frame: position += velocity
_OBSERVE = np.eye(4, 8)


def box_to_measurement(box: np.ndarray) -> np.ndarray:
    """``[x0, y0, x1, y1]`` -> ``[cx, cy, w / h, h]``."""
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([box[0] + w / 2, box[1] + h / 2, w / max(h, 1e-6), h], np.float64)


def measurement_to_box(z: np.ndarray) -> np.ndarray:
    w = z[2] * z[3]
    return np.array([z[0] - w / 2, z[1] - z[3] / 2, z[0] + w / 2, z[1] + z[3] / 2], np.float64)


class BoxFilter:
    def __init__(self, box: np.ndarray) -> None:
        z = box_to_measurement(box)
        self.mean = np.concatenate([z, np.zeros(4)])
        h = z[3]
        std = [2 * POSITION_WEIGHT * h, 2 * POSITION_WEIGHT * h, 1e-2, 2 * POSITION_WEIGHT * h]
        std += [10 * VELOCITY_WEIGHT * h, 10 * VELOCITY_WEIGHT * h, 1e-5, 10 * VELOCITY_WEIGHT * h]
        self.covariance = np.diag(np.square(std))

    @property
    def box(self) -> np.ndarray:
        return measurement_to_box(self.mean[:4])

    @property
    def velocity(self) -> tuple[float, float]:
        """The center's velocity, pixels per frame."""
        return float(self.mean[4]), float(self.mean[5])

    def predict(self, *, still: bool = False) -> None:
        """One frame on. ``still``: a lost track's size is not extrapolated (its height velocity
        is zeroed), as ByteTrack does, so it does not shrink away while unseen."""
        if still:
            self.mean[7] = 0.0
        h = self.mean[3]
        std = [POSITION_WEIGHT * h, POSITION_WEIGHT * h, 1e-2, POSITION_WEIGHT * h]
        std += [VELOCITY_WEIGHT * h, VELOCITY_WEIGHT * h, 1e-5, VELOCITY_WEIGHT * h]
        self.mean = _MOTION @ self.mean
        self.covariance = _MOTION @ self.covariance @ _MOTION.T + np.diag(np.square(std))

    def update(self, box: np.ndarray) -> None:
        z = box_to_measurement(box)
        h = self.mean[3]
        noise = np.diag(np.square([POSITION_WEIGHT * h, POSITION_WEIGHT * h, 1e-1, POSITION_WEIGHT * h]))
        projected = _OBSERVE @ self.covariance @ _OBSERVE.T + noise
        gain = np.linalg.solve(projected, _OBSERVE @ self.covariance).T
        self.mean = self.mean + gain @ (z - _OBSERVE @ self.mean)
        self.covariance = self.covariance - gain @ projected @ gain.T
