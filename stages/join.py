"""``join``: merge parallel branches of one stream into one message per primary item (ensemble).

One source feeds several branches (video OCR and audio VAD of the same file, say); the join
reads all of them. Items of the *primary* input (a video frame) become the messages; every
other input's items are held by media time and attached to the primary item whose time span
``[t, t + frame duration)`` they fall in. A primary item waits until every other branch has
delivered something at or past the end of its span, but never longer than ``timeout_ms``: then
it goes out with what it has and that branch marked ``missing`` (a file with no audio track, a
stalled branch). Attached items are used up, not published: they count as ``consumed``.

A primary item's wait for the other branches is its ``held`` latency part; attaching what they
delivered is ``post``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from pydantic import Field

from pipeline.errors import ConfigError
from pipeline.media import EndOfStream, Item, StreamInfo
from pipeline.stage import Stage, StageContext, StageParams, register_stage

DEFAULT_FRAME_S = 0.04


class JoinParams(StageParams):
    primary: str | None = None
    """The input whose items become the messages; defaults to the first input."""
    timeout_ms: float = Field(default=500.0, gt=0)
    """How long a primary item waits for the other branches before it goes out without them."""
    max_pending: int = Field(default=64, ge=1)
    """Primary items waiting at once (per stage); more wait in the edge."""
    max_buffered: int = Field(default=4096, ge=1)
    """Items held per branch and stream; the oldest go first (counted as dropped) beyond it."""


@dataclass
class _StreamState:
    frame_s: float
    held: dict[str, deque[tuple[float, Item]]]
    latest: dict[str, float]
    waiting: list[float] = field(default_factory=list)
    """Start times of primary items still waiting."""
    done_until: float = float("-inf")
    """Start of the latest primary item sent: held items before it are of no use."""
    ended: set[str] = field(default_factory=set)
    """Branches whose end has arrived: nothing more will come through them."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)


@register_stage("join")
class Join(Stage):
    Params = JoinParams
    params: JoinParams
    latency_key = "post"
    latency_keys = ("held",)

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        if len(ctx.input_stages) < 2:
            raise ConfigError(f"stage {self.name}", "join needs at least two inputs")
        self.primary = self.params.primary or ctx.input_stages[0]
        if self.primary not in ctx.input_stages:
            raise ConfigError(f"stage {self.name}", f"primary {self.primary!r} is not one of its inputs")
        self.branches = [name for name in ctx.input_stages if name != self.primary]
        self._streams: dict[str, _StreamState] = {}

    @property
    def max_in_flight(self) -> int:
        return self.params.max_pending

    async def on_stream_added(self, info: StreamInfo) -> None:
        frame_s = float(1 / info.frame_rate) if info.frame_rate else DEFAULT_FRAME_S
        self._streams[info.stream_id] = _StreamState(
            frame_s=frame_s,
            held={b: deque() for b in self.branches},
            latest={b: float("-inf") for b in self.branches},
        )

    async def on_input_ended(self, eos: EndOfStream) -> None:
        # A branch that has ended has nothing more to wait for: its part is complete (with
        # whatever it delivered); a branch that never got any input (no audio track) is missing.
        state = self._streams.get(eos.stream_id)
        if state is not None and eos.via in state.latest:
            state.ended.add(eos.via)
            state.changed.set()

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        state = self._streams.pop(eos.stream_id, None)
        if state is not None:
            counters = self.ctx.stats.stream(eos.stream_id)
            counters.consumed += sum(len(held) for held in state.held.values())
        return ()

    async def process(self, item: Item) -> Sequence[Item]:
        state = self._streams.get(item.stream_id)
        time_s = _media_time(item)
        if state is None or time_s is None:
            return (item,)
        if item.last_stage == self.primary:
            return (await self._complete(item, state, time_s),)
        if item.last_stage in state.held:
            self._hold(item, state, item.last_stage, time_s)
            return ()
        return (item,)  # from no input we know (cannot happen through the runner): pass it on

    def _hold(self, item: Item, state: _StreamState, branch: str, time_s: float) -> None:
        held = state.held[branch]
        held.append((time_s, item))
        state.latest[branch] = max(state.latest[branch], time_s)
        # Held items before every frame still to come are of no use to any of them.
        useless_before = min([*state.waiting, state.done_until])
        counters = self.ctx.stats.stream(item.stream_id)
        while held and held[0][0] < useless_before:
            held.popleft()
            counters.consumed += 1
        while len(held) > self.params.max_buffered:
            self.ctx.stats.drop_item(held.popleft()[1], f"join:{self.name}")
        state.changed.set()

    async def _complete(self, item: Item, state: _StreamState, start: float) -> Item:
        end = start + state.frame_s
        state.waiting.append(start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.params.timeout_ms / 1000.0
        try:
            while not all(state.latest[b] >= end or b in state.ended for b in self.branches):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                state.changed.clear()
                try:
                    await asyncio.wait_for(state.changed.wait(), remaining)
                except TimeoutError:
                    break
        finally:
            state.waiting.remove(start)
            state.done_until = max(state.done_until, start)
        item.mark("held")
        for branch in self.branches:
            taken = [held for t, held in state.held[branch] if start <= t < end]
            item.results[branch] = {
                "type": "join",
                "branch": branch,
                "status": "ok" if state.latest[branch] >= end or _delivered_and_ended(state, branch) else "missing",
                "items": [_summary(held) for held in taken],
            }
            if taken:
                kept = deque(pair for pair in state.held[branch] if not start <= pair[0] < end)
                state.held[branch] = kept
                self.ctx.stats.stream(item.stream_id).consumed += len(taken)
        return item


def _delivered_and_ended(state: _StreamState, branch: str) -> bool:
    """The branch has ended after delivering something: its last span is complete, not missing."""
    return branch in state.ended and state.latest[branch] > float("-inf")


def _media_time(item: Item) -> float | None:
    media = item.media
    pts, time_base = getattr(media, "pts", None), getattr(media, "time_base", None)
    if pts is None or not isinstance(time_base, Fraction):
        return None
    return float(pts * time_base)


def _summary(item: Item) -> dict[str, Any]:
    return {"seq": item.seq, "media_time_s": round(_media_time(item) or 0.0, 6), "results": item.results}
