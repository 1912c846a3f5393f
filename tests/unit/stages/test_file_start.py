"""stages.ingest.file ``start_s``: a stream that starts part-way (resumed under a new owner) begins
at the keyframe at or before it and carries the timestamps a run from the start had there, looped
passes included. Real media read by PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from pipeline.media import EncodedPacket, EndOfStream
from tests.clips import flat_clip
from tests.fakes import EmitRecorder

from .test_sources import assert_one_end_last, run_source, started_source

CLIP_FRAMES, GOP = 60, 10  # 2.4 s at 25 frames/s, a keyframe every 10 frames


def write_clip(path: Path, **open_options: str) -> Path:
    return flat_clip(path, frames=CLIP_FRAMES, rate=25, width=64, height=64, gop=GOP, **open_options)


def placed(packets: list[EncodedPacket]) -> list[tuple[str, int]]:
    return [(p.kind, p.pts) for p in packets]


def seconds(packet: EncodedPacket) -> Fraction:
    return packet.pts * packet.time_base


async def test_a_looped_stream_started_in_its_third_pass_carries_that_pass_timestamps(make_ctx, av_sample):
    """Both tracks (each shifted in its own ticks per pass) land where a run from the start put them."""
    tracks = ["video", "audio"]
    source = await started_source(make_ctx, path=str(av_sample), id="av", tracks=tracks, loop=True)
    whole = EmitRecorder(after=2 * 720 + 600, then=source.request_stop)  # to about 28 s, in pass 3
    await run_source(source, whole)
    start_s = 25.3  # samples/av.mp4 is 10 s long: in pass 3, which starts at 20 s
    source = await started_source(make_ctx, path=str(av_sample), id="av", tracks=tracks, loop=True, start_s=start_s)
    resumed = EmitRecorder(after=100, then=source.request_stop)
    await run_source(source, resumed)

    assert assert_one_end_last(resumed) == EndOfStream("av", "stopped")
    for kind in tracks:
        got = [pts for k, pts in placed(resumed.packets) if k == kind]
        run = [pts for k, pts in placed(whole.packets) if k == kind]
        # The same packets with the same timestamps as the run from the start had from there on.
        assert got and got[0] in run, kind
        assert got == run[run.index(got[0]) :][: len(got)], kind
    first_video = next(p for p in resumed.packets if p.kind == "video")
    first_audio = next(p for p in resumed.packets if p.kind == "audio")
    assert first_video.is_keyframe and 20 <= seconds(first_video) <= start_s
    assert abs(seconds(first_audio) - seconds(first_video)) < 0.5  # audio from about the same place


async def test_a_stream_started_part_way_begins_at_the_keyframe_before_and_ends_cleanly(make_ctx, tmp_path):
    clip = write_clip(tmp_path / "gop.mp4")
    source = await started_source(make_ctx, path=str(clip), id="cam")
    whole = EmitRecorder()
    await run_source(source, whole)
    source = await started_source(make_ctx, path=str(clip), id="cam", start_s=1.3)  # frame 32.5
    resumed = EmitRecorder()
    await run_source(source, resumed)

    # Frame 30 (1.2 s) is the keyframe at or before 1.3 s: everything from it on, nothing before.
    assert resumed.packets[0].is_keyframe and seconds(resumed.packets[0]) == Fraction(6, 5)
    keyframe_at = placed(whole.packets).index(placed(resumed.packets)[:1][0])
    assert placed(resumed.packets) == placed(whole.packets)[keyframe_at:]
    assert len(resumed.packets) == CLIP_FRAMES - 30
    # Fewer packets than the file holds, on purpose: not "file ends early".
    assert assert_one_end_last(resumed) == EndOfStream("cam", "eof")
    assert source.ctx.stats.stream("cam").error is None


async def test_a_start_past_the_end_ends_the_stream_without_an_error(make_ctx, tmp_path):
    clip = write_clip(tmp_path / "gop.mp4")
    source = await started_source(make_ctx, path=str(clip), id="cam", start_s=99.0)
    emit = EmitRecorder()
    await run_source(source, emit)
    end = assert_one_end_last(emit)
    assert end == EndOfStream("cam", "eof"), end
    assert source.ctx.stats.stream("cam").error is None
    # Seeking past the end lands on the last keyframe: at most its group is read again.
    assert len(emit.packets) <= GOP


async def test_a_file_that_cannot_seek_starts_at_its_beginning(make_ctx, tmp_path):
    clip = write_clip(tmp_path / "raw.h264", format="h264")  # no timestamps: nothing to seek by
    source = await started_source(make_ctx, path=str(clip), id="raw", start_s=1.3)
    emit = EmitRecorder()
    await run_source(source, emit)
    assert assert_one_end_last(emit) == EndOfStream("raw", "eof")
    assert len(emit.packets) == CLIP_FRAMES  # all of it: duplicates, never a gap
    assert emit.packets[0].pts == 0
