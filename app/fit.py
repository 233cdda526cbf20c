"""Does a plan fit a cluster? The check `boute deploy` and ``serve run``'s builder share.

`fit_plan` is pure (the cluster's nodes are given, as ``ray.nodes()`` reports them): every
replica must fit its GPU's memory, every GPU type must be on some node, and the replicas of
each type must pack onto its nodes (`placement.check_fit`). A plan that does not fit raises
`DeployError` naming, per GPU type, the GPUs needed and available and the fix, before
anything is deployed. `app.deploy.check_plan_fits` runs it on the live cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from common.errors import BouteError
from placement import check_fit, gpu_types_in
from tuning import Plan

from .stack import Stack, stack_specs

__all__ = ["DeployError", "fit_plan"]


class DeployError(BouteError, RuntimeError):
    """A plan cannot be deployed on this cluster (nothing was deployed)."""


Nodes = Sequence[Mapping[str, float]]
"""A cluster's nodes: one resource dict per node, as ``ray.nodes()`` reports them."""


def fit_plan(plan: Plan, stack: Stack, nodes: Nodes | Callable[[], Nodes], *,
             gpu_catalog: list[str] | None = None, model_catalog: list[str] | None = None,
             where: str = "the cluster") -> Stack:
    """Check `plan` against a cluster's nodes; returns `stack` with the cluster's node sizes.

    Args:
        plan: the plan to place.
        stack: how it is served (catalogs, node sizes given by the user).
        nodes: the cluster's nodes, or a function giving them (called after the memory
            check, which needs no cluster: a plan that can never run fails before any Ray
            call).
        gpu_catalog: extra GPU catalogs (default: the stack's).
        model_catalog: extra model catalogs (default: the stack's).
        where: the cluster's name in the error message.

    Raises:
        DeployError: a GPU type is missing or short on the cluster (per type: needed,
            available, what to add).
        InfeasibleConfigError: a group's (model, GPU, TP, PP) does not fit in GPU memory.
        PlacementError: a TP group is wider than the cluster's nodes of its type.

    """
    from dataclasses import replace

    from profiling import ReplicaModel, load_catalog

    catalog = load_catalog(gpu_catalog or stack.gpu_catalog, model_catalog or stack.model_catalog)
    for g in plan.groups:           # memory fit per replica (raises with the numbers)
        gpu = plan.catalog_gpu(g.gpu)
        if g.model in catalog.models and gpu in catalog.gpus:
            ReplicaModel(catalog.model(g.model), catalog.gpu(gpu), g.tp, g.pp)
    if callable(nodes):
        nodes = nodes()
    sizes = gpu_types_in(nodes)
    missing = sorted({g.gpu for g in plan.groups} - set(sizes))
    if missing:
        needed = {t: sum(g.tp * g.pp * g.replicas for g in plan.groups if g.gpu == t)
                  for t in missing}
        raise DeployError(
            f"{where} has no node with GPU type(s) {', '.join(missing)} (" +
            "; ".join(f"{t}: the plan needs {n} GPU(s), {where} has 0" for t, n in needed.items())
            + "); add nodes of these types, each declaring the resource gpu_type_<TYPE> per "
            "GPU (cluster.yaml, or `ray start --resources \"$(boute node-resources)\"`), or "
            "plan for the GPUs the cluster has")
    stack = replace(stack, gpus_per_node={**sizes, **stack.gpus_per_node})
    short = check_fit(stack_specs(plan, stack), nodes)
    if short:
        raise DeployError(f"the plan does not fit {where}:\n  " +
                          "\n  ".join(str(s) for s in short))
    return stack
