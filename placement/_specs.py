"""Plan -> per-replica-group deployment specs (pure; no Ray import).

A plan group ``(model, gpu, tp, pp, replicas, share)`` becomes one Serve deployment of
``replicas`` replicas. Each replica is one placement group of ``tp * pp`` bundles
``{"GPU": 1, "gpu_type_<gpu>": 1}``: STRICT_PACK when the replica fits in one node (a TP group
must share a node's NVLink/PCIe switch), PACK when pipeline stages span nodes (TP stays inside
a node: the planner only makes ``tp <= gpus_per_node`` groups). `GroupSpec.llm_config` gives
the keyword arguments of ``ray.serve.llm.LLMConfig`` for the group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.errors import BouteError
from tuning import Plan

from ._resources import gpu_resource

__all__ = ["GroupSpec", "PlacementError", "group_specs"]


class PlacementError(BouteError, ValueError):
    """A plan cannot be turned into deployments as asked."""


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
    def pool_key(self) -> str:
        """What the router picks groups by: the model, or ``model#class``."""
        return self.model if self.length_class is None else f"{self.model}#{self.length_class}"

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
