"""Shared helpers: small catalogs, replicas and scenarios with defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiling import Catalog, EngineConfig, ReplicaModel, load_catalog


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


def make_replica(catalog: Catalog, model: str = "llama-3.1-8b", gpu: str = "H100",
                 tp: int = 1, pp: int = 1, **engine: object) -> ReplicaModel:
    return ReplicaModel(catalog.model(model), catalog.gpu(gpu), tp, pp,
                        EngineConfig(**engine))  # type: ignore[arg-type]


def write_scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


TINY_SCENARIO = """
name: tiny
gpus:
  H100: {count: 2}
models: {weak: llama-3.1-8b, strong: llama-3.1-8b}
workload: {shape: gsm8k, rate_rps: 10}
profile: {num_rates: 6, num_requests: 200}
"""


def write_roofline_profile(out: Path, gpu_type: str, peak_tflops: float, peak_gbps: float,
                           e_c: float, e_m: float, tau_s: float) -> Path:
    """A hardware profile whose GEMM rows follow the stage-1 roofline exactly.

    Row time t = ||F / (C e_c), Q / (B e_m)||_3 + tau, with C, B the given peaks, so
    `fit_efficiency` recovers (e_c, e_m, tau). meta.json files it under `gpu_type`.
    """
    from profiling import GEMM_COLUMNS, CsvAppender

    out.mkdir(parents=True)
    app = CsvAppender(out / "gemm.csv", GEMM_COLUMNS)
    for m in (1, 4, 16, 64, 256, 1024, 4096):
        for n, k in ((4096, 4096), (14336, 4096), (4096, 14336)):
            tc = 2 * m * n * k / (peak_tflops * 1e12 * e_c)
            tm = 2 * (m * k + k * n + m * n) / (peak_gbps * 1e9 * e_m)
            t_us = ((tc**3 + tm**3) ** (1 / 3) + tau_s) * 1e6
            app.append({"model": "x", "layer": "l", "tp": 1, "m": m, "n": n, "k": k,
                        "median_us": t_us, "tflops": 2 * m * n * k / t_us * 1e-6,
                        "gbps": 0.0, "min_us": t_us, "reps": 1})
    (out / "meta.json").write_text(f'{{"gpu_type": "{gpu_type}", "status": "complete", '
                                   '"date": "2026-01-01"}')
    return out


# The heavy tests start Ray clusters, Serve apps and vLLM engines, bench them and compare what
# they measure with bounds: `make test` runs them one after the other in a pytest process of
# their own, beside the rest (two at once would compete for the CPUs their bounds assume).
def _run_order(item: pytest.Item) -> int:
    """Heavy tests that check latency or refusal counts (``latency``) last; of those, the
    real-vLLM ones (``vllm``) at the very end (`tests/run_suite.sh`, ``make test``, runs them
    in lanes of their own; this order holds for a plain ``pytest`` run)."""
    return (2 * bool(item.get_closest_marker("latency"))
            + bool(item.get_closest_marker("vllm")))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the tests (above); skip the ``gpu`` tests, saying why, where torch sees no CUDA
    device."""
    items.sort(key=_run_order)          # stable: file order within each rank
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU (torch {torch.__version__} sees none); "
                            "`make gpu-check` runs the same on a GPU machine")
    for item in gpu_items:
        item.add_marker(skip)
