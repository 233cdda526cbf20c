"""`boute trace`: summarize, rescale or convert a trace (lengths, rate, burstiness), plot it.

A trace with sharing columns (``prefix_id``, ``prefix_tokens``, ``session_id``, ``turn``),
read from a file or generated with ``--apps``/``--turns``, also reports its prefix-reuse
potential: the share of prompt tokens a perfect prefix cache would skip.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

from boute._shared import (
    check_requests,
    emit,
    save_figure,
)
from common.errors import BouteError
from common.pairs import parse_pairs

__all__ = ["add_trace"]


# -- boute trace ---------------------------------------------------------------------------------
def add_trace(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute trace`."""
    p = sub.add_parser("trace", help="summarize a trace file or a generated trace: lengths, "
                       "rate and burstiness")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="CSV, JSONL or Parquet trace")
    src.add_argument("--shape", help="generate: gsm8k, mtbench, sharegpt")
    p.add_argument("--columns", default="", help="column mapping ours=theirs,... "
                   "(arrival_s, input_tokens, output_tokens, prompt)")
    p.add_argument("--time-unit", default="auto", choices=["auto", "s", "ms", "us", "ns"],
                   help="unit of a numeric arrival column (auto: seconds, or an epoch clock "
                   "detected by magnitude); datetimes are read as such")
    p.add_argument("--rate", type=float, default=None, help="rescale (or generate) to req/s")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--arrival", default="poisson", choices=["poisson", "gamma"])
    p.add_argument("--cv", type=float, default=1.0, help="burstiness of gamma arrivals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--apps", type=int, default=None, help="generate conversations of this "
                   "many applications, each with a shared system prompt (prefix caching)")
    p.add_argument("--system-tokens", type=float, default=1000.0, help="with --apps/--turns: "
                   "mean system prompt length, tokens")
    p.add_argument("--turns", type=float, default=None, help="generate multi-turn "
                   "conversations of this many turns on average (each prompt holds the "
                   "history)")
    p.add_argument("--think-s", type=float, default=30.0, help="with --turns: mean seconds "
                   "between two turns")
    p.add_argument("--out", default=None, help="write the (rescaled) trace; the format follows "
                   "the suffix: .parquet, .csv or .jsonl")
    p.add_argument("--plot", default=None, metavar="PNG", help="plot the request rate over "
                   "time (per 10 s and per minute) to this PNG")
    p.set_defaults(run=_run_trace)


def _run_trace(args: argparse.Namespace) -> int:
    from profiling import generate_trace, read_trace

    if args.rate is not None and not (args.rate > 0 and math.isfinite(args.rate)):
        raise BouteError(f"--rate={args.rate:g} must be a number of requests/s > 0")
    if not (args.cv > 0 and math.isfinite(args.cv)):
        raise BouteError(f"--cv={args.cv:g} must be a number > 0 (1 = Poisson)")
    notes: list[str] = []
    if args.file:
        mapping = parse_pairs(args.columns.split(","), "--columns item")
        trace, report = read_trace(args.file, columns=mapping, time_unit=args.time_unit)
        notes = report.notes()
        if args.rate is not None:
            trace = trace.scaled_to(args.rate)
    elif args.apps is not None or args.turns is not None:
        from profiling import PrefixSpec, generate_shared_trace

        check_requests(args.requests, "--requests")
        if args.arrival != "poisson":
            raise BouteError("--apps/--turns generate conversations with poisson arrivals; "
                             "drop --arrival")
        spec = PrefixSpec(apps=1 if args.apps is None else args.apps,
                          system_tokens=args.system_tokens if args.apps is not None else 0.0,
                          turns=1.0 if args.turns is None else args.turns, think_s=args.think_s)
        trace = generate_shared_trace(args.shape, spec,
                                      rate_rps=1.0 if args.rate is None else args.rate,
                                      num_requests=args.requests, seed=args.seed)
    else:
        check_requests(args.requests, "--requests")
        trace = generate_trace(args.shape, rate_rps=1.0 if args.rate is None else args.rate,
                               num_requests=args.requests, arrival=args.arrival,
                               burstiness_cv=args.cv, seed=args.seed)
    if args.out:
        trace.save(args.out)
    plot = _plot_rate(trace, args.plot) if args.plot else None
    burst = trace.burstiness()
    reuse = trace.prefix_reuse()

    def human() -> str:
        lines = [trace.format_summary()]
        if burst:
            lines.append("burstiness: " + ", ".join(
                f"count CV per {k.removeprefix('count_cv_')} {v:.2f}"
                for k, v in burst.items() if k.startswith("count_cv_"))
                + (f"; busiest minute {burst['minute_peak_to_mean']:.2f}x the mean, "
                   f"quietest {burst['minute_trough_to_mean']:.2f}x"
                   if "minute_peak_to_mean" in burst else ""))
        if reuse is not None:
            lines.append(f"prefix reuse: a perfect cache would skip {reuse['potential']:.1%} "
                         f"of prompt tokens ({reuse['system_share']:.1%} from system prompts; "
                         f"{int(reuse['apps'])} applications, {int(reuse['sessions'])} "
                         "conversations)")
        lines += [f"note: {n}" for n in notes]
        if plot:
            lines.append(f"rate plot: {plot}")
        return "\n".join(lines)

    emit(args, {"name": trace.name, **trace.summary(), "burstiness": burst,
                "prefix_reuse": reuse, "notes": notes,
                "plot": plot, "fingerprint": trace.fingerprint()}, human)
    return 0


def _plot_rate(trace: Any, path: str) -> str:
    """The request rate per 10 s and per minute over the trace's time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not path.lower().endswith(".png"):
        raise BouteError(f"--plot={path!r} must name a .png file")
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for window_s, style in ((10.0, "-"), (60.0, "-o")):
        counts = trace.window_counts(window_s)
        if counts.size:
            t_min = (np.arange(counts.size) + 0.5) * window_s / 60.0
            ax.plot(t_min, counts / window_s, style, ms=3, lw=1,
                    label=f"per {window_s:g} s")
    ax.axhline(trace.rate_rps, color="grey", ls="--", lw=1, label="mean")
    ax.set_xlabel("time since the first request (min)")
    ax.set_ylabel("requests/s")
    ax.set_title(f"{trace.name}: {len(trace)} requests")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=110)
