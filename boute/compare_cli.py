"""`boute compare`: the cheapest $/hour per baseline and BOute for each target (Table 3).

``--ttft-p95`` / ``--tpot-p95`` hold every system to those targets as well
(`tuning.Problem.with_token_targets`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from boute._planning import (
    add_planning_args,
    add_solver_args,
    add_token_args,
    load_planning_problem,
    search_block,
    stop_rule_from,
    token_targets,
)
from common.errors import BouteError

if TYPE_CHECKING:
    from tuning import Problem

__all__ = ["add_compare"]


# -- boute compare -------------------------------------------------------------------------------
def add_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute compare`."""
    p = sub.add_parser("compare", help="cheapest $/hour per baseline and BOute (Table 3)")
    add_planning_args(p)
    p.add_argument("--targets", default=None, help="Q:SEC,... (default: the scenario's)")
    add_token_args(p)
    add_solver_args(p, choices=("auto", "mobo", "exact"))
    p.set_defaults(run=_run_compare)


def _parse_targets(text: str) -> list[tuple[float, float]]:
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            q, sec = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise BouteError(f"--targets item {item!r} must be QUALITY:SECONDS, e.g. 87:8"
                             ) from None
        if not sec > 0:
            raise BouteError(f"--targets item {item!r}: seconds must be > 0")
        out.append((q, sec))
    return out


def _gpu_text(per: dict[str, int]) -> str:
    return "+".join(f"{n}x{gpu}" for gpu, n in sorted(per.items(), key=lambda kv: -kv[1])) or "-"


def _target_text(quality: Any, sec: float) -> str:
    q = ("/".join(f"{v:g}" for v in quality) if isinstance(quality, tuple | list)
         else f"{quality:g}")
    return f"({q}, {sec:g} s)"


def _allocation_lines(problem: Problem, columns: list[dict[str, Any]]) -> list[str]:
    """Table 1: the top model's share of the queries and the GPUs of each model."""
    models = problem.models
    if problem.is_pair:
        weak, strong = models
        lines = ["", f"BOute's allocation per target (Table 1): share of queries to {strong}, "
                 "GPUs per model", f"{'target':<16}{'strong share':>13}  {weak:<34}{strong}"]
    else:
        lines = ["", "BOute's allocation per target (Table 1): share of all queries to "
                 f"{models[-1]}, GPUs per model",
                 f"{'target':<18}{'top share':>10}  " + "".join(f"{m:<30}" for m in models)]
    for col in columns:
        a = col["allocation"]
        tgt = _target_text(col["quality"], col["p95_s"])
        if problem.is_pair and a is None:
            lines.append(f"{tgt:<16}{'-':>13}")
        elif problem.is_pair:
            lines.append(f"{tgt:<16}{a['strong_share']:>13.1%}  "
                         f"{_gpu_text(a['gpus'].get(models[0], {})):<34}"
                         f"{_gpu_text(a['gpus'].get(models[1], {}))}")
        elif a is None:
            lines.append(f"{tgt:<18}{'-':>10}")
        else:
            lines.append(f"{tgt:<18}{a['strong_share']:>10.1%}  " + "".join(
                f"{_gpu_text(a['gpus'].get(m, {})):<30}" for m in models))
    return lines


def _run_compare(args: argparse.Namespace) -> int:
    from tuning import BASELINES
    from tuning.paper import compare_targets

    ttft_p95_s, tpot_p95_s = token_targets(args)
    # every system (BOute and the baselines) plans with the token targets' rate caps
    problem = load_planning_problem(args).with_token_targets(ttft_p95_s, tpot_p95_s)
    tokens = "".join(f", {name} P95 <= {v:g} s" for name, v in (
        ("TTFT", ttft_p95_s), ("TPOT", tpot_p95_s)) if v is not None)
    targets: list[tuple[Any, float]]
    if args.targets:
        targets = list(_parse_targets(args.targets))
    elif len(problem.workloads) > 1:
        targets = [(t.qualities(problem.workloads), t.p95_s) for t in problem.scenario.targets]
    else:
        targets = [(t.single_quality, t.p95_s) for t in problem.scenario.targets]
    if not targets:
        raise BouteError("no targets: pass --targets Q:SEC,... or add targets to the scenario")
    rule = stop_rule_from(args)
    columns: list[dict[str, Any]] = [
        {"quality": c.quality, "p95_s": c.p95_s, "cost_per_hour": c.cost_per_hour,
         "reduction": c.reduction, "allocation": c.allocation, "search": search_block(c.result)}
        for c in compare_targets(problem, targets, solver=args.solver, seed=args.seed,
                                 stop=rule)]
    payload: dict[str, Any] = {"scenario": problem.scenario.name, "solver": args.solver,
                               "targets": columns}
    if tokens:
        payload["token_targets"] = {"ttft_p95_s": ttft_p95_s, "tpot_p95_s": tpot_p95_s}
    if not problem.is_pair:
        payload["not_applicable"] = ["RouteLLM-uniform"]

    def human() -> str:
        width = 16 if problem.is_pair else 18
        head = f"{'system':<20}" + "".join(f"{_target_text(*c):>{width}}" for c in targets)
        lines = [f"cheapest $/hour meeting (quality, P95){tokens} on {problem.scenario.name} "
                 "(- = no plan meets it" + ("" if problem.is_pair else
                                            "; RouteLLM-uniform: n/a for a ladder") + ")",
                 head]
        for name in (*BASELINES, "BOute"):
            cells = []
            for col in columns:
                v = col["cost_per_hour"][name]
                red = col["reduction"].get(name)
                txt = "-" if v is None else f"{v:.2f}"
                if red is not None:
                    txt += f" ({red:+.0%})"
                cells.append(f"{txt:>{width}}")
            lines.append(f"{name:<20}" + "".join(cells))
        lines.append("(x%) = BOute's cost reduction versus that baseline")
        return "\n".join(lines + _allocation_lines(problem, columns))


    from boute._shared import emit

    emit(args, payload, human)
    return 0
