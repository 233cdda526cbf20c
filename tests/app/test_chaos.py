"""The stack under faults, end to end: `benchmarks/chaos.py --quick` on a local fake cluster.

Five 20 s phases of steady load (4 req/s, 20% streamed), each with its fault: one engine
replica killed, every replica of a group killed, the router killed, a GPU node killed, the
8B's last GPU node killed (its requests then go to the 70B). No request may fail for the
engine and node faults (the router retries them on another group or model; at most 5% may be
refused with 429 while the capacity is down), ``/health`` must never answer 503 while the
router serves, and must say 200 ``degraded`` (with the lost group ``down``) within 5 s of a
node loss; the request log must hold a row for every request the router answered (for the
router kill: all but the streams it cut, + 1 torn record). About 3.5 minutes.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.heavy
@pytest.mark.latency
def test_chaos_quick(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "chaos.py"), "--quick",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    table = "\n".join(line for line in proc.stdout.splitlines()
                      if not line.lstrip().startswith(("[state-dump]", "[20")))
    assert out.is_file(), f"no report (rc {proc.returncode}):\n{table}\n{proc.stderr[-3000:]}"
    report = json.loads(out.read_text())
    phases = {p["phase"]: p for p in report["phases"]}
    assert set(phases) == {"a", "b", "c", "d", "e"}, table
    for name, p in phases.items():
        assert not p["fault_note"].startswith("FAULT INJECTION"), (name, p["fault_note"])
        assert p["sent"] >= 40, (name, p["sent"])
    for name in ("a", "b", "d", "e"):
        p = phases[name]
        # The fault takes capacity away: the router may refuse a few requests with 429 +
        # Retry-After (its fail-safe answer at a group's in-flight bound; seen on a busy
        # machine, 4 of ~190 while a whole group was down), never anything else.
        refused = p["errors"].get("HTTP 429", 0)
        assert p["failed"] - refused == 0, (name, p["errors"], p["first_errors"], table)
        assert refused <= 0.05 * p["sent"], (name, p["errors"], table)
        assert p["lost"] == 0, (name, p["answered"], p["logged"], table)
        # The router served every request: the load balancer's check never said otherwise.
        assert p["health_503"] == 0, (name, table)
    for name in ("d", "e"):
        # A lost node: /health 200 "degraded" with the group down within 5 s (the router's
        # liveness probes: <= 1 + 2 x 1.5 = 4 s, plus the 0.5 s poll of the benchmark).
        p = phases[name]
        assert p["health_degraded_s"] is not None and p["health_degraded_s"] <= 5.0, (name, table)
        assert p["recover_s"] is not None and p["recover_s"] <= 5.0, (name, table)
    assert phases["e"]["degraded"] > 0, table       # the 8B's requests, answered by the 70B
    c = phases["c"]
    assert c["lost"] <= c["cut_streams"] + 1, (c["answered"], c["logged"], table)
    assert proc.returncode == 0, table
    print(table)
