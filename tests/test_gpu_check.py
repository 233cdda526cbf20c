"""`make gpu-check` on a CUDA machine: every step runs and the serving smoke test is clean.

Skipped (with the reason) where torch sees no CUDA device; the script itself refuses there
with exit status 2 and one line, which is checked everywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_gpu_check_refuses_without_cuda_in_one_line() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device; test_gpu_check_runs covers it")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("gpu-check: no CUDA device is visible to torch")
    assert "\n" not in done.stderr.strip() and done.stdout == ""


@pytest.mark.gpu
@pytest.mark.heavy
def test_gpu_check_runs(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--requests", "64",
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=3600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"]["serving"]["ok"] == 64
    assert summary["steps"]["hardware"]["gemm_rows"] > 0
    assert set(summary["steps"]["fidelity"]) == {"spec_sheet", "calibrated"}
