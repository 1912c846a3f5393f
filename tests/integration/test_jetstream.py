"""JetStream publishing: every result is stored once, with Nats-Msg-Id <pipeline>.<stream>.<run>.<seq>."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nats

from .support import Recording, finish, start_cli


async def test_results_land_in_a_jetstream_stream_with_message_ids(
    nats_server: Any, sample_video: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    config = tmp_path / "js.yaml"
    config.write_text(
        f"""
pipeline: js-demo
nats:
  jetstream: {{stream: JSDEMO}}
stages:
  - {{name: video, type: file, params: {{path: '{sample_video}', id: cam}}}}
  - {{name: decode, type: decode, inputs: [video]}}
  - {{name: publish, type: publish, inputs: [decode], params: {{events: false}}}}
"""
    )
    recording = Recording()
    process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=cli_env)
    await finish(process, recording)
    assert recording.returncode == 0, recording.stderr

    client = await nats.connect(nats_server.url)
    try:
        js = client.jetstream()
        info = await js.stream_info("JSDEMO")
        assert info.state.messages == 250
        ids = set()
        for seq in range(1, 251):
            stored = await js.get_msg("JSDEMO", seq=seq)
            assert stored.headers is not None and stored.data is not None
            body = json.loads(stored.data)
            assert stored.headers["Nats-Msg-Id"] == f"js-demo.cam.{body['run']}.{body['seq']}"
            ids.add(stored.headers["Nats-Msg-Id"])
        assert len(ids) == 250
        # Publishing a message id again is a duplicate: JetStream keeps one copy.
        ack = await js.publish("streamgraph.js-demo.cam", b"{}", headers={"Nats-Msg-Id": min(ids)})
        assert ack.duplicate
        assert (await js.stream_info("JSDEMO")).state.messages == 250
    finally:
        await client.close()
