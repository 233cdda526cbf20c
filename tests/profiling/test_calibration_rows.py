"""benchmarks/calibration.py's rows: the published latencies checked against their throughput."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_calibration_rows_latency_consistency() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    from calibration import ROWS

    flagged = {r.name: r.inconsistency() for r in ROWS if r.inconsistency()}
    # 2 x 256 / 3958.4 tok/s = 129.3 ms < the published median ITL of 179.17 ms; every other
    # row with an ITL is below its bound (e.g. 70B v0.6 step10: 574 ms <= 2 x 10 x 256 / 3543
    # tok/s = 1445 ms).
    assert list(flagged) == ["8B 1xH100 N=5000 v0.6 step1"]
    assert "129.3 ms" in flagged["8B 1xH100 N=5000 v0.6 step1"]
