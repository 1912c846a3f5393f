"""Failover without losing place, with real worker processes and a real nats-server (JetStream):
a file stream whose owner is SIGKILLed part-way is resumed by another worker from the last
checkpoint (the media time of its last result sent), and the JetStream stream the results go to
holds every frame of the file exactly once: nothing skipped, and what the new owner published
again (from the keyframe at or before the checkpoint) dropped as duplicates, because a file
stream's message ids are its run and position, the same whoever publishes them.

A stream that ended may be added again under the same id: a new run, from the beginning."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import nats

from tests.clips import flat_clip

from . import clusterworkers
from .clusterworkers import Cluster, Results, until, worker_of

cluster = clusterworkers.cluster
"""The fixture: workers of one cluster against the session's nats-server."""

FRAMES, RATE, GOP = 120, 10, 10  # 12 s at 10 frames/s, a keyframe every second


class Seen(Results):
    """Results as a core NATS subscriber sees them: every copy, with its media time and run."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []
        self.ended: list[dict[str, Any]] = []

    async def on_message(self, msg: Any) -> None:
        await super().on_message(msg)
        body = json.loads(msg.data)
        if not msg.subject.endswith(".events"):
            self.bodies.append(body)
        elif body["event"] == "ended":
            self.ended.append(body)


async def stored_results(js: Any, stream: str, subject: str) -> list[dict[str, Any]]:
    """Every message the JetStream stream holds on ``subject``, in order."""
    info = await js.stream_info(stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        message = await js.get_msg(stream, seq)
        if message.subject == subject:
            found.append(json.loads(message.data))
    return found


async def test_a_file_stream_resumes_from_its_checkpoint_and_jetstream_holds_each_frame_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    clip = flat_clip(tmp_path / "gop.mp4", frames=FRAMES, rate=RATE, gop=GOP)
    cluster.jetstream = f"R{uuid.uuid4().hex[:10]}"
    first = await cluster.start_worker()
    await cluster.start_worker()
    assert cluster.http is not None
    seen = Seen()
    client = await nats.connect(cluster.nats_url)
    subject = f"{cluster.prefix}.cluster-test.cam"
    await client.subscribe(f"{subject}.>", cb=seen.on_message)
    await client.subscribe(subject, cb=seen.on_message)
    await client.flush()
    try:
        body = {"id": "cam", "uri": str(clip), "options": {"rate": "native"}}
        async with cluster.http.post(f"{first.base}/streams", json=body) as response:
            assert response.status == 201, await response.text()

        async def past(seconds: float) -> bool:
            return any(b["media_time_s"] >= seconds for b in seen.bodies)

        await until(lambda: past(4.0), "results of the first 4 s")
        victim_owner = seen.bodies[-1]["owner"]
        victim = worker_of(cluster, victim_owner)
        victim.process.kill()
        heir = next(w for w in cluster.workers if w is not victim)

        async def ended() -> bool:
            return bool(seen.ended)

        await until(ended, "the stream's end, played by the other worker")
        (end,) = seen.ended
        assert end["reason"] == "eof", end

        resumed = [m for m in seen.moves if m["previous_owner"] == victim_owner]
        assert len(resumed) == 1 and resumed[0]["reason"] == "expired", seen.moves
        resume_s = resumed[0]["resume_s"]
        by_victim = [b["media_time_s"] for b in seen.bodies if b["owner"] == victim_owner]
        by_heir = [b["media_time_s"] for b in seen.bodies if b["owner"] != victim_owner]
        # The checkpoint is a result the dead owner had sent; the new owner began at the
        # keyframe at or before it (a frame or two of B-frames earlier), not at the beginning.
        assert resume_s in by_victim and resume_s >= 1.0, (resume_s, by_victim[-5:])
        assert resume_s - 2 * GOP / RATE <= min(by_heir) <= resume_s, (resume_s, sorted(by_heir)[:5])
        assert {b["run"] for b in seen.bodies} == {seen.bodies[0]["run"]}  # one run, two owners

        stored = await stored_results(client.jetstream(), cluster.jetstream, subject)
        positions = Counter(b["pts"] for b in stored)
        frame_pts = {b["pts"] for b in seen.bodies}
        twice = sum(copies > 1 for copies in Counter(b["pts"] for b in seen.bodies).values())
        figures = f"stored {len(stored)}, sent {len(seen.bodies)}, sent twice {twice}"
        assert len(frame_pts) == FRAMES, figures  # nothing skipped: every frame's result was published
        assert sorted(positions.values()) == [1] * FRAMES, figures  # and JetStream holds each once

        # Once the cluster lists it ended, the id is free again: added again, it is a new run,
        # from the beginning.
        async def listed_ended() -> bool:
            return (await cluster.streams(heir))["cam"]["state"] == "ended"

        await until(listed_ended, "the stream listed as ended")
        run = seen.bodies[0]["run"]
        async with cluster.http.post(f"{heir.base}/streams", json=body) as response:
            assert response.status == 201, await response.text()

        async def new_run() -> bool:
            return any(b["run"] != run for b in seen.bodies)

        await until(new_run, "results of the stream added again")
        again = [b for b in seen.bodies if b["run"] != run]
        assert again[0]["media_time_s"] == 0.0
        assert "resume_s" not in seen.moves[-1] and seen.moves[-1]["reason"] == "new", seen.moves[-1]
        async with cluster.http.delete(f"{heir.base}/streams/cam") as response:
            assert response.status == 200, await response.text()
    finally:
        await client.drain()
