"""Prepare on the GPU: a CuPy frame is prepared on the device, and matches the CPU prepare.

One kernel (``stages.gpuprep``) resizes with OpenCV's ``INTER_LINEAR_EXACT`` arithmetic and
normalizes as the CPU prepare does; the unit tests hold its source, compiled for the CPU, to the
CPU prepare to the bit. Here it runs on the device: issue 5 asks for 1e-3 after normalization,
and the resized pixels (a tensor with gain 1 and bias 0) must be OpenCV's exactly.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline import gpuprep
from pipeline.gpuprep import taps_cache_info
from pipeline.imaging import prepare_image
from pipeline.modelcard import Preprocess, load_card
from stages.decode.colorspace import nv12_to_bgr
from tests.gpu.frames import Counted
from tests.unit.stages.test_colorspace import sample_nv12_frames

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")


def first_frame(sample_video: Path) -> np.ndarray:
    with av.open(str(sample_video)) as container:
        frame: np.ndarray = next(container.decode(video=0)).to_ndarray(format="bgr24")
    return frame


@pytest.mark.parametrize(("card", "resize"), [("pp-ocrv4-det", "stretch"), ("pp-ocrv4-det", "letterbox")])
def test_gpu_prepare_matches_cpu_prepare(sample_video: Path, card: str, resize: str) -> None:
    spec = load_card(card).preprocess
    assert spec is not None
    frame = first_frame(sample_video)
    size = (spec.size[0], spec.size[1])
    cpu = prepare_image(frame, size, resize, spec)
    gpu = prepare_image(cupy.asarray(frame), size, resize, spec)
    assert hasattr(gpu.data, "__cuda_array_interface__")  # the tensor stays on the device
    assert gpu.geometry == cpu.geometry
    difference = np.abs(cupy.asnumpy(gpu.data) - cpu.data)
    assert float(difference.max()) <= 1e-3


@pytest.mark.parametrize(
    ("size", "resize"), [((352, 640), "stretch"), ((640, 640), "letterbox"), ((48, 320), "letterbox")]
)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("color", ["rgb", "bgr"])
def test_gpu_prepare_matches_cpu_prepare_in_every_layout(sample_video: Path, size, resize, layout, color) -> None:
    spec = Preprocess(
        size=list(size), layout=layout, color=color, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]
    )
    frame = first_frame(sample_video)
    cpu = prepare_image(frame, size, resize, spec).data
    gpu = cupy.asnumpy(prepare_image(cupy.asarray(frame), size, resize, spec).data)
    assert gpu.shape == cpu.shape and gpu.dtype == np.float32
    assert float(np.abs(gpu - cpu).max()) <= 1e-3
    # The kernel rounds each product and sum as numpy does (no fused multiply-add): to the bit.
    assert np.array_equal(gpu, cpu)


@pytest.mark.parametrize(
    ("source", "size"),
    [((360, 640), (352, 640)), ((360, 640), (720, 1280)), ((1080, 1920), (736, 1312)), ((37, 53), (100, 21))],
)
def test_the_device_resize_gives_opencvs_pixels_exactly(source, size) -> None:
    image = np.random.default_rng(5).integers(0, 256, (*source, 3), dtype=np.uint8)
    spec = Preprocess(size=list(size), layout="NHWC", color="bgr", scale=1.0)  # the tensor is the pixels
    got = cupy.asnumpy(prepare_image(cupy.asarray(image), size, "stretch", spec).data)
    expected = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR_EXACT)
    assert np.array_equal(got, expected.astype(np.float32))


def test_a_stream_of_frames_is_one_launch_each_and_uploads_its_taps_once(
    sample_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = Preprocess(size=[640, 640], resize="letterbox")
    kernel = Counted(gpuprep._prepare_kernel())
    monkeypatch.setattr(gpuprep, "_prepare_kernel", lambda: kernel)
    gpuprep._taps_on.cache_clear()
    frames = 0
    for nv12, height, width in sample_nv12_frames(sample_video, every=10):
        bgr = nv12_to_bgr(cupy.asarray(nv12), height, width, xp=cupy)
        got = prepare_image(bgr, (640, 640), "letterbox", spec).data
        frames += 1
        expected = prepare_image(nv12_to_bgr(nv12, height, width), (640, 640), "letterbox", spec).data
        assert float(np.abs(cupy.asnumpy(got) - expected).max()) <= 1e-3
    assert frames >= 3 and kernel.launches == frames
    # Rows and columns uploaded with the first frame, read from the cache for every other.
    assert taps_cache_info().misses == 2 and taps_cache_info().hits == 2 * (frames - 1)


def test_the_tensor_is_complete_when_handed_on(sample_video: Path) -> None:
    # The hand-off rule: ONNX Runtime reads the tensor on its own stream, at once.
    spec = Preprocess(size=[1280, 1280])
    image = cupy.asarray(first_frame(sample_video))
    with cupy.cuda.Stream(non_blocking=True) as stream:
        prepare_image(image, (1280, 1280), "stretch", spec)
        assert stream.done
