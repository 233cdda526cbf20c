"""`boute plan`, `boute evaluate` and `boute compare`: the optimizer's commands."""

from __future__ import annotations

import argparse
import math
from typing import TYPE_CHECKING, Any

from boute._shared import add_hardware_profiles_arg, save_figure, stderr_note
from common.errors import BouteError

if TYPE_CHECKING:
    from tuning import Plan, Problem, SearchResult, StopRule, WindowSLO

__all__ = ["add_compare", "add_evaluate", "add_plan"]



def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", default=None, help="preset name or YAML file "
                   "(default: paper-gsm8k)")
    p.add_argument("--db", default=None, help="perf DB (default: build/perfdb-<scenario>."
                   "parquet; built when missing or stale)")
    p.add_argument("--budget", type=float, default=None, help="override the scenario's $/hour")
    p.add_argument("--rate", type=float, default=None, help="override the scenario's total "
                   "rate, req/s (several workloads: in the same proportions)")
    add_hardware_profiles_arg(p)
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
                            threshold_tokens=threshold_tokens)



# -- boute plan ----------------------------------------------------------------------------------
def add_plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute plan`."""
    p = sub.add_parser("plan", help="search routing + deployment plans")
    _common(p)
    p.add_argument("--quality", default=None, help="minimum quality; with several workloads "
                   "one per workload, NAME=Q,NAME=Q (e.g. math=89,chat=8.3)")
    p.add_argument("--p95", type=float, default=None, help="maximum P95 latency, seconds")
    p.add_argument("--objective", default="pareto",
                   choices=["pareto", "min-cost", "max-throughput"])
    p.add_argument("--slo-attainment", type=float, default=None, metavar="PCT",
                   help="a window SLO: the --p95 target must hold in at least PCT%% of "
                   "the --slo-window-s windows (judged on fresh traffic with the workload's "
                   "own arrivals), instead of over all requests")
    p.add_argument("--slo-window-s", type=float, default=300.0, metavar="SEC",
                   help="window of --slo-attainment, seconds (default 300)")
    _add_solver_args(p)
    p.add_argument("--resim-seeds", type=int, default=3, help="re-simulate the chosen plan "
                   "on this many fresh traces per group and re-plan with derated capacities "
                   "until it holds its P95 target (default 3; 0: no check)")
    p.add_argument("--tune", action="store_true", help="evaluate MOBO proposals as Ray Tune "
                   "trials in parallel")
    p.add_argument("--out", default="build/plan.json", help="plan JSON to write")
    p.add_argument("--plot", default="build/pareto.png", help="Pareto-front PNG ('' = none)")
    p.set_defaults(run=_run_plan)


def _add_solver_args(p: argparse.ArgumentParser, default: str = "auto",
                     choices: tuple[str, ...] = ("auto", "mobo", "exact", "random")) -> None:
    p.add_argument("--solver", default=default, choices=list(choices),
                   help="auto: the exact DP when it is estimated to finish within 2 s, else "
                   f"mobo (default: {default})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evals", type=int, default=None, help="mobo/random: evaluate exactly "
                   "this many plans (default: stop when the front is stable or at the time "
                   "limit)")
    p.add_argument("--patience", type=int, default=20, help="mobo: stop after this many BO "
                   "steps without improving the front (default 20)")
    p.add_argument("--time-limit-s", type=float, default=60.0, help="mobo/random: stop after "
                   "this many seconds of search (default 60)")


def stop_rule_from(args: argparse.Namespace) -> StopRule:
    """The `StopRule` of ``--evals`` / ``--patience`` / ``--time-limit-s``.

    Raises:
        BouteError: a value out of range (named, with the fix).

    """
    from tuning import StopRule

    if args.evals is not None:
        if args.evals < 1:
            raise BouteError(f"--evals={args.evals} must be >= 1")
        return StopRule.fixed(args.evals)
    if args.patience < 1:
        raise BouteError(f"--patience={args.patience} must be >= 1 BO step")
    if not (args.time_limit_s > 0 and math.isfinite(args.time_limit_s)):
        raise BouteError(f"--time-limit-s={args.time_limit_s} must be a positive number of "
                         "seconds")
    return StopRule(patience=args.patience, time_limit_s=args.time_limit_s)


def search_block(result: SearchResult, hypervolume: float | None = None) -> dict[str, Any]:
    """The ``search`` object of the JSON outputs.

    Which solver ran and why, its effort, why it stopped, and the mean BO step times.
    """
    out: dict[str, Any] = {"solver": result.solver, "reason": result.reason,
                           "objective": result.goal.mode, "evaluations": result.evaluations,
                           "seconds": result.seconds, "stopped": result.stopped}
    if hypervolume is not None:
        out["hypervolume"] = hypervolume
    if result.step_seconds:
        keys = result.step_seconds[0].keys()
        out["bo_steps"] = len(result.step_seconds)
        out["bo_step_mean_s"] = {k: sum(t[k] for t in result.step_seconds)
                                 / len(result.step_seconds) for k in keys}
    return out


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
    if args.resim_seeds < 0:
        raise BouteError(f"--resim-seeds={args.resim_seeds} must be >= 0 (0: no check)")
    options = PlanOptions(solver=args.solver, seed=args.seed, stop=stop_rule_from(args),
                          check_seeds=fresh_seeds(args.resim_seeds), tune=args.tune,
                          progress=not args.json, hardware_profiles=args.hardware_profiles)
    slo = window_slo(args)
    problem = load_planning_problem(args)
    quality, qualities = parse_quality(args.quality, problem.workloads)
    goal = Goal(args.objective, quality, args.p95, qualities, slo)
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
    payload: dict[str, Any] = {
        "front": front, "plan": plan.to_dict() if plan else None,
        "out": args.out if plan else None, "search": search_block(result, hv)}
    if args.plot and front:
        payload["plot"] = _plot(problem, front, plan, args.plot)
    if plan is None:
        payload["error"] = _no_plan_message(goal, problem)
    elif held.checks:
        payload["headroom"] = held.summary()

    def human() -> str:
        lines = [f"{result.solver}: {result.evaluations} evaluations in {result.seconds:.2f} s, "
                 f"hypervolume {hv:.4f}; stopped: {result.stopped}",
                 f"solver {result.solver}: {result.reason}",
                 "Pareto front (quality vs planning P95, under "
                 f"${problem.budget:g}/h):",
                 f"{'quality':>9}{'strong':>8}{'P95 s':>8}{'$/h':>8}"]
        for r in front:
            lines.append(f"{r['quality']:>9.3f}{r['strong_share']:>8.3f}{r['p95_s']:>8.2f}"
                         f"{r['cost_per_hour']:>8.2f}")
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
    if "slo" in h:
        slo = h["slo"]
        head += (f"\nSLO: P95 <= {worst['target_s']:g} s in >= {100 * slo['attainment']:g}% "
                 f"of {slo['window_s']:g} s windows; predicted attainment "
                 f"{100 * slo['predicted_attainment']:.1f}% (worst group, worst fresh trace)")
    return head


def _no_plan_message(goal: Any, problem: Problem) -> str:
    quality = (goal.quality if goal.qualities is None else
               dict(zip(problem.workloads, goal.qualities, strict=True)))
    return (f"no plan meets the goal ({goal.mode}, quality >= {quality}, P95 <= "
            f"{goal.p95_s} s, budget ${problem.budget:g}/h); relax a target or the budget")


def _front_rows(problem: Problem, result: SearchResult) -> list[dict[str, float]]:
    import numpy as np

    mask = result.front_mask(problem)
    idx = np.flatnonzero(mask)
    m = result.metrics
    idx = idx[np.argsort(m.quality[idx])]
    return [{"p95_s": float(m.p95_s[i]), "quality": float(m.quality[i]),
             "cost_per_hour": float(m.cost_per_hour[i]),
             "strong_share": float(result.plans.strong_share[i])} for i in idx]


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


# -- boute evaluate ------------------------------------------------------------------------------
def add_evaluate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute evaluate`."""
    p = sub.add_parser("evaluate", help="predicted metrics of a plan file")
    p.add_argument("plan", help="plan JSON")
    _common(p)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from tuning import Plan, evaluate_plan

    plan = Plan.load(args.plan)
    if args.scenario is None and plan.scenario.get("name"):
        from profiling import list_presets

        if plan.scenario["name"] in list_presets():
            args.scenario = plan.scenario["name"]
    lc = plan.routing.length_classes
    problem = load_planning_problem(args, None if lc is None else lc.threshold_tokens)
    evaluated = evaluate_plan(problem, plan)

    from boute._shared import emit

    emit(args, evaluated.to_dict(), lambda: format_plan(evaluated))
    return 0


# -- boute compare -------------------------------------------------------------------------------
def add_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute compare`."""
    p = sub.add_parser("compare", help="cheapest $/hour per baseline and BOute (Table 3)")
    _common(p)
    p.add_argument("--targets", default=None, help="Q:SEC,... (default: the scenario's)")
    _add_solver_args(p, choices=("auto", "mobo", "exact"))
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
    from tuning._reproduce import compare_targets

    problem = load_planning_problem(args)
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
    payload = {"scenario": problem.scenario.name, "solver": args.solver, "targets": columns}
    if not problem.is_pair:
        payload["not_applicable"] = ["RouteLLM-uniform"]

    def human() -> str:
        width = 16 if problem.is_pair else 18
        head = f"{'system':<20}" + "".join(f"{_target_text(*c):>{width}}" for c in targets)
        lines = [f"cheapest $/hour meeting (quality, P95) on {problem.scenario.name} "
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
