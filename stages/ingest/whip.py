"""``whip``: a WebRTC peer publishing over WHIP (aiortc); one stream per peer connection.

A ``streams`` source starts one per ``POST /whip/{id}`` (URI ``whip:``); the HTTP route hands it
the peer's SDP offer (``answer``) and returns its answer. aiortc receives the tracks and decodes
them in its own threads, so this source is the stream's decoder:

* **video** leaves as decoded ``VideoFrame`` items (converted to BGR by the first stage that needs it), numbered
  ``seq`` 0, 1, 2... and counted as ``decoded`` here; ``decode`` passes decoded frames on as they are.
* **audio** (``tracks: [video, audio]``) leaves as PCM packets (``pcm_s16le``, 48 kHz stereo)
  that ``audio_decode`` windows like any other audio; ``decode`` ignores them.

Latency stays bounded: frames wait in a small buffer per track (``video_buffer``,
``audio_buffer``); when the graph is slower than the peer the oldest is dropped and counted
(video: ``overflow:whip``; audio: ``packets_dropped``). Timestamps are each track's RTP clock,
unwrapped and shifted so a track's first frame sits at its arrival time after the stream's
first frame (the tracks' RTP clocks have unrelated origins).

The stream ends ``stopped`` on a stop (``DELETE``, shutdown), ``eof`` when the peer goes away
(connection ``failed`` or ``closed``, or every track ended), and ``error`` when no publisher's
offer arrives within ``connect_timeout_s`` of the stream's start (a ``whip:`` stream added by
``POST /streams`` waits for one) or no media within ``connect_timeout_s`` of the answer. The peer
connection is closed in every case.

Receiving the tracks into those buffers (timestamps, PCM, drops) is ``whip_tracks``'s; this module
is the stream: negotiation, the peer connection, and the items and end it sends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription
from pydantic import Field

from pipeline.config import STREAM_ID_PATTERN
from pipeline.errors import ConfigError
from pipeline.media import (
    AudioCodecParams,
    EncodedPacket,
    EndOfStream,
    EndReason,
    Item,
    Message,
    StreamInfo,
    StreamStarted,
    TrackKind,
    VideoCodecParams,
    VideoFrame,
)
from pipeline.stage import Source, TrackSelection, register_stage

from .whip_tracks import AUDIO_RATE, Received, TrackReceiver

Emit = Callable[[Message], Awaitable[None]]

AUDIO_CODEC = AudioCodecParams("pcm_s16le", AUDIO_RATE, 2)


class WhipParams(TrackSelection):
    id: str = Field(pattern=STREAM_ID_PATTERN)
    """Stream id (the ``{stream_id}`` of ``POST /whip/{stream_id}``)."""
    video_buffer: int = Field(default=2, ge=1)
    """Decoded video frames waiting for the graph; one more drops the oldest."""
    audio_buffer: int = Field(default=50, ge=1)
    """Audio frames (20 ms each from Opus) waiting for the graph; one more drops the oldest."""
    connect_timeout_s: float = Field(default=30.0, gt=0)
    """From the stream's start to a publisher's offer, and from the answer to the first media
    frame; longer ends the stream with an error."""
    ice_servers: list[str] = Field(default_factory=list)
    """STUN/TURN URLs for the answer's candidates; none: host candidates only (a LAN, loopback)."""


@register_stage("whip")
class WhipSource(Source):
    """One WHIP publisher. Implements ``pipeline.server.whip.SdpAnswerer`` (the server checks it)."""

    Params = WhipParams
    params: WhipParams
    uri_schemes = ("whip",)

    @classmethod
    def params_for_uri(cls, stream_id: str, uri: str, options: dict[str, Any]) -> dict[str, Any]:
        return {**options, "id": stream_id}

    def __init__(self, name: str, params: WhipParams) -> None:
        super().__init__(name, params)
        self.pc: RTCPeerConnection | None = None
        self._negotiated = asyncio.Event()
        capacity: dict[TrackKind, int] = {"video": params.video_buffer, "audio": params.audio_buffer}
        # The receiver counts what it drops through this stage's stats (``_count_lost``).
        self._tracks = TrackReceiver(params.id, capacity, self._count_lost)
        self._receiving: set[TrackKind] = set()
        self._stopped_reason: str | None = None
        self._gave_up = False
        """No offer came within ``connect_timeout_s``: the stream is ending, a late offer is refused."""
        self._next_seq = 0
        self._video_codec = ""
        self.hosted = False
        """Whether a ``streams`` source runs this one (the only way a WHIP peer can reach it)."""

    @property
    def stream_id(self) -> str:
        return self.params.id

    @property
    def _readers(self) -> set[asyncio.Task[None]]:
        # Where the readers were before ``whip_tracks``: the WHIP tests check none is left on release.
        return self._tracks.readers

    def check(self, base_dir: Path) -> None:
        if self.hosted:
            return  # a stream of a ``streams`` source: its peer's offer reaches it through the server
        raise ConfigError(
            "type",
            "a whip peer arrives by POST /whip/<id>: give the pipeline a 'type: streams' source, "
            "and each WHIP publisher becomes one of its streams",
        )

    # --- negotiation (called by the WHIP route) -------------------------------------------------

    async def answer(self, offer_sdp: str) -> str:
        """The SDP answer to a WHIP offer; ``ValueError`` (with the reason) if it cannot be answered."""
        if self.pc is not None:
            raise ValueError("this stream has negotiated already")
        if self.stopping.is_set() or self._gave_up:
            raise ValueError("this stream is stopping")
        servers = [RTCIceServer(urls=url) for url in self.params.ice_servers]
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        wanted = set(self.params.tracks)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            for transceiver in pc.getTransceivers():
                if transceiver.kind not in wanted:
                    transceiver.direction = "inactive"  # not asked for: the peer need not send it
                elif transceiver.kind in ("video", "audio"):
                    self._receiving.add(transceiver.kind)
            if not self._receiving:
                raise ValueError(f"the offer sends no {' or '.join(self.params.tracks)} track")
            await pc.setLocalDescription(await pc.createAnswer())
            self._video_codec = _video_codec(pc.localDescription.sdp)
        except Exception as exc:  # aiortc rejects a bad offer with many exception types
            reason = str(exc) or type(exc).__name__
            raise ValueError(f"cannot answer the offer: {reason}") from exc
        self._negotiated.set()
        self.ctx.logger.info(
            "stream %s: answered a WHIP offer (%s)", self.stream_id, ", ".join(sorted(self._receiving))
        )
        return str(pc.localDescription.sdp)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind not in self.params.tracks:
            return
        self._tracks.receive(track)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState if self.pc is not None else "closed"
        self.ctx.logger.info("stream %s: peer connection %s", self.stream_id, state)
        if state in ("failed", "closed"):
            self._tracks.peer_went(f"peer connection {state}")

    def _count_lost(self, kind: TrackKind, where: str, count: int) -> None:
        """A received frame that never enters the graph: a decoded frame dropped, or a packet."""
        counters = self.ctx.stats.stream(self.stream_id)
        if kind == "video":
            counters.decoded += count
            self.ctx.stats.count_drop(self.stream_id, where, count)
        else:
            counters.packets_dropped += count

    # --- the stream ------------------------------------------------------------------------------

    def stop_stream(self, stream_id: str, reason: str) -> None:
        if stream_id == self.stream_id:
            self._stopped_reason = reason
            self._tracks.wake.set()

    def request_stop(self) -> None:
        super().request_stop()
        self._tracks.wake.set()

    async def run(self, emit: Emit) -> None:
        try:
            offered = await self._wait_for_offer(self.params.connect_timeout_s)
            if not offered and self.pc is not None:
                offered = await self._wait_for_offer(None)  # a publisher's offer is being answered
            if offered:
                await self._stream(emit)
            elif not self.stopping.is_set():
                # Nobody published (a ``whip:`` stream added by ``POST /streams``, say): end it, so
                # its slot and its id are free again, and tell subscribers why.
                self._gave_up = True
                await emit(StreamStarted(self._info()))
                reason = f"no WHIP publisher within {self.params.connect_timeout_s:g} s"
                await self._end(emit, ("error", reason))
            # else: stopped before an offer was answered: no stream was started
        finally:
            await self._close()

    async def _wait_for_offer(self, timeout: float | None) -> bool:
        """Whether an offer was answered; false when stopped or after ``timeout`` seconds."""
        stopped = asyncio.ensure_future(self.stopping.wait())
        negotiated = asyncio.ensure_future(self._negotiated.wait())
        await asyncio.wait({stopped, negotiated}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        negotiated.cancel()
        return self._negotiated.is_set()

    async def _stream(self, emit: Emit) -> None:
        started = False
        deadline = time.monotonic() + self.params.connect_timeout_s
        end: tuple[EndReason, str | None]
        while True:
            if self.stopping.is_set() or self._stopped_reason is not None:
                end = ("stopped", None)
                break
            received = self._tracks.next()
            if received is None:
                if self._tracks.peer_gone is not None:
                    end = ("eof", None)
                    break
                self._tracks.wake.clear()
                timeout = None if started else deadline - time.monotonic()
                try:
                    await asyncio.wait_for(self._tracks.wake.wait(), timeout)
                except TimeoutError:
                    end = ("error", f"no media from the peer within {self.params.connect_timeout_s:g} s")
                    break
                continue
            if not started:
                await emit(StreamStarted(self._info()))
                started = True
            await emit(await self._item(*received))
        if not started:  # announce it even so: subscribers see it start and end, with the reason
            await emit(StreamStarted(self._info()))
        self._tracks.drop_leftovers()
        await self._end(emit, end)

    async def _end(self, emit: Emit, end: tuple[EndReason, str | None]) -> None:
        reason, error = end
        if reason == "error":
            self.ctx.logger.error("stream %s: %s", self.stream_id, error)
            self.ctx.stats.stream(self.stream_id).error = error
        else:
            why = f"{reason}: {self._tracks.peer_gone}" if reason == "eof" else reason
            self.ctx.logger.info("stream %s: ended (%s)", self.stream_id, why)
        await emit(EndOfStream(self.stream_id, reason, error))

    def _info(self) -> StreamInfo:
        width, height = self._tracks.video_size
        video = VideoCodecParams(self._video_codec, width, height, decoded=True)  # aiortc decodes it
        return StreamInfo(
            stream_id=self.stream_id,
            uri="whip:",
            live=True,
            video=video if "video" in self._receiving else None,
            audio=AUDIO_CODEC if "audio" in self._receiving else None,
        )

    async def _item(self, kind: TrackKind, received: Received) -> Item:
        if kind == "audio":
            packet = EncodedPacket(received.media, received.pts, received.time_base, True, "audio")
            return Item(stream_id=self.stream_id, media=packet, capture_time=received.arrived)
        frame = received.media
        # Left unconverted: the first stage that needs the pixels converts them (VideoFrame.bgr).
        media = VideoFrame(
            data=None,
            pts=received.pts,
            time_base=received.time_base,
            width=frame.width,
            height=frame.height,
            decoded=frame,
        )
        item = Item(stream_id=self.stream_id, media=media, capture_time=received.arrived, seq=self._next_seq)
        self._next_seq += 1
        self.ctx.stats.stream(self.stream_id).decoded += 1
        return item

    async def _close(self) -> None:
        """Close the peer connection and stop reading its tracks (idempotent)."""
        self.stopping.set()
        await self._tracks.stop_reading()
        if self.pc is not None:
            await self.pc.close()
        self._tracks.clear()

    async def stop(self) -> None:
        await self._close()


def _video_codec(answer_sdp: str) -> str:
    """The video codec an SDP answer settles on, as FFmpeg names it (``vp8``, ``h264``)."""
    for media in SessionDescription.parse(answer_sdp).media:
        if media.kind == "video" and media.rtp.codecs:
            return str(media.rtp.codecs[0].mimeType).partition("/")[2].lower()
    return ""
