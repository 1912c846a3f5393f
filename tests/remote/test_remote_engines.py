"""The remote engines as ``infer`` loads them (``RemoteEngine`` over each transport), against real
servers: Triton over HTTP with JSON tensors, KServe's ModelServer over v2 HTTP, TF Serving's REST
format as the ModelServer's v1 route serves it; and the start-up errors the CLI prints."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from pipeline.engines import RemoteEngine, RunSettings, check_engine, engine_entry, load_engine
from pipeline.errors import ConfigError
from pipeline.modelcard import load_card
from tests.integration.support import ROOT, start_cli
from tests.remote.servers import TRITON_ACCESS_TOKEN, ReferenceModel, free_port

REMOTE = ROOT / "configs" / "text-detect-triton.yaml"


async def opened(engine_name: str, **server: Any) -> RemoteEngine:
    options = engine_entry(engine_name).options.model_validate({"server": server})
    settings = RunSettings(max_batch=2)
    engine = load_engine(engine_name, load_card("pp-ocrv4-det"), options, settings)
    assert isinstance(engine, RemoteEngine)
    await engine.open()
    check_engine(engine, settings)
    return engine


async def answers_like_the_model_here(engine: RemoteEngine, det_model: ReferenceModel) -> None:
    x = np.random.default_rng(7).random((2, 3, 64, 96), dtype=np.float32)
    try:
        out = await engine.infer_async({det_model.input: x})
    finally:
        await engine.close()
    (expected,) = det_model.run(x)
    assert out[det_model.output].shape == (2, 1, 64, 96)
    np.testing.assert_allclose(out[det_model.output], expected, atol=1e-5)
    assert engine.transport.counts.requests == 1 and engine.transport.counts.sent > x.nbytes


async def test_triton_over_http_with_json_tensors(triton_server: Any, det_model: ReferenceModel) -> None:
    engine = await opened("triton", url=triton_server.http_url, model=triton_server.model, binary=False)
    assert engine.transport.protocol == "KServe v2 HTTP, JSON"
    assert engine.metadata().max_batch is not None  # from Triton's model config
    await answers_like_the_model_here(engine, det_model)


async def test_triton_over_http_with_binary_tensors(triton_server: Any, det_model: ReferenceModel) -> None:
    engine = await opened("triton", url=triton_server.http_url, model=triton_server.model)
    assert engine.transport.protocol == "KServe v2 HTTP, binary"
    await answers_like_the_model_here(engine, det_model)


async def test_triton_over_grpc(triton_server: Any, det_model: ReferenceModel) -> None:
    engine = await opened("triton", url=triton_server.grpc_url, model=triton_server.model)
    await answers_like_the_model_here(engine, det_model)


async def test_a_kserve_model_server_over_v2_http(kserve_server: Any, det_model: ReferenceModel) -> None:
    engine = await opened("kserve", url=kserve_server.http_url, model=kserve_server.model)
    assert engine.metadata().max_batch is None  # kserve reads no Triton config
    await answers_like_the_model_here(engine, det_model)


async def test_tf_servings_rest_format_on_the_model_servers_v1_route(
    kserve_server: Any, det_model: ReferenceModel
) -> None:
    engine = await opened("tfserving", url=kserve_server.http_url, model=kserve_server.model)
    await answers_like_the_model_here(engine, det_model)


def contract_config(tmp_path: Path, **server: Any) -> Path:
    config = yaml.safe_load(REMOTE.read_text())
    config["stages"][0]["params"]["path"] = str(ROOT / "samples" / "text.mp4")
    config["stages"][3]["params"]["server"].update(server)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def run_cli(config: Path, env: dict[str, str]) -> tuple[int | None, str]:
    process = await start_cli("run", str(config), "--no-progress", env=env)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode, stderr.decode()


async def test_a_model_the_server_does_not_have_is_a_config_error_naming_the_stage(
    triton_server: Any, sample_video: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    config = contract_config(tmp_path, url=triton_server.http_url, model="nosuch")
    code, stderr = await run_cli(config, cli_env)
    assert code == 2, stderr
    assert f"error: stages[3].params.server: model 'nosuch' on {triton_server.http_url}: " in stderr


async def test_a_server_that_never_answers_fails_the_run_naming_its_url(
    sample_video: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = contract_config(tmp_path, url=url, model="pp_ocrv4_det", startup_timeout_s=0.5)
    code, stderr = await run_cli(config, cli_env)
    assert code == 1, stderr
    assert f"error: model 'pp_ocrv4_det' on {url} (KServe v2 HTTP" in stderr and "not ready after 0.5 s" in stderr


async def test_triton_on_this_host_takes_its_inputs_through_shared_memory(
    triton_server: Any, det_model: ReferenceModel
) -> None:
    server = {"url": triton_server.http_url, "model": triton_server.model, "shared_memory": True}
    with pytest.raises(ConfigError, match="triton-access-token"):  # the shared-memory API is restricted
        await opened("triton", **server)
    engine = await opened("triton", **server, headers={"triton-access-token": TRITON_ACCESS_TOKEN})
    assert engine.transport.protocol == "KServe v2 HTTP, inputs in shared memory"
    x = np.random.default_rng(3).random((2, 3, 64, 96), dtype=np.float32)
    try:
        first = await engine.infer_async({det_model.input: x})
        bigger = np.concatenate([x, x])  # a batch the first regions cannot hold: they grow
        second = await engine.infer_async({det_model.input: bigger})
        assert engine.transport.counts.sent < x.nbytes // 10  # references, not the tensors
    finally:
        await engine.close()
    (expected,) = det_model.run(x)
    np.testing.assert_allclose(first[det_model.output], expected, atol=1e-5)
    np.testing.assert_allclose(second[det_model.output][2:], expected, atol=1e-5)


async def test_shared_memory_regions_are_registered_again_after_the_server_restarts(
    triton_server: Any, det_model: ReferenceModel
) -> None:
    server = {"url": triton_server.http_url, "model": triton_server.model, "shared_memory": True}
    engine = await opened("triton", **server, headers={"triton-access-token": TRITON_ACCESS_TOKEN})
    x = np.random.default_rng(5).random((1, 3, 32, 32), dtype=np.float32)
    try:
        await engine.infer_async({det_model.input: x})
        await asyncio.to_thread(triton_server.restart)
        out = await engine.infer_async({det_model.input: x})
    finally:
        await engine.close()
    np.testing.assert_allclose(out[det_model.output], det_model.run(x)[0], atol=1e-5)
