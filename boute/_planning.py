"""What the planning commands share: their flags, problem, stop rule, and printed plans.

`boute plan`, `boute evaluate` and `boute compare` import it (the command modules import no
command module of each other; `boute.cli` assembles them).
"""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from boute._shared import add_hardware_profiles_arg, stderr_note
from common.errors import BouteError

if TYPE_CHECKING:
    from tuning import Plan, Problem, SearchResult, StopRule

__all__ = ["add_planning_args", "add_solver_args", "add_token_args", "format_plan",
           "load_planning_problem", "search_block", "stop_rule_from", "token_targets"]


def add_planning_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", default=None, help="preset name or YAML file "
                   "(default: paper-gsm8k)")
    p.add_argument("--db", default=None, help="perf DB (default: build/perfdb-<scenario>."
                   "parquet; built when missing or stale)")
    p.add_argument("--budget", type=float, default=None, help="override the scenario's $/hour")
    p.add_argument("--rate", type=float, default=None, help="override the scenario's total "
                   "rate, req/s (several workloads: in the same proportions)")
    add_hardware_profiles_arg(p)
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="served calibration (`boute calibrate --out FILE`): plan on the model "
                   "corrected by what the deployment served (default: the scenario's "
                   "profile.served_calibration, else none)")
    p.add_argument("--gpu-catalog", action="append", default=[], metavar="FILE")
    p.add_argument("--model-catalog", action="append", default=[], metavar="FILE")
    p.add_argument("--quality-records", default=None, metavar="FILE",
                   help="per-query eval records (Parquet or CSV with router_score, "
                   "quality_weak, quality_strong): the quality curve is computed exactly from "
                   "them instead of the task's published one")


def load_planning_problem(args: argparse.Namespace, threshold_tokens: int | None = None
                          ) -> Problem:
    """The CLI's scenario, catalog, budget and DB flags -> `planning_problem`."""
    from tuning import planning_problem

    return planning_problem(args.scenario, db=args.db, budget=args.budget, rate_rps=args.rate,
                            gpu_catalog=args.gpu_catalog, model_catalog=args.model_catalog,
                            hardware_profiles=args.hardware_profiles,
                            quality_records=args.quality_records, note=stderr_note,
                            threshold_tokens=threshold_tokens,
                            served_calibration=getattr(args, "calibration", None))


def add_solver_args(p: argparse.ArgumentParser, default: str = "auto",
                     choices: tuple[str, ...] = ("auto", "mobo", "exact", "random")) -> None:
    p.add_argument("--solver", default=default, choices=list(choices),
                   help="auto: the exact DP when it is estimated to finish within 2 s; with "
                   "one workload (K models, length classes) the level program (a MILP per "
                   "latency level, exact) when estimated within 6 CPU s; else mobo with a "
                   f"certificate (default: {default})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evals", type=int, default=None, help="mobo/random: evaluate exactly "
                   "this many plans (default: mobo stops when its acquisition's expected "
                   "hypervolume improvement, discounted by the share of its recent "
                   "expectations that came true, stays below 1e-3 of the hypervolume for 3 "
                   "BO steps, or at the time limit)")
    p.add_argument("--patience", type=int, default=None, help="mobo: stop after this many BO "
                   "steps without improving the front, instead of the acquisition rule (the "
                   "paper's rule; default: the acquisition rule)")
    p.add_argument("--time-limit-s", type=float, default=60.0, help="mobo/random: stop after "
                   "this many seconds of search, whatever the other rules (default 60)")


def stop_rule_from(args: argparse.Namespace) -> StopRule:
    """The `StopRule` of ``--evals`` / ``--patience`` / ``--time-limit-s``.

    Without ``--evals`` / ``--patience``: the acquisition rule (`tuning.StopRule`'s default);
    ``--patience`` replaces it; ``--time-limit-s`` caps either.

    Raises:
        BouteError: a value out of range (named, with the fix).

    """
    from tuning import StopRule

    if args.evals is not None:
        if args.evals < 1:
            raise BouteError(f"--evals={args.evals} must be >= 1")
        return StopRule.fixed(args.evals)
    if args.patience is not None and args.patience < 1:
        raise BouteError(f"--patience={args.patience} must be >= 1 BO step")
    if not (args.time_limit_s > 0 and math.isfinite(args.time_limit_s)):
        raise BouteError(f"--time-limit-s={args.time_limit_s} must be a positive number of "
                         "seconds")
    return StopRule(patience=args.patience, time_limit_s=args.time_limit_s)


def search_block(result: SearchResult, hypervolume: float | None = None) -> dict[str, Any]:
    """The ``search`` object of the JSON outputs.

    Which solver ran and why, its effort (``seconds``: the search's clock, without Ray's
    start-up, which ``ray_startup_s`` gives for Ray Tune runs), why it stopped, the last BO
    step's expected hypervolume improvement over the hypervolume (``last_ehvi_ratio``), the
    mean BO step times, and beyond the pair how far from optimal the answer can be
    (``certificate``, `tuning._certify.Certificate`).
    """
    out: dict[str, Any] = {"solver": result.solver, "reason": result.reason,
                           "objective": result.goal.mode, "evaluations": result.evaluations,
                           "seconds": result.seconds, "stopped": result.stopped}
    if result.startup_s is not None:
        out["ray_startup_s"] = result.startup_s
    if result.ehvi_ratio:
        out["last_ehvi_ratio"] = result.ehvi_ratio[-1]
    if hypervolume is not None:
        out["hypervolume"] = hypervolume
    if result.certificate is not None:
        out["certificate"] = result.certificate.to_dict()
    if result.step_seconds:
        keys = result.step_seconds[0].keys()
        out["bo_steps"] = len(result.step_seconds)
        out["bo_step_mean_s"] = {k: sum(t[k] for t in result.step_seconds)
                                 / len(result.step_seconds) for k in keys}
    return out


def format_plan(plan: Plan) -> str:
    """A readable table of one plan."""
    pr = plan.predicted
    rt = plan.routing
    if rt.is_ladder:
        lines = ["plan: routing shares per workload (" + " / ".join(rt.models) + ")"]
        for w in rt.workloads:
            lines.append(f"  {w.name:<10} {w.rate_rps:>8.2f} req/s  "
                         + " / ".join(f"{v:.4f}" for v in w.shares)
                         + f"  quality {w.quality:.3f}")
    else:
        lines = [f"plan: strong share {rt.strong_share:.4f}"]
    if pr is not None:
        norm = " (lowest normalized)" if len(rt.workloads) > 1 else ""
        lines.append(f"  quality {pr.quality:.3f}{norm}, P95 (every group) {pr.p95_s:.2f} s, "
                     f"system P95 {pr.system_p95_s:.2f} s, mean {pr.mean_s:.2f} s, "
                     f"${pr.cost_per_hour:.2f}/h, capacity {pr.capacity_rps:.1f} req/s")
        tokens = [f"{name} P95 (worst group) {v:.3f} s" for name, v in (
            ("TTFT", pr.ttft_p95_s), ("TPOT", pr.tpot_p95_s)) if v is not None]
        if pr.goodput is not None:
            tokens.append(f"goodput {100 * pr.goodput:.1f}% (fresh traces)")
        if tokens:
            lines.append("  " + ", ".join(tokens))
    lc = rt.length_classes
    if lc is not None:
        lines.append(f"  length classes: short = prompt + max_tokens <= {lc.threshold_tokens} "
                     "tokens (" + ", ".join(f"{w} {v[0]:.0%}" for w, v in lc.shares.items())
                     + " short)")
    cls = f"{'class':>7}" if lc is not None else ""
    lines.append(f"  {'model':<15}{'gpu':<14}{'tp':>3}{'pp':>3}{'replicas':>9}{'GPUs':>6}"
                 f"{'share':>8}{cls}")
    for g in plan.groups:
        lines.append(f"  {g.model:<15}{g.gpu:<14}{g.tp:>3}{g.pp:>3}{g.replicas:>9}"
                     f"{g.num_gpus:>6}{g.share:>8.3f}"
                     + ("" if g.length_class is None else f"{g.length_class:>7}"))
    return "\n".join(lines)


def add_token_args(p: argparse.ArgumentParser) -> None:
    """``--ttft-p95`` and ``--tpot-p95``: targets on time to first token / per output token."""
    p.add_argument("--ttft-p95", type=float, default=None, metavar="S",
                   help="maximum P95 time to first token, seconds: every replica group runs "
                   "at a rate whose TTFT P95 (perf DB) meets it")
    p.add_argument("--tpot-p95", type=float, default=None, metavar="S",
                   help="maximum P95 time per output token, seconds (e.g. 0.05)")


def token_targets(args: argparse.Namespace) -> tuple[float | None, float | None]:
    """``(--ttft-p95, --tpot-p95)``, each None when not given.

    Raises:
        BouteError: a value that is not a positive finite number of seconds (named, with
            the fix).

    """
    out = []
    for flag, value in (("--ttft-p95", args.ttft_p95), ("--tpot-p95", args.tpot_p95)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise BouteError(f"{flag}={value:g} must be a positive number of seconds (e.g. "
                             f"{flag} {'1' if flag == '--ttft-p95' else '0.05'}); leave it out "
                             "for no target")
        out.append(value)
    return out[0], out[1]
