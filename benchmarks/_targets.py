"""Benchmark targets: one table per script, overridable per run, checked and reported alike.

Every benchmark in this folder declares its targets once, as a ``TARGETS`` mapping of
`Target` rows next to its docstring, and ends the same way:

    rows = check(resolve(TARGETS, args.target), measured, flags)
    print_checks(rows)
    payload["targets"] = rows          # the block benchmarks/run_all.py reads
    return 0 if passed(rows) else 1

``--target KEY=VALUE`` (repeatable; `add_target_argument`) replaces one target's value for
one run, so a deliberately impossible target shows the exit code without editing code:
``python benchmarks/calibration.py --target tput_median=0.001`` exits 1. Pass/fail checks
that are not a number against a bound (a replan job's decision, say) are ``flags``: reported
in the same block, not overridable.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

Op = Literal["<=", ">="]


@dataclass(frozen=True)
class Target:
    """A bound on one measured figure.

    Attributes:
        op: ``"<="`` (the figure must not exceed ``value``) or ``">="``.
        value: The bound, in the figure's unit.
        unit: The unit, for the printed table ("ms", "req/s", "" for ratios).
        what: One line saying what is measured.

    """

    op: Op
    value: float
    unit: str
    what: str

    def met(self, measured: float | None) -> bool:
        """Whether ``measured`` meets the bound; a missing or NaN figure never does."""
        if measured is None or math.isnan(measured):
            return False
        return measured <= self.value if self.op == "<=" else measured >= self.value


def add_target_argument(parser: argparse.ArgumentParser, targets: Mapping[str, Target]) -> None:
    """Add ``--target KEY=VALUE`` (repeatable) naming the keys of ``targets`` in its help."""
    parser.add_argument("--target", action="append", default=[], metavar="KEY=VALUE",
                        help="override one target for this run (keys: "
                             + ", ".join(targets) + ")")


def resolve(targets: Mapping[str, Target], overrides: Sequence[str]) -> dict[str, Target]:
    """The targets with ``KEY=VALUE`` overrides applied.

    Args:
        targets: The script's ``TARGETS``.
        overrides: ``["KEY=VALUE", ...]`` from ``--target``.

    Returns:
        A new mapping; ``targets`` is not changed.

    Raises:
        SystemExit: (code 2) for an unknown key or a value that is not a number, with the
            keys that exist.

    """
    out = dict(targets)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or key not in out:
            raise SystemExit(f"--target {item!r}: use KEY=VALUE with KEY one of "
                             f"{', '.join(out)}")
        try:
            value = float(text)
        except ValueError:
            raise SystemExit(f"--target {item!r}: {text!r} is not a number") from None
        out[key] = replace(out[key], value=value)
    return out


def check(targets: Mapping[str, Target], measured: Mapping[str, float | None],
          flags: Mapping[str, bool] | None = None) -> list[dict[str, Any]]:
    """One row per target and per flag: what was measured, the bound and whether it was met.

    Args:
        targets: Resolved targets (`resolve`).
        measured: The figure of every target key (None: not measured, which fails).
        flags: Pass/fail checks without a numeric bound, by description.

    Returns:
        Rows ``{"key", "what", "measured", "op", "target", "unit", "ok"}``; a flag's row has
        ``op`` ``"is"`` and ``target`` True.

    Raises:
        KeyError: when ``measured`` lacks a target's key (a bug in the script).

    """
    rows: list[dict[str, Any]] = []
    for key, t in targets.items():
        value = measured[key]
        rows.append({"key": key, "what": t.what, "measured": value, "op": t.op,
                     "target": t.value, "unit": t.unit, "ok": t.met(value)})
    for what, ok in (flags or {}).items():
        rows.append({"key": what, "what": what, "measured": bool(ok), "op": "is",
                     "target": True, "unit": "", "ok": bool(ok)})
    return rows


def passed(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every row was met."""
    return all(r["ok"] for r in rows)


def fmt_value(value: Any) -> str:
    """A figure for a table: 4 significant digits, "-" when missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_checks(rows: Sequence[Mapping[str, Any]]) -> None:
    """Print one PASS/MISS line per row."""
    print("\ntargets:")
    for r in rows:
        bound = "" if r["op"] == "is" else (f" (measured {fmt_value(r['measured'])}"
                                            f"{' ' + r['unit'] if r['unit'] else ''}, target "
                                            f"{r['op']} {fmt_value(r['target'])})")
        what = "" if r["op"] == "is" else f": {r['what']}"
        print(f"{'PASS' if r['ok'] else 'MISS'}  {r['key']}{what}{bound}")
