"""Threshold poisoning: one API key's burst of high-scoring prompts against another key's share.

Issue 31's probe, replayed at the Dispatcher level (no HTTP, no Serve; fake engines that
answer at once; the router's clock is virtual, so 10 minutes of traffic take seconds):

    python benchmarks/poisoning.py [--json build/poisoning_bench.json] [--no-copy]
                                   [--target KEY=VALUE]

* key B sends its fixed set of 500 prompts (mixed everyday text, scored by the built-in
  router) in a loop at 4 requests/s: 2,500 requests (about 10 minutes) before the attack;
* key A then sends 2,000 cheap requests (``max_tokens`` 1) with prompts that score 0.96-0.98
  (step-by-step math and code) in 8 s, while B goes on (32 requests);
* B goes on for 8 minutes more (1,920 requests).

The plan's strong share is 0.5. Reported for isolation off (the router before issue 31) and
on (`app.isolation`'s defaults): B's strong share of its own prompt set at the live
threshold before the attack (the mean over its last minute), its lowest during and after
(from the first recalibration with A's scores in the window), and at 1, 4 and 8 minutes after;
the share of B's requests served by the strong model per phase; the threshold before and its
highest; and the bound ``y(a, s, kappa)`` the isolation states (`Isolation.bound`).

Targets (`TARGETS`): with isolation, B's share of its set never drops more than the stated
bound plus kappa (B's own deficit term, which it has without A too) below its share before,
nor does the share of B's requests served strong (the 8 minutes after against the 10
before); without isolation the same attack moves B by more than that (a flag).
Prints a table, writes JSON (benchmarks/data/poisoning.json unless ``--no-copy``), exits 1
when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _results import write_results
from _targets import Target, add_target_argument, check, passed, print_checks, resolve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.calls import Call
from app.dispatch import Dispatcher
from app.isolation import Isolation
from app.openai_api import completion
from app.router_config import RouterConfig
from app.routing import BuiltinRouter

WEAK, STRONG, SHARE = "llama-3.1-8b", "llama-3.1-70b", 0.5
B_RPS, BEFORE, BURST, BURST_S, AFTER_S = 4.0, 2500, 2000, 8.0, 480.0
TARGETS = {
    "isolated_drop_over_bound": Target(
        "<=", 1.0, "", "B's largest set-share drop with isolation / (bound y + kappa)"),
    "isolated_served_drop_over_bound": Target(
        "<=", 1.0, "", "drop of B's requests served strong (before -> after) with isolation "
        "/ (bound y + kappa)"),
}


class _Engines:
    """Fake engines: every call answers at once."""

    def call(self, group: str, kind: str, body: dict[str, Any]) -> Any:
        async def answer() -> Any:
            return completion(kind, body["model"], "ok", 3, 1)

        class Pending:
            def __await__(self) -> Any:
                return answer().__await__()

            def cancel(self) -> None:
                pass
        return Pending()

    def stream(self, group: str, kind: str, body: dict[str, Any]) -> Any:
        raise NotImplementedError("not streamed here")


class _Recorder:
    """Counts the fast / clamped threshold moves; drops the rest."""

    def __init__(self) -> None:
        self.fast = 0

    def observe(self, **_: Any) -> None: ...

    def retry(self, group: str) -> None: ...

    def degraded(self, model: str) -> None: ...

    def group_state(self, group: str, state: str) -> None: ...

    def routing_state(self, routed_share: float | None, target: float,
                      threshold: float) -> None: ...

    def threshold_guard(self, workload: str | None, wanted: float, moved: float) -> None:
        self.fast += 1


def prompts() -> tuple[list[str], list[str]]:
    """B's fixed set (500 everyday prompts) and A's 2,000 high-scoring ones (seeded)."""
    rng = np.random.default_rng(0)
    words = ["apple", "train", "cost", "river", "price", "the", "of", "a", "city", "history",
             "write", "poem", "summary", "explain", "why", "2", "+"]
    b = [" ".join(rng.choice(words, size=int(rng.integers(3, 80)))) for _ in range(500)]
    a = [f"Explain step by step why {i} * 23 + {i % 7} = {i * 23 + i % 7} and {i}^2 - 4 = "
         f"{i * i - 4}; prove it, derive the general formula, then calculate how many steps "
         f"{i} + 1 / 3 takes; write def f(x): return x * {i}; and compare." for i in range(BURST)]
    return b, a


def replay(isolation: bool) -> dict[str, Any]:
    """The attack through a Dispatcher (isolation on or off); B's shares over time."""
    now = [0.0]
    rec = _Recorder()
    d = Dispatcher(_Engines(), rec, clock=lambda: now[0])
    d.reconfigure(RouterConfig.parse({
        "weak": WEAK, "strong": STRONG, "strong_share": SHARE, "router": "builtin",
        "shares": {WEAK: {"w": 1.0}, STRONG: {"s": 1.0}},
        "settings": {"tenant_isolation": isolation}}), {"w", "s"})
    scorer = BuiltinRouter()
    b_prompts, a_prompts = prompts()
    b_scores = np.array([scorer.calculate_strong_win_rate(p) for p in b_prompts])
    served: dict[str, list[bool]] = {"before": [], "during": [], "after": []}
    timeline: list[tuple[float, float, float, int]] = []    # (t, threshold, B's share, #cal)
    i = 0

    async def one(key: str, prompt: str) -> bool:
        call = Call("chat", time.time(), time.perf_counter(), key_id=key)
        body = {"model": "auto", "max_tokens": 1,
                "messages": [{"role": "user", "content": prompt}]}
        reply = await d.dispatch(call, body)
        return bool(reply.headers["x-boute-model"] == STRONG)

    def note() -> None:
        assert d.pair is not None
        th = d.pair.threshold
        timeline.append((now[0], th, float(np.mean(b_scores >= th)),
                         d.pair.guard.recalibrations))

    async def b(phase: str) -> None:
        nonlocal i
        served[phase].append(await one("key-b", b_prompts[i % len(b_prompts)]))
        i += 1
        note()

    async def go() -> None:
        for _ in range(BEFORE):
            await b("before")
            now[0] += 1.0 / B_RPS
        every = round(BURST / (B_RPS * BURST_S))
        for j, p in enumerate(a_prompts):
            await one("key-a", p)
            note()
            now[0] += BURST_S / BURST
            if j % every == every - 1:
                await b("during")
        for _ in range(round(AFTER_S * B_RPS)):
            await b("after")
            now[0] += 1.0 / B_RPS

    asyncio.run(go())
    t_attack = BEFORE / B_RPS
    t_end = t_attack + BURST_S
    # Before: the mean over the last minute (one tenant: the deficit correction moves the
    # threshold by a few points at every recalibration, around the plan's share).
    before = float(np.mean([s for t, _, s, _ in timeline if t_attack - 60 <= t < t_attack]))
    th_before, cal0 = next((th, c) for t, th, _, c in reversed(timeline) if t < t_attack)
    # From the first recalibration with A's scores in the window (the threshold in force
    # when A starts was calibrated on B alone).
    later = [(t, th, s) for t, th, s, c in timeline if t >= t_attack and c > cal0]

    def at(minutes: float) -> float:
        return next(s for t, _, s in later if t >= t_end + 60 * minutes - 1e-9)

    assert d.pair is not None
    _, health = d.health(time.monotonic())
    return {
        "isolation": isolation,
        "b_set_share_before": before,
        "b_set_share_min": min(s for _, _, s in later),
        "b_set_share_end_of_burst": next(s for t, _, s in later if t >= t_end),
        "b_set_share_after_1min": at(1), "b_set_share_after_4min": at(4),
        "b_set_share_after_8min": later[-1][2],
        "b_served_strong": {k: float(np.mean(v)) for k, v in served.items()},
        "threshold_before": th_before,
        "threshold_max": max(th for _, th, _ in later),
        "threshold_end": d.pair.threshold,
        "fast_moves": rec.fast, "threshold_guard": health["threshold_guard"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="build/poisoning_bench.json")
    p.add_argument("--no-copy", action="store_true", help="do not copy the JSON to "
                   "benchmarks/data/poisoning.json")
    add_target_argument(p, TARGETS)
    args = p.parse_args()
    t0 = time.perf_counter()
    runs = {name: replay(on) for name, on in (("off", False), ("on", True))}
    iso = Isolation()
    y = iso.bound(SHARE)
    cols = ["b_set_share_before", "b_set_share_min", "b_set_share_end_of_burst",
            "b_set_share_after_1min", "b_set_share_after_4min", "b_set_share_after_8min",
            "threshold_before", "threshold_max", "threshold_end"]
    print(f"B's strong share of its own prompt set at the live threshold (plan: {SHARE}); "
          f"bound y = {y:.4f} (+ kappa {iso.deficit_cap})")
    print(f"{'':<26}{'off':>10}{'on':>10}")
    for c in cols:
        print(f"{c:<26}{runs['off'][c]:>10.4f}{runs['on'][c]:>10.4f}")
    for ph in ("before", "during", "after"):
        print(f"{'B served strong, ' + ph:<26}{runs['off']['b_served_strong'][ph]:>10.4f}"
              f"{runs['on']['b_served_strong'][ph]:>10.4f}")
    print(f"{'fast threshold moves':<26}{runs['off']['fast_moves']:>10}"
          f"{runs['on']['fast_moves']:>10}")
    drop = {k: r["b_set_share_before"] - r["b_set_share_min"] for k, r in runs.items()}
    served = runs["on"]["b_served_strong"]
    measured = {"isolated_drop_over_bound": drop["on"] / (y + iso.deficit_cap),
                "isolated_served_drop_over_bound": (served["before"] - served["after"])
                / (y + iso.deficit_cap)}
    checks = check(resolve(TARGETS, args.target), measured,
                   {"without isolation the attack moves B by more than the bound":
                    drop["off"] > y + iso.deficit_cap})
    print_checks(checks)
    payload = {"command": "python benchmarks/poisoning.py " + " ".join(sys.argv[1:]),
               "setup": {"strong_share": SHARE, "b_rps": B_RPS, "before_requests": BEFORE,
                         "burst_requests": BURST, "burst_s": BURST_S, "after_s": AFTER_S,
                         "isolation": iso.__dict__, "bound_y": y},
               "runs": runs, "drop": drop, "seconds": time.perf_counter() - t0,
               "targets": checks}
    write_results(payload, args.json, None if args.no_copy else "poisoning.json")
    return 0 if passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
