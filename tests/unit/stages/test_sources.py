"""stages.ingest.file: the ``file`` source driven through ``run(emit)`` on real media read by PyAV."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.errors import ConfigError
from pipeline.media import EncodedPacket, EndOfStream, StreamStarted
from pipeline.stage import StageContext
from stages.ingest.file import FileParams, FileSource
from tests.fakes import EmitRecorder

SAMPLE_FRAMES = 250  # samples/text.mp4: 10 s at 25 frames/s, 640x360 H.264
SAMPLE_TICKS = 512  # one frame in the sample's 1/12800 time base
HANG_GUARD_S = 60.0  # generous: only there so that a broken stop fails instead of hanging


async def started_source(make_ctx: Callable[..., StageContext], **params) -> FileSource:
    source = FileSource("video", FileParams(**params))
    await source.start(make_ctx("video"))
    return source


async def run_source(source: FileSource, emit: EmitRecorder) -> None:
    await asyncio.wait_for(source.run(emit), timeout=HANG_GUARD_S)


def write_h264(path: Path, frames: int, **open_options) -> Path:
    """A small 64x64 H.264 file (noise, so every packet carries data) in the container ``path`` names."""
    rng = np.random.default_rng(7)
    with av.open(str(path), "w", **open_options) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_tone(path: Path) -> Path:
    """A tenth of a second of silence, audio only (no video track)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def cut_in_half(path: Path, to: Path) -> Path:
    data = path.read_bytes()
    to.write_bytes(data[: len(data) // 2])
    return to


def assert_one_end_last(recorder: EmitRecorder) -> EndOfStream:
    """The stream protocol: StreamStarted first, exactly one EndOfStream, and it comes last."""
    assert isinstance(recorder.messages[0], StreamStarted)
    assert sum(isinstance(m, StreamStarted) for m in recorder.messages) == 1
    assert len(recorder.ends) == 1
    assert recorder.messages[-1] is recorder.ends[0]
    return recorder.ends[0]


def assert_failed_unannounced(recorder: EmitRecorder) -> EndOfStream:
    """A file that cannot be opened is never announced: its one message is the error that ends it
    (no ``started`` for a stream that never started)."""
    assert len(recorder.messages) == 1, recorder.messages
    (end,) = recorder.messages
    assert isinstance(end, EndOfStream) and end.reason == "error"
    return end


# --- a whole file ---------------------------------------------------------------------------------


async def test_plays_the_sample_start_packets_then_eof(make_ctx, sample_video):
    source = await started_source(make_ctx, path=str(sample_video), id="cam")
    emit = EmitRecorder()
    await run_source(source, emit)

    started = emit.messages[0]
    assert isinstance(started, StreamStarted)
    info = started.info
    assert info.stream_id == "cam"
    assert info.uri == str(sample_video)
    assert info.live is False
    assert info.video is not None
    assert (info.video.codec, info.video.width, info.video.height) == ("h264", 640, 360)
    assert info.video.extradata  # avcC for an MP4: the decoder cannot open the stream without it
    assert info.frame_rate == Fraction(25)
    assert info.frame_count == SAMPLE_FRAMES
    assert source.ctx.stats.stream("cam").frame_count == SAMPLE_FRAMES

    end = assert_one_end_last(emit)
    assert end == EndOfStream("cam", "eof")
    assert source.ctx.stats.stream("cam").error is None

    packets = emit.packets
    assert len(packets) == SAMPLE_FRAMES
    assert all(item.stream_id == "cam" for item in emit.items)
    assert all(item.seq == -1 for item in emit.items)  # packets are not frames yet: no sequence number
    assert all(p.time_base == Fraction(1, 12800) for p in packets)
    assert packets[0].is_keyframe
    # Decode order: dts strictly increases; pts covers every frame once (B-frames reorder it).
    dts = [p.payload.dts for p in packets]
    assert all(b > a for a, b in itertools.pairwise(dts))
    assert sorted(p.pts for p in packets) == list(range(0, SAMPLE_FRAMES * SAMPLE_TICKS, SAMPLE_TICKS))
    assert all(p.pts == p.payload.pts for p in packets)
    # Capture times are wall-clock and never go back.
    captures = [item.capture_time for item in emit.items]
    assert captures == sorted(captures)


async def test_stream_id_defaults_to_the_file_stem(make_ctx, sample_video):
    source = FileSource("video", FileParams(path=str(sample_video)))
    assert source.stream_id == "text"
    assert FileSource("video", FileParams(path="a/b/front door.cam.mkv", id="door")).stream_id == "door"
    # A stem a stream id cannot be (it is one NATS subject token) is made into one.
    assert FileSource("video", FileParams(path="a/b/front door.cam.mkv")).stream_id == "front_door_cam"
    assert FileSource("video", FileParams(path=".mkv")).stream_id == "_mkv"
    await source.start(make_ctx("video"))
    emit = EmitRecorder(after=1, then=source.request_stop)
    await run_source(source, emit)
    assert emit.messages[0].stream_id == "text"
    assert {m.stream_id for m in emit.messages} == {"text"}


async def test_relative_paths_resolve_against_the_config_directory(make_ctx, sample_video, tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "clip.mp4").symlink_to(sample_video)
    source = await started_source(make_ctx, path="media/clip.mp4")  # make_ctx's base_dir is tmp_path
    emit = EmitRecorder(after=2, then=source.request_stop)
    await run_source(source, emit)
    started = emit.messages[0]
    assert isinstance(started, StreamStarted)
    assert started.info.uri == str(tmp_path / "media" / "clip.mp4")
    assert len(emit.items) == 2


def test_params_validation():
    assert FileParams(path="x.mp4").rate == "max"
    assert FileParams(path="x.mp4").loop is False
    assert FileParams(path="x.mp4", id="A-z_09" * 21 + "xx").id  # 128 characters
    for bad_id in ("has space", "a/b", "a.b", "*", ">", "../x", "", "x" * 129, "caf\u00e9"):
        with pytest.raises(ValidationError):
            FileParams(path="x.mp4", id=bad_id)
    with pytest.raises(ValidationError):
        FileParams.model_validate({"path": "x.mp4", "rate": "fast"})
    with pytest.raises(ValidationError):
        FileParams.model_validate({"path": "x.mp4", "loops": True})


# --- loop, stop -----------------------------------------------------------------------------------


async def test_loop_keeps_timestamps_increasing_across_the_rewind(make_ctx, sample_video):
    total = SAMPLE_FRAMES + 60
    source = await started_source(make_ctx, path=str(sample_video), id="cam", loop=True)
    emit = EmitRecorder(after=total, then=source.request_stop)
    await run_source(source, emit)

    started = emit.messages[0]
    assert isinstance(started, StreamStarted)
    assert started.info.frame_count is None  # endless: no progress total
    assert source.ctx.stats.stream("cam").frame_count is None
    assert assert_one_end_last(emit) == EndOfStream("cam", "stopped")
    assert source.ctx.stats.stream("cam").error is None

    packets = emit.packets
    assert len(packets) == total  # nothing emitted after the stop
    duration = SAMPLE_FRAMES * SAMPLE_TICKS
    first, second = packets[:SAMPLE_FRAMES], packets[SAMPLE_FRAMES:]
    assert sorted(p.pts for p in first) == list(range(0, duration, SAMPLE_TICKS))
    # The second pass is the same file shifted by its duration: pts continue where the first ended.
    assert [p.pts for p in second] == [p.pts + duration for p in first[: len(second)]]
    assert min(p.pts for p in second) == duration
    assert second[0].is_keyframe
    # The packets themselves are shifted too (the decoder passes their pts through)...
    assert all(p.payload.pts == p.pts for p in packets)
    # ...and their dts, so decode order stays strictly increasing across the rewind.
    dts = [p.payload.dts for p in packets]
    assert all(b > a for a, b in itertools.pairwise(dts))


async def test_request_stop_ends_the_stream_as_stopped(make_ctx, sample_video):
    source = await started_source(make_ctx, path=str(sample_video), id="cam")
    emit = EmitRecorder(after=5, then=source.request_stop)
    await run_source(source, emit)
    assert len(emit.items) == 5
    assert assert_one_end_last(emit) == EndOfStream("cam", "stopped")
    # A stop is not a failure, even though fewer packets than the file holds were read.
    assert source.ctx.stats.stream("cam").error is None


async def test_stop_stream_mid_stream_stops_it_with_exactly_one_end(make_ctx, sample_video):
    source = await started_source(make_ctx, path=str(sample_video), id="cam")
    emit = EmitRecorder(after=10, then=lambda: source.stop_stream("cam", "decode failed"))
    await run_source(source, emit)
    assert len(emit.items) == 10
    # Every stream a source started gets exactly one end, even one a downstream stage gave up on.
    assert assert_one_end_last(emit) == EndOfStream("cam", "stopped")
    assert source.ctx.stats.stream("cam").error is None


async def test_stop_stream_for_another_stream_changes_nothing(make_ctx, sample_video):
    source = await started_source(make_ctx, path=str(sample_video), id="cam")
    emit = EmitRecorder(after=10, then=lambda: source.stop_stream("other", "decode failed"))
    await run_source(source, emit)
    assert len(emit.items) == SAMPLE_FRAMES
    assert assert_one_end_last(emit) == EndOfStream("cam", "eof")


async def test_request_stop_during_native_playback_ends_it_promptly(make_ctx, sample_video):
    # Looping at the file's own pace: without a working stop this would never end by itself.
    source = await started_source(make_ctx, path=str(sample_video), id="live", rate="native", loop=True)
    emit = EmitRecorder()
    task = asyncio.create_task(source.run(emit))
    await asyncio.wait_for(emit.packet_arrived.wait(), timeout=HANG_GUARD_S)
    emitted_before_stop = len(emit.items)
    source.request_stop()  # from outside, while the source waits for its next packet's time
    await asyncio.wait_for(task, timeout=HANG_GUARD_S)

    assert emitted_before_stop >= 1
    assert len(emit.items) == emitted_before_stop  # the packet it was waiting to send is not sent
    assert assert_one_end_last(emit) == EndOfStream("live", "stopped")


# --- what is checked before running ---------------------------------------------------------------


def test_check_refuses_a_file_that_does_not_exist_naming_where_it_looked(tmp_path):
    (tmp_path / "here.mp4").write_bytes(b"")
    FileSource("video", FileParams(path="here.mp4")).check(tmp_path)  # relative to the config's folder
    FileSource("video", FileParams(path=str(tmp_path / "here.mp4"))).check(Path("/elsewhere"))

    with pytest.raises(ConfigError) as relative:
        FileSource("video", FileParams(path="gone.mp4")).check(tmp_path)
    assert relative.value.path == "params.path"
    assert f"no such file: {tmp_path / 'gone.mp4'}" in relative.value.message
    assert f"read from the config's directory, {tmp_path}" in relative.value.message

    with pytest.raises(ConfigError) as absolute:
        FileSource("video", FileParams(path=str(tmp_path / "gone.mp4"))).check(Path("/elsewhere"))
    assert absolute.value.message == f"no such file: {tmp_path / 'gone.mp4'}"

    with pytest.raises(ConfigError, match="is a directory"):
        FileSource("video", FileParams(path=".")).check(tmp_path)


def test_check_leaves_urls_to_ffmpeg(tmp_path):
    FileSource("video", FileParams(path="http://127.0.0.1:1/clip.mp4")).check(tmp_path)


# --- bad files --------------------------------------------------------------------------------------


async def test_a_file_gone_between_check_and_run_ends_its_stream_with_the_error(make_ctx, tmp_path, sample_video):
    # validate (check) saw the file; it went away before the run opened it: the run-time path.
    path = tmp_path / "brief.mp4"
    path.symlink_to(sample_video)
    source = await started_source(make_ctx, path=path.name)
    source.check(tmp_path)
    path.unlink()
    emit = EmitRecorder()
    await run_source(source, emit)

    end = assert_failed_unannounced(emit)
    assert end.stream_id == "brief"
    assert end.error == f"cannot open {path}: No such file or directory"
    assert source.ctx.stats.stream("brief").error == end.error


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("garbage.mp4", b"\x00not a video at all\xff" * 64, "Invalid data"),
        ("empty.mp4", b"", "the file is empty (0 bytes)"),
    ],
)
async def test_unopenable_file_ends_the_stream_with_an_error_unannounced(make_ctx, tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    source = await started_source(make_ctx, path=str(path))
    source.check(tmp_path)  # it exists: only opening it tells
    emit = EmitRecorder()
    await run_source(source, emit)

    end = assert_failed_unannounced(emit)
    assert end.stream_id == path.stem
    assert end.error is not None
    assert str(path) in end.error
    assert reason in end.error
    assert source.ctx.stats.stream(path.stem).error == end.error


async def test_file_without_video_is_an_error(make_ctx, tmp_path):
    path = write_tone(tmp_path / "tone.wav")
    source = await started_source(make_ctx, path=str(path))
    emit = EmitRecorder()
    await run_source(source, emit)
    end = assert_failed_unannounced(emit)
    assert end.reason == "error"
    assert end.error is not None and str(path) in end.error and "no video stream" in end.error
    assert emit.items == []


async def test_truncated_file_with_a_known_frame_count_ends_with_an_error(make_ctx, tmp_path):
    # MP4 with its index up front (faststart): it still opens when cut, and says how many frames
    # it should have, so the source can tell a truncated file from a finished one.
    whole = write_h264(tmp_path / "whole.mp4", 50, format="mp4", options={"movflags": "faststart"})
    cut = cut_in_half(whole, tmp_path / "cut.mp4")
    source = await started_source(make_ctx, path=str(cut), id="cut")
    emit = EmitRecorder()
    await run_source(source, emit)

    started = emit.messages[0]
    assert isinstance(started, StreamStarted)
    assert started.info.frame_count == 50
    end = assert_one_end_last(emit)
    assert 0 < len(emit.items) < 50
    assert end.reason == "error"
    assert end.error is not None
    assert str(cut) in end.error
    assert f"read {len(emit.items)} of 50 packets" in end.error
    assert source.ctx.stats.stream("cut").error == end.error


async def test_truncated_file_without_a_frame_count_ends_early_at_eof(make_ctx, tmp_path):
    # MPEG-TS carries no frame count: a cut file cannot be told from a short one, so it just ends.
    whole = write_h264(tmp_path / "whole.ts", 50, format="mpegts")
    cut = cut_in_half(whole, tmp_path / "cut.ts")
    whole_source = await started_source(make_ctx, path=str(whole), id="whole")
    whole_emit = EmitRecorder()
    await run_source(whole_source, whole_emit)
    assert len(whole_emit.items) == 50
    assert assert_one_end_last(whole_emit) == EndOfStream("whole", "eof")

    source = await started_source(make_ctx, path=str(cut), id="cut")
    emit = EmitRecorder()
    await run_source(source, emit)
    started = emit.messages[0]
    assert isinstance(started, StreamStarted)
    assert started.info.frame_count is None
    assert 0 < len(emit.items) < 50
    assert assert_one_end_last(emit) == EndOfStream("cut", "eof")
    # What was read is the file's beginning, in order.
    assert [p.pts for p in emit.packets] == [p.pts for p in whole_emit.packets[: len(emit.items)]]


# --- tracks: video, audio -----------------------------------------------------------------------------

AV_VIDEO_PACKETS, AV_AUDIO_PACKETS = 250, 470  # samples/av.mp4: text.mp4's video + 10 s of AAC (1024/packet)


def kinds(packets: list[EncodedPacket]) -> list[str]:
    return [p.kind for p in packets]


async def test_default_tracks_read_only_the_video_of_a_file_with_audio(make_ctx, av_sample):
    source = await started_source(make_ctx, path=str(av_sample), id="av")
    emit = EmitRecorder()
    await run_source(source, emit)
    info = emit.messages[0].info
    assert info.video is not None
    assert info.audio is None  # not asked for
    assert set(kinds(emit.packets)) == {"video"}
    assert len(emit.packets) == AV_VIDEO_PACKETS
    assert info.frame_count == AV_VIDEO_PACKETS
    assert assert_one_end_last(emit) == EndOfStream("av", "eof")


async def test_video_and_audio_tracks_interleaved_each_in_its_own_time_base(make_ctx, av_sample):
    source = await started_source(make_ctx, path=str(av_sample), id="av", tracks=["video", "audio"])
    emit = EmitRecorder()
    await run_source(source, emit)

    info = emit.messages[0].info
    assert info.video is not None and (info.video.codec, info.video.width) == ("h264", 640)
    assert info.audio is not None
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("aac", 48000, 2)
    assert info.audio.extradata  # AudioSpecificConfig: the AAC decoder needs it
    assert info.frame_count == AV_VIDEO_PACKETS  # frame_count counts video frames
    # The progress total counts published messages, which audio windows do not match one to one.
    assert source.ctx.stats.stream("av").frame_count is None
    assert assert_one_end_last(emit) == EndOfStream("av", "eof")

    packets = emit.packets
    video = [p for p in packets if p.kind == "video"]
    audio = [p for p in packets if p.kind == "audio"]
    assert (len(video), len(audio)) == (AV_VIDEO_PACKETS, AV_AUDIO_PACKETS)
    assert all(p.time_base == Fraction(1, 12800) for p in video)
    assert all(p.time_base == Fraction(1, 48000) for p in audio)
    assert [p.pts for p in audio] == [-1024 + 1024 * i for i in range(AV_AUDIO_PACKETS)]  # AAC priming first
    assert sorted(p.pts for p in video) == list(range(0, AV_VIDEO_PACKETS * SAMPLE_TICKS, SAMPLE_TICKS))
    # Interleaved as stored (by time), not one track after the other.
    first_audio = kinds(packets).index("audio")
    assert first_audio < 10
    assert kinds(packets)[-20:].count("video") > 0
    times = [float(p.payload.dts * p.time_base) for p in packets]
    assert max(a - b for a, b in itertools.pairwise(times)) < 0.1  # never far ahead of the other track


async def test_an_audio_only_track_request(make_ctx, av_sample):
    source = await started_source(make_ctx, path=str(av_sample), id="av", tracks=["audio"])
    emit = EmitRecorder()
    await run_source(source, emit)
    info = emit.messages[0].info
    assert info.video is None and info.audio is not None
    assert info.frame_count is None and info.frame_rate is None
    assert kinds(emit.packets) == ["audio"] * AV_AUDIO_PACKETS
    assert assert_one_end_last(emit) == EndOfStream("av", "eof")


async def test_a_requested_track_the_file_lacks_is_a_stream_error_naming_it(make_ctx, sample_video):
    """``tracks`` asks for every track it lists: a video-only file asked for audio too ends with an
    error naming the missing track, instead of playing only part of what was asked."""
    source = await started_source(make_ctx, path=str(sample_video), id="cam", tracks=["video", "audio"])
    emit = EmitRecorder()
    await run_source(source, emit)
    end = assert_failed_unannounced(emit)
    assert end.reason == "error"
    assert end.error is not None and str(sample_video) in end.error
    assert "has no audio stream (tracks: [video, audio])" in end.error
    assert emit.items == []
    assert source.ctx.stats.stream("cam").error == end.error


async def test_an_audio_only_file_asked_for_video_too_ends_even_when_looping(make_ctx, tmp_path):
    """The issue's case: it used to loop for ever with a log warning and no result."""
    path = write_tone(tmp_path / "tone.wav")
    source = await started_source(make_ctx, path=str(path), id="tone", tracks=["video", "audio"], loop=True)
    emit = EmitRecorder()
    await run_source(source, emit)
    end = assert_failed_unannounced(emit)
    assert end.reason == "error"
    assert end.error is not None and "has no video stream (tracks: [video, audio])" in end.error
    assert emit.items == []


async def test_no_requested_track_at_all_is_a_stream_error_naming_the_file(make_ctx, sample_video):
    source = await started_source(make_ctx, path=str(sample_video), id="cam", tracks=["audio"])
    emit = EmitRecorder()
    await run_source(source, emit)
    end = assert_failed_unannounced(emit)
    assert end.reason == "error"
    assert end.error is not None and str(sample_video) in end.error and "has no audio stream" in end.error
    assert emit.items == []
    assert source.ctx.stats.stream("cam").error == end.error


async def test_loop_shifts_every_track_by_the_same_duration(make_ctx, av_sample):
    per_pass = AV_VIDEO_PACKETS + AV_AUDIO_PACKETS
    source = await started_source(make_ctx, path=str(av_sample), id="av", tracks=["video", "audio"], loop=True)
    emit = EmitRecorder(after=2 * per_pass + 30, then=source.request_stop)
    await run_source(source, emit)
    assert assert_one_end_last(emit) == EndOfStream("av", "stopped")

    packets = emit.packets
    first, second = packets[:per_pass], packets[per_pass : 2 * per_pass]
    assert kinds(first) == kinds(second)  # the same file again, the same packets in the same order
    # Each track is shifted by the same duration (the longest track's: both 10 s here, the MP4 edit
    # list trims AAC's padding), each in its own ticks.
    shift = {"video": 10 * 12800, "audio": 10 * 48000}
    for a, b in zip(first, second, strict=True):
        assert b.pts == a.pts + shift[a.kind]
        assert b.payload.pts == b.pts
    assert second[kinds(second).index("audio")].pts == -1024 + 480000  # the priming packet again
    video_dts = [p.payload.dts for p in packets if p.kind == "video"]
    assert all(b > a for a, b in itertools.pairwise(video_dts))
    # Audio only within a pass: the next pass's priming packet starts before the padded end of
    # the last AAC frame (the part the edit list trims), so its dts steps back by under a frame.
    audio_dts = [p.payload.dts for p in packets if p.kind == "audio"]
    steps = [b - a for a, b in itertools.pairwise(audio_dts)]
    assert [i for i, step in enumerate(steps) if step <= 0] == [AV_AUDIO_PACKETS - 1, 2 * AV_AUDIO_PACKETS - 1]
    assert min(steps) > -1024


async def test_native_pacing_times_each_track_by_its_own_clock(make_ctx, av_sample, monkeypatch):
    # No clock assertions: record when the source wants each packet out.
    source = await started_source(make_ctx, path=str(av_sample), id="av", tracks=["video", "audio"], rate="native")
    wanted: list[float] = []

    async def record(due: float) -> bool:
        wanted.append(due)
        return False

    monkeypatch.setattr(source, "_sleep_until", record)
    emit = EmitRecorder()
    await run_source(source, emit)
    packets = emit.packets
    assert len(wanted) == len(packets) == AV_VIDEO_PACKETS + AV_AUDIO_PACKETS
    assert {p.kind for p in packets} == {"video", "audio"}
    origin = packets[0].pts * packets[0].time_base  # the first packet read starts the clock
    for packet, due in zip(packets, wanted, strict=True):
        assert due - wanted[0] == pytest.approx(float(packet.pts * packet.time_base - origin), abs=1e-6)


def test_tracks_validation():
    assert FileParams(path="x.mp4").tracks == ["video"]
    assert FileParams(path="x.mp4", tracks=["audio", "video"]).tracks == ["audio", "video"]
    for bad in ([], ["video", "video"], ["subtitles"], "video"):
        with pytest.raises(ValidationError):
            FileParams.model_validate({"path": "x.mp4", "tracks": bad})
