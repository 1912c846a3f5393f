"""``track_attributes``: a second model's latest answer per track, on that track's object on
every frame — also the frames on which the model did not run.

A second model fed by ``track_crops`` runs on a few tracks per frame; its decoding stage
(``text_recognition``, or a user's stage following the same rule) gives one entry per crop, each
with the ``track_id`` it is of, in any list of its result. This stage keeps the latest entry per
track (less its geometry: ``track_id``, ``box``, ``quad``) and puts it on every tracked object as
``attributes.<name>``; an object whose track has no answer yet gets none. An entry is forgotten
when its track ends, and a stream's when the stream ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.media import EndOfStream, Item
from pipeline.stage import Stage, StageContext, StageParams, register_stage

from .tracking import TracksEnded, tracked_objects

GEOMETRY = frozenset({"track_id", "box", "quad"})
"""Fields of an entry that are the crop's, not the answer's (the object has its own)."""


class TrackAttributesParams(StageParams):
    input: str | None = None
    """The stage whose result has the per-track entries (default: this stage's first input)."""
    tracks: str | None = None
    """The ``track`` stage (default: the one track stage whose tracks are on the item)."""
    name: str | None = None
    """The attribute's name on each object (default: the ``input`` stage's name)."""
    keep: list[str] | None = None
    """The entry's fields to keep (default: all but its geometry)."""


@register_stage("track_attributes")
class TrackAttributes(Stage):
    Params = TrackAttributesParams
    params: TrackAttributesParams
    latency_key = "post"

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.source_key = self.params.input or ctx.input_stages[0]
        self.attribute = self.params.name or self.source_key
        self.known: dict[str, dict[int, dict[str, Any]]] = {}  # stream -> track -> its latest answer

    async def process(self, item: Item) -> Sequence[Item]:
        update, objects = tracked_objects(item, self._tracks_key(item))
        known = self.known.setdefault(item.stream_id, {})
        for entry in per_track_entries(item.results.get(self.source_key)):
            known[entry["track_id"]] = self._answer(entry)
        for track_id in update.track_ids:
            known.pop(track_id, None)
        for obj in objects:
            answer = known.get(obj["track_id"])
            if answer is not None:
                obj.setdefault("attributes", {})[self.attribute] = answer
        return (item,)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        self.known.pop(eos.stream_id, None)
        return ()

    def _tracks_key(self, item: Item) -> str:
        if self.params.tracks is not None:
            return self.params.tracks
        found = [key for key, payload in item.tensors.items() if isinstance(payload, TracksEnded)]
        if len(found) != 1:
            raise ValueError(
                f"expected one track stage's tracks on this item, found {len(found)} "
                f"({', '.join(found) or 'none'}): name it in params.tracks"
            )
        return found[0]

    def _answer(self, entry: dict[str, Any]) -> dict[str, Any]:
        if self.params.keep is not None:
            return {key: entry[key] for key in self.params.keep if key in entry}
        return {key: value for key, value in entry.items() if key not in GEOMETRY}


def per_track_entries(result: Any) -> list[dict[str, Any]]:
    """Every entry with a ``track_id`` in the result's lists (``text_recognition``'s ``lines``)."""
    if not isinstance(result, dict):
        return []
    return [
        entry
        for value in result.values()
        if isinstance(value, list)
        for entry in value
        if isinstance(entry, dict) and "track_id" in entry
    ]
