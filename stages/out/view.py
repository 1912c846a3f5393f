"""``view``: each stream's pictures (``overlay``'s drawing, or the frames) to browsers over
WebRTC, as WHEP asks (``POST /whep/<stream>``: ``pipeline/server/whep.py``).

Each viewer is a peer connection (aiortc) with one video track of its own. The track keeps only
the newest picture: a viewer whose encoder or network is slower than the stream skips pictures
(counted), it never falls behind. Pictures are taken only while a stream has viewers
(``wants_pictures``), so an ``overlay`` before this stage draws nothing for a stream nobody
watches. A viewer that leaves (``DELETE``, its connection failed or closed) is closed at once,
and its encoder with it; so are a stream's viewers when the stream ends, and all at stop.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from pydantic import Field

from pipeline.media import EndOfStream, Item, VideoFrame
from pipeline.pictures import NoViewerRoom, anyone_wants, picture_of
from pipeline.stage import Stage, StageContext, StageParams, register_stage

log = logging.getLogger("streamgraph.view")

VIDEO_CLOCK = 90000
"""RTP's video clock: aiortc's senders want frames in this time base."""


class ViewParams(StageParams):
    max_viewers: int = Field(default=8, ge=1)
    """Viewers of one stream at once; one more is refused (``POST /whep`` answers 503)."""


class LatestPicture(MediaStreamTrack):
    """A video track that sends the newest picture it was given, each at most once."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._picture: np.ndarray | None = None
        self._ready = asyncio.Event()
        self._start = time.monotonic()
        self.sent = 0
        self.skipped = 0

    def show(self, picture: np.ndarray) -> None:
        if self._picture is not None:
            self.skipped += 1  # not sent yet, and already old: the newer one goes instead
        self._picture = picture
        self._ready.set()

    async def recv(self) -> av.VideoFrame:
        while self._picture is None:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        picture, self._picture = self._picture, None
        frame = av.VideoFrame.from_ndarray(picture, format="bgr24")
        frame.pts = int((time.monotonic() - self._start) * VIDEO_CLOCK)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # a recv waiting ends (MediaStreamError)


@dataclass
class Viewer:
    session: str
    stream_id: str
    pc: RTCPeerConnection
    track: LatestPicture = field(default_factory=LatestPicture)


@register_stage("view")
class View(Stage):
    Params = ViewParams
    params: ViewParams
    latency_key = None  # pictures go to viewers apart from the results: nothing waits here

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.viewers: dict[str, Viewer] = {}  # session -> viewer
        self.shown: set[str] = set()
        """Streams that have passed through (those a viewer may ask for)."""

    def wants_pictures(self, stream_id: str) -> bool:
        return any(v.stream_id == stream_id for v in self.viewers.values()) or anyone_wants(
            self.ctx.consumers, stream_id
        )

    def viewer_count(self, stream_id: str) -> int:
        return sum(v.stream_id == stream_id for v in self.viewers.values())

    def shows(self, stream_id: str) -> bool:
        return stream_id in self.shown

    async def process(self, item: Item) -> Sequence[Item]:
        if isinstance(item.media, VideoFrame):
            self.shown.add(item.stream_id)
            watching = [v for v in self.viewers.values() if v.stream_id == item.stream_id]
            if watching:
                picture = await self.ctx.run_blocking(picture_of, item)
                assert picture is not None
                for viewer in watching:
                    viewer.track.show(picture)
        return (item,)

    async def answer(self, stream_id: str, offer_sdp: str) -> tuple[str, str]:
        """A new viewer of ``stream_id``: (its session, the SDP answer). ``ValueError`` for an offer
        that cannot be answered, ``NoViewerRoom`` when the stream has ``max_viewers``."""
        if self.viewer_count(stream_id) >= self.params.max_viewers:
            raise NoViewerRoom(f"stream {stream_id!r} has {self.params.max_viewers} viewers (max_viewers)")
        pc = RTCPeerConnection()
        viewer = Viewer(secrets.token_urlsafe(12), stream_id, pc)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            video = [t for t in pc.getTransceivers() if t.kind == "video"]
            if not video:
                raise ValueError("the offer receives no video")
            video[0].sender.replaceTrack(viewer.track)
            video[0].direction = "sendonly"
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # aiortc rejects a bad offer with many exception types
            await pc.close()
            raise ValueError(f"cannot answer the offer: {str(exc) or type(exc).__name__}") from exc

        @pc.on("connectionstatechange")
        async def _on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close_viewer(viewer.session)

        self.viewers[viewer.session] = viewer
        log.info("stream %s: a viewer joined (%d now)", stream_id, self.viewer_count(stream_id))
        return viewer.session, str(pc.localDescription.sdp)

    async def close_viewer(self, session: str) -> bool:
        viewer = self.viewers.pop(session, None)
        if viewer is None:
            return False
        viewer.track.stop()
        await viewer.pc.close()
        log.info(
            "stream %s: a viewer left (%d pictures sent, %d skipped)",
            viewer.stream_id,
            viewer.track.sent,
            viewer.track.skipped,
        )
        return True

    def session_of(self, session: str) -> Viewer | None:
        return self.viewers.get(session)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        self.shown.discard(eos.stream_id)
        for session in [s for s, v in self.viewers.items() if v.stream_id == eos.stream_id]:
            await self.close_viewer(session)
        return ()

    async def stop(self) -> None:
        for session in list(self.viewers):
            await self.close_viewer(session)

    def describe(self) -> dict[str, Any]:
        return {"viewers": {sid: self.viewer_count(sid) for sid in sorted(self.shown)}}
