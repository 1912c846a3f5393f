"""NV12 -> BGR on the GPU: the CuPy kernel against the numpy reference, to the bit.

The unit tests run the same kernel source on the CPU (compiled by g++); here NVRTC compiles it
for the device, where a multiply-add fused by the compiler or another ``rintf`` would show: the
exhaustive picture holds every (Y, U, V) triplet, and such a change moves a few dozen of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stages.decode import colorspace
from stages.decode.colorspace import nv12_to_bgr
from tests.gpu.frames import Counted
from tests.unit.stages.test_colorspace import every_yuv_nv12, sample_nv12_frames

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> Counted:
    kernel = Counted(colorspace._nv12_kernel())
    monkeypatch.setattr(colorspace, "_nv12_kernel", lambda: kernel)
    return kernel


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
def test_the_kernel_converts_the_sample_as_the_reference_does(sample_video: Path, counted: Counted, matrix: str):
    frames = 0
    for nv12, height, width in sample_nv12_frames(sample_video, every=25):
        got = nv12_to_bgr(cupy.asarray(nv12), height, width, matrix, xp=cupy)
        frames += 1
        assert isinstance(got, cupy.ndarray) and got.dtype == np.uint8 and got.shape == (height, width, 3)
        assert np.array_equal(cupy.asnumpy(got), nv12_to_bgr(nv12, height, width, matrix))
    assert frames >= 2 and counted.launches == frames  # one launch a frame


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
def test_the_kernel_converts_every_yuv_triplet_as_the_reference_does(matrix: str):
    nv12 = every_yuv_nv12()
    got = nv12_to_bgr(cupy.asarray(nv12), 4096, 4096, matrix, xp=cupy)
    expected = nv12_to_bgr(nv12, 4096, 4096, matrix)
    mismatched = int(np.count_nonzero(cupy.asnumpy(got) != expected))
    assert mismatched == 0


def test_the_kernel_reads_a_pitched_surface():
    # NVDEC surfaces have rows longer than the picture (a pitch): the kernel steps rows by it.
    height, width = 360, 640
    nv12 = np.random.default_rng(4).integers(0, 256, (height * 3 // 2, width), dtype=np.uint8)
    surface = cupy.zeros((height * 3 // 2, 1024), dtype=np.uint8)
    surface[:, :width] = cupy.asarray(nv12)
    got = nv12_to_bgr(surface[:, :width], height, width, xp=cupy)
    assert np.array_equal(cupy.asnumpy(got), nv12_to_bgr(nv12, height, width))


def test_the_frame_is_complete_when_handed_on():
    # The hand-off rule: a consumer on another stream (ONNX Runtime's) may read it at once.
    nv12 = cupy.asarray(every_yuv_nv12())
    with cupy.cuda.Stream(non_blocking=True) as stream:
        nv12_to_bgr(nv12, 4096, 4096, xp=cupy)
        assert stream.done
