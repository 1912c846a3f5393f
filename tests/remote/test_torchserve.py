"""TorchServeRest against a real TorchServe serving PP-OCRv4 det with servers/torchserve/tensor_handler.py
(the ``torchserve`` fixture: tests/remote/conftest.py and torchserve.py). Without the
``.venv-torchserve`` venv (or the one ``STREAMGRAPH_TORCHSERVE_VENV`` names; either with a
``.installed`` stamp) the tests skip (fail where ``CI=true``), as the other servers' tests do.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import numpy as np
import pytest

from pipeline.engines import RemoteEngine
from pipeline.engines.base import RunSettings
from pipeline.engines.registry import check_engine, load_engine
from pipeline.engines.remote import HttpOnlyOptions
from pipeline.engines.remote.options import ServerOptions
from pipeline.engines.remote.torchserve import TorchServeRest, write_npz
from pipeline.engines.remote.transport import Rejected, ServerModel
from pipeline.modelcard import load_card
from tests.remote.servers import ReferenceModel
from tests.remote.torchserve import TorchServe, empty_request


@pytest.fixture()
async def transport(torchserve: TorchServe) -> AsyncIterator[TorchServeRest]:
    client = TorchServeRest(ServerOptions(url=torchserve.url, model=torchserve.model, timeout_s=60))
    await client.open()
    yield client
    await client.close()


async def test_infer_equals_onnxruntime_here(transport: TorchServeRest, det_model: ReferenceModel) -> None:
    await transport.wait_ready()
    assert await transport.describe() == ServerModel()  # TorchServe has no metadata: nothing to check
    x = np.random.default_rng(0).random((2, 3, 96, 128), dtype=np.float32)
    (expected,) = det_model.run(x)
    result = await transport.infer({det_model.input: x}, [det_model.output])
    assert result[det_model.output].dtype == np.float32
    np.testing.assert_allclose(result[det_model.output], expected, atol=1e-5)
    assert transport.counts.requests >= 1 and transport.counts.sent >= x.nbytes
    assert transport.counts.received >= expected.nbytes


async def test_the_torchserve_engine_runs_the_card(torchserve: TorchServe, det_model: ReferenceModel) -> None:
    card = load_card("pp-ocrv4-det")
    options = HttpOnlyOptions(server=ServerOptions(url=torchserve.url, model=torchserve.model, timeout_s=60))
    settings = RunSettings(max_batch=2)
    engine = load_engine("torchserve", card, options, settings)
    assert isinstance(engine, RemoteEngine)
    await engine.open()
    try:
        check_engine(engine, settings)
        assert "TorchServe" in engine.description
        x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
        (expected,) = det_model.run(x)
        np.testing.assert_allclose(
            (await engine.infer_async({det_model.input: x}))[det_model.output], expected, atol=1e-5
        )
    finally:
        await engine.close()


async def test_an_unknown_model_is_rejected(torchserve: TorchServe) -> None:
    client = TorchServeRest(ServerOptions(url=torchserve.url, model="no_such_model"))
    await client.open()
    try:
        with pytest.raises(Rejected, match=r"no model 'no_such_model'.*Model not found"):
            await client.wait_ready()
    finally:
        await client.close()


async def test_a_wrong_input_is_rejected_with_the_handlers_message(
    transport: TorchServeRest, det_model: ReferenceModel
) -> None:
    x = np.zeros((1, 3, 32, 32), np.float64)
    with pytest.raises(Rejected, match=r"HTTP 400: input 'x' is float32, the request has float64"):
        await transport.infer({det_model.input: x}, [det_model.output])


def test_the_readiness_request_answers_an_empty_npz(torchserve: TorchServe) -> None:
    with urllib.request.urlopen(empty_request(torchserve.url, torchserve.model), timeout=10) as response:
        assert response.read() == write_npz({})
        assert response.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_npz_is_a_400(torchserve: TorchServe, content_type: str) -> None:
    request = urllib.request.Request(
        f"{torchserve.url}/predictions/{torchserve.model}", data=b"hello", headers={"Content-Type": content_type}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert b'"type": "BadInput"' in caught.value.read()
