"""stages.colorspace: NV12 -> BGR as the GPU path runs it (here with numpy), against FFmpeg's own
conversion of the same decoded frames (what the CPU path uses)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from stages.colorspace import nv12_to_bgr


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def test_nv12_to_bgr_matches_ffmpeg_on_the_sample(sample_video: Path):
    with av.open(str(sample_video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 50:
                continue
            expected = frame.to_ndarray(format="bgr24")
            nv12 = frame.reformat(format="nv12").to_ndarray()
            got = nv12_to_bgr(nv12, frame.height, frame.width)
            assert got.shape == expected.shape and got.dtype == np.uint8
            assert psnr(expected, got) >= 45.0  # issue 5 asks 40 dB of NVDEC against the CPU decode


def test_the_matrix_matters_and_unknown_ones_are_refused():
    nv12 = np.full((6, 4), 128, np.uint8)
    nv12[:4] = 180  # luma; chroma stays neutral but for one V sample
    nv12[4:, 1] = 150  # V of the first chroma pair: a little red
    bt601 = nv12_to_bgr(nv12, 4, 4, "bt601")
    bt709 = nv12_to_bgr(nv12, 4, 4, "bt709")
    assert bt601[0, 0, 2] != bt709[0, 0, 2]  # red differs with the matrix
    assert bt601[0, 0, 0] == bt709[0, 0, 0]  # blue has no V term in either
    with pytest.raises(ValueError, match="matrix"):
        nv12_to_bgr(nv12, 4, 4, "bt2020")
