"""stages.vision: frames to normalized tensors, and the geometry back to source pixels."""

from __future__ import annotations

import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

import stages  # noqa: F401  (registers the built-in stage types)
from pipeline import imaging
from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.gpuprep import linear_taps, prepare_reference, taps_cache_info
from pipeline.graph import build_graph
from pipeline.imaging import _fixed_point_taps, fit_geometry, prepare_image, prepare_plan, resize_linear_exact
from pipeline.media import EncodedPacket, Item, StreamInfo, VideoFrame
from pipeline.modelcard import Preprocess, load_preprocess
from pipeline.tensors import DeferredTensor, Geometry, PreparedTensor
from stages.infer import Infer, InferParams
from stages.vision.prepare import Prepare, PrepareParams
from tests.unit.stages.test_colorspace import CupyOnTheCpu, cupy_running_on_the_cpu

BGR = (10, 20, 30)


def solid(height: int, width: int, bgr=BGR) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = bgr
    return image


def spec(**overrides) -> Preprocess:
    return Preprocess(**{"size": [64, 64], **overrides})


def test_stretch_shape_dtype_and_geometry():
    prepared = prepare_image(solid(100, 200), (64, 128), "stretch", spec())
    assert isinstance(prepared, PreparedTensor)
    assert prepared.data.shape == (3, 64, 128)
    assert prepared.data.dtype == np.float32
    assert prepared.data.flags["C_CONTIGUOUS"]
    geometry = prepared.geometry
    assert (geometry.scale_x, geometry.scale_y) == (128 / 200, 64 / 100)
    assert (geometry.pad_x, geometry.pad_y) == (0.0, 0.0)
    assert (geometry.source_width, geometry.source_height) == (200, 100)


def test_rgb_order_and_default_normalization():
    prepared = prepare_image(solid(32, 32), (16, 16), "stretch", spec(color="rgb"))
    # Channel 0 is red (the BGR image's last channel), scaled to [0, 1].
    for channel, value in enumerate((30, 20, 10)):
        np.testing.assert_allclose(prepared.data[channel], value / 255.0, rtol=1e-6)


def test_bgr_order_with_mean_and_std():
    mean, std = [0.5, 0.4, 0.3], [0.5, 0.25, 0.2]
    prepared = prepare_image(solid(32, 32), (16, 16), "stretch", spec(color="bgr", mean=mean, std=std))
    for channel, value in enumerate(BGR):
        expected = (value / 255.0 - mean[channel]) / std[channel]
        np.testing.assert_allclose(prepared.data[channel], expected, rtol=1e-5)


def test_nhwc_layout():
    prepared = prepare_image(solid(50, 40), (32, 48), "stretch", spec(layout="NHWC", color="bgr"))
    assert prepared.data.shape == (32, 48, 3)
    np.testing.assert_allclose(prepared.data[5, 5], np.array(BGR) / 255.0, rtol=1e-6)


def test_letterbox_pads_and_keeps_aspect():
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    prepared = prepare_image(solid(100, 200), (128, 128), "letterbox", spec(color="bgr", mean=mean, std=std))
    assert prepared.data.shape == (3, 128, 128)
    assert prepared.data.dtype == np.float32
    geometry = prepared.geometry
    assert geometry.scale_x == geometry.scale_y == pytest.approx(0.64)
    assert (geometry.pad_x, geometry.pad_y) == (0, 32)  # 200x100 -> 128x64, centered vertically
    # Padding is black: (0 - 0.5) / 0.5 = -1.
    np.testing.assert_allclose(prepared.data[:, :32, :], -1.0)
    np.testing.assert_allclose(prepared.data[:, 96:, :], -1.0)
    # The image itself sits in the middle.
    for channel, value in enumerate(BGR):
        np.testing.assert_allclose(prepared.data[channel, 32:96, :], (value / 255.0 - 0.5) / 0.5, rtol=1e-5)


def test_letterbox_tall_image_pads_horizontally():
    prepared = prepare_image(solid(200, 100), (64, 64), "letterbox", spec())
    geometry = prepared.geometry
    assert (geometry.pad_x, geometry.pad_y) == (16, 0)
    np.testing.assert_allclose(prepared.data[:, :, :16], 0.0)
    assert np.all(prepared.data[:, :, 16:48] > 0)


@pytest.mark.parametrize(
    "geometry",
    [
        Geometry(0.64, 0.64, 0.0, 32.0, 200, 100),
        Geometry(128 / 200, 64 / 100, 0.0, 0.0, 200, 100),
        Geometry(0.5, 0.5, 16.0, 0.0, 100, 200),
    ],
)
def test_to_source_round_trips_points(geometry):
    source = np.array([[0.0, 0.0], [10.5, 20.25], [99.0, 50.0], [geometry.source_width, geometry.source_height]])
    tensor = np.empty_like(source)
    tensor[:, 0] = source[:, 0] * geometry.scale_x + geometry.pad_x
    tensor[:, 1] = source[:, 1] * geometry.scale_y + geometry.pad_y
    back = geometry.to_source(tensor)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, source, atol=1e-3)


def test_to_source_keeps_the_shape_and_clips_to_the_frame():
    geometry = Geometry(0.5, 0.5, 0.0, 10.0, 100, 50)
    quad = np.array([[[-5.0, 0.0], [80.0, 5.0], [10.0, 60.0], [20.0, 20.0]]])
    back = geometry.to_source(quad)
    assert back.shape == (1, 4, 2)
    np.testing.assert_allclose(back[0], [[0.0, 0.0], [100.0, 0.0], [20.0, 50.0], [40.0, 20.0]])


def test_geometry_from_prepare_maps_tensor_points_back():
    prepared = prepare_image(solid(90, 160), (64, 64), "letterbox", spec())
    geometry = prepared.geometry
    corner = np.array([[geometry.pad_x, geometry.pad_y]], dtype=np.float32)
    np.testing.assert_allclose(geometry.to_source(corner), [[0.0, 0.0]], atol=1e-4)


def graph_for(params: dict):
    return build_graph(
        parse_config(
            {
                "pipeline": "p",
                "stages": [
                    {"name": "video", "type": "file", "params": {"path": __file__}},
                    {"name": "prep", "type": "prepare", "inputs": ["video"], "params": params},
                ],
            }
        )
    )


def test_prepare_stage_takes_its_defaults_from_the_card():
    stage = graph_for({"model": "pp-ocrv4-det"}).nodes["prep"].stage
    assert isinstance(stage, Prepare)
    assert stage.size == (352, 640)
    assert stage.resize == "stretch"
    assert stage.spec.color == "bgr"


def test_prepare_stage_size_must_fit_the_model():
    with pytest.raises(ConfigError) as info:
        graph_for({"model": "pp-ocrv4-det", "size": [100, 64]})
    assert info.value.path == "stages[1].params.size"
    assert "multiples of 32" in info.value.message


def test_prepare_stage_unknown_model():
    with pytest.raises(ConfigError) as info:
        graph_for({"model": "sg-unit-missing"})
    assert info.value.path == "stages[1].params.model"


async def test_prepare_stage_adds_its_tensor(make_ctx):
    stage = Prepare("prep", PrepareParams(model="pp-ocrv4-det", size=[64, 96], resize="letterbox"))
    await stage.start(make_ctx("prep"))
    frame = VideoFrame(solid(48, 64), 0, Fraction(1, 30), 64, 48)
    item = Item(stream_id="s", media=frame, capture_time=0.0, seq=0)
    (out,) = await stage.process(item)
    assert out is item
    prepared = item.tensors["prep"]
    assert isinstance(prepared, PreparedTensor)
    assert prepared.data.shape == (3, 64, 96)
    assert prepared.geometry.pad_x > 0  # letterbox from the params, not the card's stretch

    packet = Item(stream_id="s", media=EncodedPacket(None, 0, Fraction(1, 30), True), capture_time=0.0)
    assert list(await stage.process(packet)) == [packet]
    assert packet.tensors == {}


async def test_prepare_stage_drops_a_frame_already_over_its_budget(make_ctx):
    stage = Prepare("prep", PrepareParams(model="pp-ocrv4-det", size=[64, 96], latency_budget_ms=50))
    await stage.start(make_ctx("prep"))
    frame = VideoFrame(solid(48, 64), 0, Fraction(1, 30), 64, 48)
    late = Item(stream_id="s", media=frame, capture_time=time.time() - 1.0, seq=0)
    fresh = Item(stream_id="s", media=frame, capture_time=time.time() + 60.0, seq=1)  # fresh for a minute
    assert list(await stage.process(late)) == []
    assert late.tensors == {}
    assert list(await stage.process(fresh)) == [fresh] and "prep" in fresh.tensors
    assert stage.ctx.stats.stream("s").drops == {"late:prep": 1}


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_a_deferred_frame_is_the_prepared_tensor_when_it_is_run(resize):
    """What ``infer`` makes of a live frame it is fed: the shape, dtype and geometry the batcher and
    post-processing need, now; the tensor ``prepare_frame`` gives, when the model runs it."""
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    frame = VideoFrame(image, 0, Fraction(1, 30), 64, 48)
    card = load_preprocess("pp-ocrv4-det", Path("."))[1]
    deferred = imaging.deferred_frame(frame, (64, 96), resize, card)
    prepared = imaging.prepare_frame(frame, (64, 96), resize, card)
    assert isinstance(deferred, DeferredTensor) and isinstance(prepared, PreparedTensor)
    assert (deferred.shape, deferred.dtype, deferred.geometry) == (prepared.shape, prepared.dtype, prepared.geometry)
    # ...and the same tensor when it does run, prepared once (``data``, for stages written
    # against ``PreparedTensor``, is the same array).
    assert np.array_equal(deferred.array(), prepared.array())
    assert deferred.data is deferred.array()


@pytest.mark.parametrize("live", [True, False])
async def test_prepare_prepares_every_frame_it_is_given_live_or_not(make_ctx, live):
    """An ordinary stage: whatever reads its output (an infer, a user's stage) gets the tensor."""
    stage = Prepare("prep", PrepareParams(model="pp-ocrv4-det", size=[64, 96]))
    await stage.start(make_ctx("prep", consumers=(Infer("det", InferParams(model="pp-ocrv4-det", input="prep")),)))
    await stage.on_stream_added(StreamInfo("s", "x", live=live))
    frame = VideoFrame(solid(48, 64), 0, Fraction(1, 30), 64, 48)
    (item,) = await stage.process(Item(stream_id="s", media=frame, capture_time=0.0, seq=0))
    assert isinstance(item.tensors["prep"], PreparedTensor)


def test_per_channel_normalization_matches_the_formula_in_both_layouts():
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    for layout in ("NCHW", "NHWC"):
        card = spec(size=[32, 48], layout=layout, color="rgb", mean=[0.1, 0.2, 0.3], std=[0.5, 0.6, 0.7])
        prepared = prepare_image(image, (32, 48), "stretch", card).data
        rgb = image[..., ::-1].astype(np.float32)
        gain = np.float32(card.scale) / np.asarray(card.std, np.float32)
        expected = rgb * gain - np.asarray(card.mean, np.float32) / np.asarray(card.std, np.float32)
        if layout == "NCHW":
            expected = expected.transpose(2, 0, 1)
        np.testing.assert_allclose(prepared, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("source", "size"),
    [
        ((360, 640), (352, 640)),
        ((360, 640), (48, 100)),
        ((360, 640), (720, 1280)),
        ((360, 640), (100, 37)),
        ((360, 640), (360, 640)),
        ((360, 640), (415, 737)),
        ((1080, 1920), (736, 1312)),
        ((37, 53), (100, 21)),
        ((1, 5), (3, 9)),
    ],
)
def test_the_device_resize_gives_opencvs_pixels_exactly(source, size):
    """``resize_linear_exact`` is what the GPU path runs (with CuPy); with numpy it must give
    exactly the pixels of OpenCV's ``INTER_LINEAR_EXACT`` (the CPU prepare's resize), up, down,
    by uneven factors, and from a one-pixel-high image."""
    image = np.random.default_rng(5).integers(0, 256, (*source, 3), dtype=np.uint8)
    height, width = size
    expected = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR_EXACT)
    got = resize_linear_exact(image, height, width, np)
    assert got.dtype == np.uint8 and got.shape == (height, width, 3)
    assert np.array_equal(got, expected)


def test_the_device_resize_samples_as_a_float_linear_resize_does():
    # Bit-exact against OpenCV alone could hide a shared mistake: against plain float bilinear
    # sampling it may differ only by the rounding of 8-bit weights (at most a level or two).
    image = np.random.default_rng(6).integers(0, 256, (90, 160, 3), dtype=np.uint8)
    expected = cv2.resize(image.astype(np.float32), (100, 57), interpolation=cv2.INTER_LINEAR)
    got = resize_linear_exact(image, 57, 100, np).astype(np.float32)
    assert np.abs(got - expected).max() <= 2.0
    assert np.abs(got - expected).mean() < 0.5


# --- the device prepare (stages.gpuprep) -------------------------------------------------------


@pytest.fixture()
def cupy_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[CupyOnTheCpu]:
    """The device path run on the CPU: the kernel compiled by g++ (see test_colorspace)."""
    with cupy_running_on_the_cpu(monkeypatch) as fake:
        yield fake


class DeviceArray(np.ndarray):
    """A numpy array that says it is on the device, so ``prepare_image`` takes its device branch
    (with ``cupy_on_the_cpu``, the kernel runs on the host)."""

    @property
    def __cuda_array_interface__(self) -> dict[str, object]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ctypes.data, False), "version": 3}


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal to the bit (``array_equal`` takes -0.0 for 0.0)."""
    return (
        a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))
    )


PREPARE_CASES = [
    ((360, 640), (352, 640), "stretch"),
    ((360, 640), (640, 640), "letterbox"),
    ((640, 360), (320, 320), "letterbox"),
    ((1080, 1920), (736, 1312), "stretch"),
    ((1080, 1920), (320, 320), "letterbox"),
    ((37, 53), (100, 21), "stretch"),
    ((37, 53), (100, 21), "letterbox"),
    ((1, 5), (3, 9), "stretch"),
]


@pytest.mark.parametrize(("source", "size", "resize"), PREPARE_CASES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("color", ["rgb", "bgr"])
def test_the_device_prepare_arithmetic_is_the_cpu_prepare_to_the_bit(source, size, resize, layout, color):
    # prepare_reference is the kernel's per-pixel arithmetic in numpy, over the plan and taps the
    # kernel is given; the CPU prepare is OpenCV's resize, then normalization channel by channel.
    image = np.random.default_rng(7).integers(0, 256, (*source, 3), dtype=np.uint8)
    card = spec(size=list(size), layout=layout, color=color, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    plan = prepare_plan(source[1], source[0], size, resize, card)
    assert same_bits(prepare_reference(image, plan), prepare_image(image, size, resize, card).data)


@pytest.mark.parametrize(("source", "size", "resize"), PREPARE_CASES)
def test_the_device_prepare_resizes_to_opencvs_pixels(source, size, resize):
    # With gain 1 and bias 0 the tensor is the resized uint8 pixels themselves.
    image = np.random.default_rng(8).integers(0, 256, (*source, 3), dtype=np.uint8)
    card = spec(size=list(size), layout="NHWC", color="bgr", scale=1.0)
    plan = prepare_plan(source[1], source[0], size, resize, card)
    expected = np.zeros((*size, 3), np.uint8)
    (top, left), (height, width) = plan.pad, plan.inner
    expected[top : top + height, left : left + width] = cv2.resize(
        image, (width, height), interpolation=cv2.INTER_LINEAR_EXACT
    )
    assert np.array_equal(prepare_reference(image, plan), expected.astype(np.float32))


def test_the_plan_is_the_cpu_prepares_geometry():
    card = spec(size=[320, 320], color="bgr", scale=2.0, mean=[1.0, 2.0, 3.0], std=[2.0, 4.0, 8.0])
    plan = prepare_plan(640, 360, (320, 320), "letterbox", card)
    geometry = fit_geometry(640, 360, (320, 320), "letterbox")
    assert plan.inner == (180, 320) and plan.pad == (int(geometry.pad_y), int(geometry.pad_x)) == (70, 0)
    assert (plan.rgb, plan.nchw) == (False, True)
    assert plan.gain == (1.0, 0.5, 0.25) and plan.bias == (-0.5, -0.5, -0.375)
    assert prepare_plan(640, 360, (320, 320), "stretch", card).inner == (320, 320)


@pytest.mark.parametrize(("source", "size", "resize"), PREPARE_CASES[:3])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_a_device_frame_is_prepared_in_one_launch_and_uploads_no_taps_after_the_first(
    cupy_on_the_cpu: CupyOnTheCpu, source, size, resize, layout
):
    card = spec(size=list(size), layout=layout, mean=[0.1, 0.2, 0.3], std=[0.5, 0.6, 0.7])
    rng = np.random.default_rng(9)
    for frame in range(1, 4):
        image = rng.integers(0, 256, (*source, 3), dtype=np.uint8)
        got = prepare_image(image.view(DeviceArray), size, resize, card)
        expected = prepare_image(image, size, resize, card)
        assert same_bits(np.asarray(got.data), expected.data) and got.geometry == expected.geometry
        # One launch a frame, the tensor complete when handed on, and the taps (rows and columns)
        # uploaded with the first frame only (each upload is completed once, too).
        assert cupy_on_the_cpu.launches == frame
        assert cupy_on_the_cpu.uploads == 2 and cupy_on_the_cpu.syncs == 2 + frame
        assert taps_cache_info().misses == 2 and taps_cache_info().hits == 2 * (frame - 1)


def test_a_device_frame_of_another_size_uploads_its_own_taps_once(cupy_on_the_cpu: CupyOnTheCpu):
    card = spec(size=[64, 96])
    for source in [(48, 64), (90, 160), (48, 64), (90, 160)]:
        image = np.zeros((*source, 3), np.uint8).view(DeviceArray)
        prepare_image(image, (64, 96), "stretch", card)
    assert cupy_on_the_cpu.uploads == 4 and taps_cache_info().misses == 4


def test_the_device_prepare_reads_a_crop_in_place_and_copies_only_a_reordered_view(cupy_on_the_cpu: CupyOnTheCpu):
    image = np.random.default_rng(10).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    card = spec(size=[64, 96])
    for view in (image[10:100, 30:190], image[:, :, ::-1], image[::2]):
        expected = prepare_image(np.ascontiguousarray(view), (64, 96), "letterbox", card).data
        got = prepare_image(view.view(DeviceArray), (64, 96), "letterbox", card).data
        assert same_bits(np.asarray(got), expected)


def test_the_device_prepare_refuses_what_the_kernel_cannot_read(cupy_on_the_cpu: CupyOnTheCpu):
    card = spec(size=[64, 96])
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(np.zeros((48, 64, 3), np.float32).view(DeviceArray), (64, 96), "stretch", card)
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(np.zeros((48, 64, 4), np.uint8).view(DeviceArray), (64, 96), "stretch", card)


def test_cached_taps_are_shared_and_cannot_be_written():
    (low, high), (low_weight, high_weight) = _fixed_point_taps(360, 640, np)
    again = _fixed_point_taps(360, 640, np)
    table = linear_taps(360, 640)  # the cached table they are rows of: nothing recomputed
    assert all(np.shares_memory(row, table) for row in (low, high, low_weight, high_weight, *again[0], *again[1]))
    assert np.all(low_weight + high_weight == 1 << 8)
    for array in (low, high, low_weight, high_weight, linear_taps(360, 640)):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1
