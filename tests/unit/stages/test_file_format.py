"""stages.ingest.file ``format``: FFmpeg's input format where it cannot tell by itself (a camera at
/dev/video0 is v4l2); a wrong one fails the stream with FFmpeg's reason, naming the file."""

from __future__ import annotations

from pipeline.media import EndOfStream
from tests.clips import flat_clip
from tests.fakes import EmitRecorder

from .test_sources import assert_one_end_last, run_source, started_source


async def test_a_raw_stream_under_an_odd_name_opens_with_the_format_given(make_ctx, tmp_path) -> None:
    clip = flat_clip(tmp_path / "camera.dump", frames=20, rate=10, format="h264")
    source = await started_source(make_ctx, path=str(clip), id="cam", format="h264")
    emit = EmitRecorder()
    await run_source(source, emit)
    assert assert_one_end_last(emit) == EndOfStream("cam", "eof")
    assert len(emit.packets) == 20


async def test_a_wrong_format_fails_the_stream_naming_the_file(make_ctx, tmp_path) -> None:
    clip = flat_clip(tmp_path / "clip.mp4", frames=5, rate=10)
    source = await started_source(make_ctx, path=str(clip), id="cam", format="wav")
    emit = EmitRecorder()
    await run_source(source, emit)
    (end,) = emit.ends
    assert emit.messages == [end]  # never announced: it could not be opened
    assert end.reason == "error" and end.error is not None
    assert f"cannot open {clip}" in end.error, end.error
