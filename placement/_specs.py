"""Plan -> per-replica-group deployment specs (pure; no Ray import).

A plan group ``(model, gpu, tp, pp, replicas, share)`` becomes one Serve deployment of
``replicas`` replicas. Each replica is one placement group of ``tp * pp`` bundles
``{"GPU": 1, "gpu_type_<gpu>": 1}``: STRICT_PACK when the replica fits in one node (a TP group
must share a node's NVLink/PCIe switch), PACK when pipeline stages span nodes (TP stays inside
a node: the planner only makes ``tp <= gpus_per_node`` groups). `GroupSpec.llm_config` gives
the keyword arguments of ``ray.serve.llm.LLMConfig`` for the group.

Groups are pooled by `Lane`: what the router picks a group by, a model or one length class
of it (a plan with `tuning.LengthRouting` has a ``short`` and a ``long`` lane per model,
served by groups of their own). On the wire (the router's ``user_config``, ``/health``) a
lane is its `Lane.key`, ``model`` or ``model#class``; `Lane` is the only code that builds or
reads that string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.errors import BouteError
from tuning import LENGTH_CLASSES, Plan

from ._resources import gpu_resource

__all__ = ["LANE_SEPARATOR", "GroupSpec", "Lane", "PlacementError", "group_specs"]

LANE_SEPARATOR = "#"
"""Between a lane's model and its length class in `Lane.key`."""


class PlacementError(BouteError, ValueError):
    """A plan cannot be turned into deployments as asked."""


@dataclass(frozen=True, slots=True)
class Lane:
    """What the router picks replica groups by: a model, or one length class of it.

    Attributes:
        model: the served model (catalog name; must not contain ``#``).
        length_class: one of `tuning.LENGTH_CLASSES` (``short``, ``long``), or None when
            the plan has no length classes.

    Raises:
        PlacementError: an empty model, a model containing ``#``, or an unknown class.

    """

    model: str
    length_class: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model or LANE_SEPARATOR in self.model:
            raise PlacementError(f"lane model={self.model!r} must be a non-empty model name "
                                 f"without {LANE_SEPARATOR!r}")
        if self.length_class is not None and self.length_class not in LENGTH_CLASSES:
            raise PlacementError(f"lane {self.model!r}: length_class={self.length_class!r} is "
                                 f"unknown; use one of {list(LENGTH_CLASSES)} (or none)")

    @property
    def key(self) -> str:
        """The wire form: ``model`` or ``model#class``."""
        if self.length_class is None:
            return self.model
        return f"{self.model}{LANE_SEPARATOR}{self.length_class}"

    @classmethod
    def parse(cls, key: str) -> Lane:
        """Inverse of `key`.

        Raises:
            PlacementError: an empty model or an unknown length class (``model#medium``).

        """
        model, sep, length_class = key.partition(LANE_SEPARATOR)
        return cls(model, length_class if sep else None)

    def fallbacks(self) -> tuple[Lane, ...]:
        """The lanes a request of this lane tries, in order.

        Its own, then the model's other length class (only when every group of its own is
        down); a model-wide lane: itself alone.
        """
        if self.length_class is None:
            return (self,)
        other = LENGTH_CLASSES[1 - LENGTH_CLASSES.index(self.length_class)]
        return (self, Lane(self.model, other))


@dataclass(frozen=True)
class GroupSpec:
    """One replica group as deployed."""

    name: str                   # deployment name: the group's config, unique in the plan
    model: str                  # the served model id (catalog name)
    source: str                 # where weights come from: HF id or local directory
    gpu: str
    tp: int
    pp: int
    replicas: int
    share: float                # share of its model's traffic
    strategy: str               # placement-group strategy of one replica
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)
    length_class: str | None = None   # short / long: the requests it serves (None: all)
    device_gpu: str = ""        # the catalog GPU behind the offer `gpu` (default: `gpu`)

    @property
    def catalog_gpu(self) -> str:
        """The catalog GPU type of the replicas.

        An offer such as ``H100-spot`` rents H100s; its nodes declare the offer's own
        resource, ``gpu_type_H100-spot``, so spot capacity is placed on spot nodes.
        """
        return self.device_gpu or self.gpu

    @property
    def lane(self) -> Lane:
        """The lane the router picks this group in (its model, or its length class of it)."""
        return Lane(self.model, self.length_class)

    @property
    def gpus_per_replica(self) -> int:
        """GPUs of one replica (= bundles of its placement group)."""
        return self.tp * self.pp

    @property
    def bundles(self) -> list[dict[str, float]]:
        """The placement-group bundles of one replica."""
        return [{"GPU": 1.0, gpu_resource(self.gpu): 1.0} for _ in range(self.gpus_per_replica)]

    def llm_config(self) -> dict[str, Any]:
        """Keyword arguments of ``ray.serve.llm.LLMConfig`` for this group."""
        return {
            "model_loading_config": {"model_id": self.model, "model_source": self.source},
            "engine_kwargs": {"tensor_parallel_size": self.tp,
                              "pipeline_parallel_size": self.pp, **self.engine_kwargs},
            "deployment_config": {"num_replicas": self.replicas},
            "placement_group_config": {"bundles": self.bundles, "strategy": self.strategy},
        }


def group_specs(plan: Plan, *, sources: Mapping[str, str], gpus_per_node: Mapping[str, int],
                engine_kwargs: Mapping[str, Any] | None = None) -> list[GroupSpec]:
    """The deployment spec of every replica group of `plan`.

    Args:
        plan: the plan to deploy.
        sources: model name -> HF id or local directory of its weights.
        gpus_per_node: GPU type -> GPUs per node (from the GPU catalog or the live cluster).
        engine_kwargs: extra vLLM engine arguments for every group (e.g. ``max_num_seqs``).

    Raises:
        PlacementError: a model without a source, a GPU type without a node size, or a TP
            group larger than a node.

    """
    specs = []
    seen: dict[str, int] = {}
    for i, g in enumerate(plan.groups):
        if g.model not in sources:
            raise PlacementError(f"groups[{i}].model={g.model!r} has no weights source; pass "
                                 f"--model {g.model}=HF_ID_OR_DIR")
        if g.gpu not in gpus_per_node:
            raise PlacementError(f"groups[{i}].gpu={g.gpu!r} has no node size; known GPU types:"
                                 f" {', '.join(sorted(gpus_per_node))}")
        node = gpus_per_node[g.gpu]
        if g.tp > node:
            raise PlacementError(f"groups[{i}]: tp={g.tp} exceeds the {node} GPUs of a "
                                 f"{g.gpu} node; tensor parallelism must stay inside a node")
        gpu_resource(g.gpu)      # validates the name
        seen[g.name] = seen.get(g.name, 0) + 1         # names stay stable across replans
        name = g.name if seen[g.name] == 1 else f"{g.name}-{seen[g.name]}"
        specs.append(GroupSpec(
            name=name, model=g.model, source=sources[g.model], gpu=g.gpu,
            tp=g.tp, pp=g.pp, replicas=g.replicas, share=g.share,
            strategy="STRICT_PACK" if g.tp * g.pp <= node else "PACK",
            engine_kwargs=dict(engine_kwargs or {}), length_class=g.length_class,
            device_gpu=plan.catalog_gpu(g.gpu)))
    return specs
