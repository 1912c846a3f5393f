"""From a validated config to a DAG of stage instances: checked whole before anything starts."""

from __future__ import annotations

from dataclasses import dataclass

from .config import EdgeConfig, PipelineConfig
from .errors import ConfigError
from .stage import Source, Stage, build_stage, stage_class_for


@dataclass(frozen=True)
class Node:
    """One stage in the graph, with the stages it reads from and the edge in front of it."""

    name: str
    stage: Stage
    inputs: tuple[str, ...]
    edge: EdgeConfig

    @property
    def is_source(self) -> bool:
        return isinstance(self.stage, Source)


@dataclass(frozen=True)
class Graph:
    pipeline: str
    nodes: dict[str, Node]
    order: tuple[str, ...]
    """Topological order: every stage after all of its inputs."""

    def consumers(self, name: str) -> list[str]:
        return [n for n in self.order if name in self.nodes[n].inputs]

    @property
    def latency_keys(self) -> tuple[str, ...]:
        """The ``latency_ms`` keys the stages report, in graph order, each once."""
        keys = (key for name in self.order for key in self.nodes[name].stage.reported_latency_keys())
        return tuple(dict.fromkeys(keys))

    @property
    def sources(self) -> list[Node]:
        return [self.nodes[n] for n in self.order if self.nodes[n].is_source]


def build_graph(config: PipelineConfig, *, source: str | None = None) -> Graph:
    """Instantiate every stage with validated params and check the wiring; raise ``ConfigError``."""
    nodes: dict[str, Node] = {}
    for index, stage_config in enumerate(config.stages):
        path = f"stages[{index}]"
        try:
            if stage_config.name in nodes:
                raise ConfigError(f"{path}.name", f"duplicate stage name {stage_config.name!r}")
            cls = stage_class_for(stage_config.type, stage_config.class_, path, base_dir=config.base_dir)
            stage = build_stage(cls, stage_config.name, stage_config.params, params_path=f"{path}.params")
            try:
                stage.check(config.base_dir)
            except ConfigError as exc:
                raise ConfigError(f"{path}.{exc.path}" if exc.path else path, exc.message) from None
            is_source = isinstance(stage, Source)
            if is_source and stage_config.inputs:
                raise ConfigError(f"{path}.inputs", f"source stage {stage_config.name!r} takes no inputs")
            if not is_source and not stage_config.inputs:
                raise ConfigError(f"{path}.inputs", f"stage {stage_config.name!r} needs at least one input")
        except ConfigError as exc:
            raise ConfigError(exc.path, exc.message, source=source) from None
        nodes[stage_config.name] = Node(
            name=stage_config.name,
            stage=stage,
            inputs=tuple(stage_config.inputs),
            edge=stage_config.edge,
        )

    for index, stage_config in enumerate(config.stages):
        for input_index, name in enumerate(stage_config.inputs):
            if name not in nodes:
                close = [n for n in nodes if n != stage_config.name]
                raise ConfigError(
                    f"stages[{index}].inputs[{input_index}]",
                    f"unknown stage {name!r}; stages are: {', '.join(close)}",
                    source=source,
                )
            if name in stage_config.inputs[:input_index]:
                raise ConfigError(f"stages[{index}].inputs[{input_index}]", f"{name!r} is listed twice", source=source)
            if name == stage_config.name:
                raise ConfigError(
                    f"stages[{index}].inputs[{input_index}]", "a stage cannot read its own output", source=source
                )

    order = _topological_order(nodes, config, source)
    return Graph(pipeline=config.pipeline, nodes=nodes, order=order)


def _topological_order(nodes: dict[str, Node], config: PipelineConfig, source: str | None) -> tuple[str, ...]:
    remaining = {name: set(node.inputs) for name, node in nodes.items()}
    order: list[str] = []
    while remaining:
        ready = [name for name, deps in remaining.items() if not deps]
        if not ready:
            cycle = sorted(remaining)
            index = next(i for i, s in enumerate(config.stages) if s.name == cycle[0])
            raise ConfigError(
                f"stages[{index}].inputs",
                f"cycle between stages {', '.join(cycle)}: a pipeline must be a DAG",
                source=source,
            )
        # Keep YAML order among stages that are ready together: logs and summaries read naturally.
        ready.sort(key=lambda name: [s.name for s in config.stages].index(name))
        for name in ready:
            order.append(name)
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    return tuple(order)
