"""benchmarks/heldout_public.py: the fitting step recovers known parameters where the data
identify them, and says so where they do not."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import heldout_public as h  # noqa: E402
from calibration import ROWS, Row  # noqa: E402

from profiling import Efficiency, engine_profile, scale_efficiency  # noqa: E402

RUN = h.simulator(1)


def _synthetic(name: str, scale: float, o_s: float, d_s: float,
               with_ttft: bool) -> tuple[Row, dict[str, float]]:
    """The row's figures as the model itself predicts them at (scale, o, d)."""
    row = next(r for r in ROWS if r.name == name)
    engine = replace(engine_profile(row.engine, max_num_seqs=row.max_num_seqs),
                     step_overhead_s=o_s, frontend_latency_s=d_s)
    pred = RUN(row, scale_efficiency(Efficiency(), scale), engine)
    keys = ("tput_tok_s", "tpot_ms") + (("ttft_ms",) if with_ttft else ())
    return row, {k: pred[k] for k in keys}


def test_fit_recovers_scale_and_overhead_at_320_prompts() -> None:
    # 320 prompts at once: compute-bound prefill steps (1/s) and memory-bound decode steps
    # (W / (B e_m s) + o) both count, so tput and TPOT fix s and o apart.
    row, measured = _synthetic("8B 1xH100 N=320", 0.8, 3e-3, 0.0, with_ttft=False)
    fit = h.fit_level(row, measured, RUN)
    assert fit.scale == pytest.approx(0.8, rel=0.05)
    assert fit.step_overhead_s == pytest.approx(3e-3, abs=0.5e-3)
    assert fit.params == ("log_s", "o_ms")
    assert all(abs(r) < 0.01 for r in fit.residuals.values())


def test_fit_at_10_prompts_matches_but_reports_the_ridge() -> None:
    # 10 prompts: every decode step is memory bound, tput and TPOT measure one sum
    # W / (B e_m s) + o; the fit matches the figures but cannot tell s from o.
    row, measured = _synthetic("8B 1xH100 N=10", 0.8, 3e-3, 0.03, with_ttft=True)
    fit = h.fit_level(row, measured, RUN)
    assert fit.params == ("log_s", "o_ms", "d_ms")
    assert all(abs(r) < 0.01 for r in fit.residuals.values())
    assert fit.identified == {"log_s": False, "o_ms": False, "d_ms": False}


def test_families_keep_engine_generations_apart() -> None:
    fams = h.families(ROWS)
    multi = {k: [r.prompts for r in v] for k, v in fams.items() if len(v) >= 2}
    # Only the v0.6 multi-step 8B TP1 and 70B TP4 H100 runs have several levels.
    assert multi == {("llama-3.1-8b", "H100", 1, "vllm-0.6-multistep"): [10, 320, 5000],
                     ("llama-3.1-70b", "H100", 4, "vllm-0.6-multistep"): [10, 320, 5000]}
    levels = h.calibration_levels(fams[("llama-3.1-8b", "H100", 1, "vllm-0.6-multistep")])
    assert {k: r.prompts for k, r in levels.items()} == {"lowest": 10, "middle": 320}
