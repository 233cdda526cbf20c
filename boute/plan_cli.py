"""`boute plan`: search routing + deployment plans for a goal (`tuning.choose_plan`)."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from boute._planning import (
    add_planning_args,
    add_solver_args,
    add_token_args,
    format_plan,
    load_planning_problem,
    search_block,
    stop_rule_from,
    token_targets,
)
from boute._shared import save_figure, stderr_note
from common.errors import BouteError

if TYPE_CHECKING:
    from tuning import Plan, Problem, SearchResult, WindowSLO

__all__ = ["add_plan", "parse_quality", "window_slo"]


# -- boute plan ----------------------------------------------------------------------------------
def add_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute plan`."""
    p = sub.add_parser("plan", help="search routing + deployment plans")
    add_planning_args(p)
    p.add_argument("--quality", default=None, help="minimum quality; with several workloads "
                   "one per workload, NAME=Q,NAME=Q (e.g. math=89,chat=8.3)")
    p.add_argument("--p95", type=float, default=None, help="maximum P95 latency, seconds")
    add_token_args(p)
    p.add_argument("--objective", default="pareto",
                   choices=["pareto", "min-cost", "max-throughput"])
    p.add_argument("--slo-attainment", type=float, default=None, metavar="PCT",
                   help="a window SLO: the --p95 target must hold in at least PCT%% of "
                   "the --slo-window-s windows (judged on fresh traffic with the workload's "
                   "own arrivals), instead of over all requests")
    p.add_argument("--slo-window-s", type=float, default=300.0, metavar="SEC",
                   help="window of --slo-attainment, seconds (default 300)")
    add_solver_args(p)
    p.add_argument("--resim-seeds", type=int, default=3, help="re-simulate the chosen plan "
                   "on this many fresh traces per group and re-plan with derated capacities "
                   "until it holds its P95 target (default 3; 0: no check)")
    p.add_argument("--disaggregate", action="store_true", help="also consider prefill/decode "
                   "pool pairs per model (tuning.PdPlanner; min-cost for --quality, "
                   "--ttft-p95 and --tpot-p95 under the budget; one workload, two models, no "
                   "length classes); the plan is checked on --resim-seeds fresh traces and "
                   "re-planned with derated rates until it holds")
    p.add_argument("--tune", action="store_true", help="evaluate MOBO proposals as Ray Tune "
                   "trials in parallel")
    p.add_argument("--address", default=None, metavar="ADDR", help="with --tune: use the "
                   "running Ray cluster at ADDR (e.g. 127.0.0.1:6379 or auto), neither started "
                   "nor stopped; its connection time is reported apart from the search's "
                   "(default: start a local Ray for the search)")
    p.add_argument("--out", default="build/plan.json", help="plan JSON to write")
    p.add_argument("--plot", default="build/pareto.png", help="Pareto-front PNG ('' = none)")
    p.set_defaults(run=_run_plan)


def parse_quality(text: str | None, workloads: tuple[str, ...]
                  ) -> tuple[float | None, tuple[float, ...] | None]:
    """``--quality``: one number, or ``NAME=Q,...`` with one quality per workload.

    Raises:
        BouteError: not a number, unknown or missing workload names (named, with the fix).

    """
    from common.pairs import parse_pairs

    if text is None:
        return None, None
    if "=" not in text:
        try:
            value = float(text)
        except ValueError:
            raise BouteError(f"--quality={text!r} must be a number, or NAME=Q,... per "
                             "workload") from None
        if len(workloads) > 1:
            raise BouteError(f"--quality={text}: the scenario has workloads "
                             f"{', '.join(workloads)}; give one quality each, e.g. "
                             + ",".join(f"{w}=Q" for w in workloads))
        return value, None
    pairs = parse_pairs(text.split(","), "--quality item")
    if sorted(pairs) != sorted(workloads):
        raise BouteError(f"--quality={text!r} names {sorted(pairs)}; the scenario's workloads "
                         f"are {list(workloads)}: give one quality each")
    try:
        values = tuple(float(pairs[w]) for w in workloads)
    except ValueError:
        raise BouteError(f"--quality={text!r}: each quality must be a number") from None
    return (values[0], None) if len(workloads) == 1 else (None, values)


def _run_plan(args: argparse.Namespace) -> int:
    from profiling import load_catalog
    from tuning import Goal, PlanOptions, choose_plan, fresh_seeds

    if args.p95 is not None and not args.p95 > 0:
        raise BouteError(f"--p95={args.p95} must be > 0 seconds")
    ttft_p95_s, tpot_p95_s = token_targets(args)
    if args.resim_seeds < 0:
        raise BouteError(f"--resim-seeds={args.resim_seeds} must be >= 0 (0: no check)")
    options = PlanOptions(solver=args.solver, seed=args.seed, stop=stop_rule_from(args),
                          check_seeds=fresh_seeds(args.resim_seeds), tune=args.tune,
                          tune_address=args.address,
                          progress=not args.json, hardware_profiles=args.hardware_profiles)
    slo = window_slo(args)
    problem = load_planning_problem(args)
    quality, qualities = parse_quality(args.quality, problem.workloads)
    goal = Goal(args.objective, quality, args.p95, qualities, slo, ttft_p95_s, tpot_p95_s)
    if args.disaggregate:
        return _run_disaggregated(args, problem, goal, fresh_seeds(args.resim_seeds))
    _note_daily_profiles(problem)
    chosen = choose_plan(problem, goal, options,
                         with_threshold=lambda tau: load_planning_problem(args, tau),
                         catalog=load_catalog(args.gpu_catalog, args.model_catalog))
    problem, result, held, lengths, plan = (chosen.problem, chosen.result, chosen.held,
                                            chosen.lengths, chosen.plan)
    if plan is not None:
        plan.save(args.out)
    front = _front_rows(problem, result)
    hv = result.hypervolume(problem)
    from profiling import model_source, model_source_line

    source = model_source(problem.db.meta)
    if source["served_calibration"] and source["served_calibration"]["stale"]:
        stderr_note(model_source_line(source))
    payload: dict[str, Any] = {
        "front": front, "plan": plan.to_dict() if plan else None,
        "out": args.out if plan else None, "search": search_block(result, hv),
        "model": source}
    if args.plot and front:
        payload["plot"] = _plot(problem, front, plan, args.plot)
    if plan is None:
        payload["error"] = _no_plan_message(goal, problem)
    elif held.checks:
        payload["headroom"] = held.summary()

    def human() -> str:
        ray_s = ("" if result.startup_s is None else
                 f" (after {result.startup_s:.2f} s of Ray start-up)")
        lines = [f"{result.solver}: {result.evaluations} evaluations in {result.seconds:.2f} s"
                 f"{ray_s}, hypervolume {hv:.4f}; stopped: {result.stopped}",
                 f"solver {result.solver}: {result.reason}",
                 *([result.certificate.line()] if result.certificate is not None else []),
                 "Pareto front (quality vs planning P95, under "
                 f"${problem.budget:g}/h):",
                 f"{'quality':>9}{'strong':>8}{'P95 s':>8}{'$/h':>8}"]
        for r in front:
            lines.append(f"{r['quality']:>9.3f}{r['strong_share']:>8.3f}{r['p95_s']:>8.2f}"
                         f"{r['cost_per_hour']:>8.2f}")
        lines.append(model_source_line(source))
        lines.append("")
        lines.append(format_plan(plan) if plan else payload["error"])
        if plan and held.checks:
            lines.append(_headroom_line(held.summary()))
        if lengths is not None:
            lines.append(_lengths_line(lengths.summary()))
        if plan:
            lines.append(f"plan written to {args.out}")
        if "plot" in payload:
            lines.append(f"Pareto plot: {payload['plot']}")
        return "\n".join(lines)

    from boute._shared import emit

    emit(args, payload, human)
    return 0 if plan else 1


def _run_disaggregated(args: argparse.Namespace, problem: Problem, goal: Any,
                       seeds: tuple[int, ...]) -> int:
    """``--disaggregate``: `tuning.plan_disaggregated`, printed with roles and TTFT/TPOT."""
    from profiling import load_catalog
    from tuning import plan_disaggregated, refuse_disaggregate

    refuse_disaggregate(problem, goal)
    from tuning import Goal

    goal = Goal("min-cost", goal.quality, None, None, None, goal.ttft_p95_s, goal.tpot_p95_s)
    plan, held = plan_disaggregated(problem, goal, load_catalog(args.gpu_catalog,
                                                                args.model_catalog),
                                    seeds=seeds)
    plan.save(args.out)
    payload: dict[str, Any] = {"plan": plan.to_dict(), "out": args.out,
                               "disaggregation": plan.extra["disaggregation"]}

    def human() -> str:
        assert plan.predicted is not None
        p = plan.predicted
        lines = [f"P/D plan (min-cost, quality >= {goal.quality:g}, TTFT P95 <= "
                 f"{goal.ttft_p95_s:g} s, TPOT P95 <= {goal.tpot_p95_s:g} s, budget "
                 f"${problem.budget:g}/h): ${p.cost_per_hour:.2f}/h, strong share "
                 f"{plan.routing.strong_share:.3f}, quality {p.quality:.3f}"]
        for g in plan.groups:
            role = {"prefill": "prefill pool", "decode": "decode pool"}.get(g.role or "",
                                                                           "co-located")
            lines.append(f"  {g.replicas}x {g.model} on {g.gpu} tp{g.tp} pp{g.pp}  "
                         f"[{role}] share {g.share:.3f}")
        if held.checks:
            lines.append(f"fresh traffic ({len(seeds)} traces): "
                         f"{'holds' if held.holds else 'DOES NOT HOLD'}; predicted TTFT P95 "
                         f"{p.ttft_p95_s:.3f} s, TPOT P95 {1e3 * (p.tpot_p95_s or 0):.1f} ms "
                         "(worst model, worst trace)")
            if held.rounds > 1:
                missed = [f"${c:.2f}/h missed ("
                          + ", ".join(m for m, v in chk.items() if not v["holds"]) + ")"
                          for c, chk in zip(held.costs[:-1], held.checks[:-1], strict=True)]
                lines.append(f"re-planned {held.rounds - 1} time(s) with derated rates "
                             f"({'; '.join(missed)}): "
                             + ", ".join(f"{k} x{v:g}" for k, v in held.factors.items()))
        lines.append(f"plan written to {args.out}")
        return "\n".join(lines)

    from boute._shared import emit

    emit(args, payload, human)
    return 0 if held.holds else 1


def _note_daily_profiles(problem: Problem) -> None:
    """Say so when a workload's rate moves over the day: one plan is sized for one rate."""
    from profiling import daily_curve

    for wl in problem.scenario.named_workloads:
        if wl.daily_profile is not None:
            peak = float(daily_curve(wl.daily_profile).max()) * wl.rate_rps
            stderr_note(f"workload {wl.name!r} has a daily_profile: this plan is sized for "
                        f"its mean rate_rps={wl.rate_rps:g} and misses its peak of "
                        f"{peak:.3g} req/s; plan the day with `boute schedule`, or pass "
                        f"--rate {peak:.3g} for one plan that holds all day")


def window_slo(args: argparse.Namespace) -> WindowSLO | None:
    """The `WindowSLO` of ``--slo-attainment`` / ``--slo-window-s`` (None without them).

    Raises:
        BouteError: a share outside (0, 100], a window not > 0, or no ``--p95`` to hold.

    """
    from tuning import WindowSLO

    if args.slo_attainment is None:
        return None
    if not (0 < args.slo_attainment <= 100):
        raise BouteError(f"--slo-attainment={args.slo_attainment:g} must be a percentage of "
                         "windows in (0, 100], e.g. 99")
    if not (args.slo_window_s > 0 and math.isfinite(args.slo_window_s)):
        raise BouteError(f"--slo-window-s={args.slo_window_s:g} must be a positive number "
                         "of seconds")
    if args.p95 is None:
        raise BouteError("--slo-attainment needs --p95: the latency each window's P95 must "
                         "meet")
    return WindowSLO(args.slo_attainment / 100.0, args.slo_window_s)


def _lengths_line(summary: dict[str, Any]) -> str:
    """One line per threshold tried (`tuning._lengths.choose`)."""
    lines = ["length classes (threshold = prompt + max_tokens):"]
    for t in summary["tries"]:
        chosen = "  <- chosen" if t["threshold_tokens"] == summary[
            "chosen_threshold_tokens"] else ""
        cost = ("no plan" if t["cost_per_hour"] is None else f"${t['cost_per_hour']:.2f}/h")
        if t.get("error"):
            cost = f"skipped: {t['error']}"
        what = ("no classes" if t["threshold_tokens"] is None else
                f"<= {t['threshold_tokens']} tokens short")
        holds = "" if t["holds"] is None else ("" if t["holds"] else " (does not hold)")
        lines.append(f"  {what:<26}{cost}{holds}{chosen}")
    return "\n".join(lines)


def _headroom_line(h: dict[str, Any]) -> str:
    worst = h["worst"]
    head = (f"headroom: {'holds' if h['holds'] else 'DOES NOT HOLD'} on {len(h['seeds'])} "
            f"fresh traces per group (worst: {worst['group']} P95 {worst['p95_s']:.2f} s vs "
            f"{worst['target_s']:.2f} s)")
    if h["derated"]:
        head += (f"; re-planned {h['rounds'] - 1} time(s) with derated "
                 f"{', '.join(h['derated'])}")
    if "tokens" in h:
        t = h["tokens"]
        parts = [f"TTFT P95 {t['worst_ttft_p95_s']:.3f} s vs {t['ttft_target_s']:g} s"
                 ] if t["ttft_target_s"] is not None else []
        if t["tpot_target_s"] is not None:
            tpot = t["worst_tpot_p95_s"]
            parts.append(f"TPOT P95 {'n/a' if tpot is None else f'{tpot:.4f}'} s vs "
                         f"{t['tpot_target_s']:g} s")
        head += (f"\ntokens (worst group, worst fresh trace): {', '.join(parts)}; goodput "
                 f"{100 * t['goodput']:.1f}% of requests meet every target")
    if "slo" in h:
        slo = h["slo"]
        head += (f"\nSLO: P95 <= {worst['target_s']:g} s in >= {100 * slo['attainment']:g}% "
                 f"of {slo['window_s']:g} s windows; predicted attainment "
                 f"{100 * slo['predicted_attainment']:.1f}% (worst group, worst fresh trace)")
    return head


def _no_plan_message(goal: Any, problem: Problem) -> str:
    quality = (goal.quality if goal.qualities is None else
               dict(zip(problem.workloads, goal.qualities, strict=True)))
    tokens = "".join(f", {name} P95 <= {v:g} s" for name, v in (
        ("TTFT", goal.ttft_p95_s), ("TPOT", goal.tpot_p95_s)) if v is not None)
    return (f"no plan meets the goal ({goal.mode}, quality >= {quality}, P95 <= "
            f"{goal.p95_s} s{tokens}, budget ${problem.budget:g}/h); relax a target or the "
            "budget")


def _front_rows(problem: Problem, result: SearchResult) -> list[dict[str, float]]:
    import numpy as np

    mask = result.front_mask(problem)
    idx = np.flatnonzero(mask)
    m = result.metrics
    idx = idx[np.argsort(m.quality[idx])]
    return [{"p95_s": float(m.p95_s[i]), "quality": float(m.quality[i]),
             "cost_per_hour": float(m.cost_per_hour[i]),
             "strong_share": float(result.plans.strong_share[i])} for i in idx]


def _plot(problem: Problem, front: list[dict[str, float]], plan: Plan | None, path: str
          ) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step([r["p95_s"] for r in front], [r["quality"] for r in front], where="post",
            marker="o", ms=3, label="Pareto front")
    if plan is not None and plan.predicted is not None:
        ax.scatter([plan.predicted.p95_s], [plan.predicted.quality], color="red", zorder=3,
                   label="chosen plan")
    ax.set_xscale("log")
    ax.set_xlabel("P95 latency every replica group meets (s)")
    ax.set_ylabel(f"quality ({problem.scenario.task})")
    ax.set_title(f"{problem.scenario.name}: ${problem.budget:g}/h, "
                 f"{problem.rate_rps:g} req/s")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=120)


