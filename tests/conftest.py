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
