"""The README's Python example runs as written and does what its comments say.

The first ```python block of README.md is executed unchanged in a fresh working directory,
since it writes ``build/plan.json`` relative to it. Its perf DB is the repository's
``build/perfdb-paper-gsm8k.parquet``, the one the other paper-gsm8k tests plan on (built there
first when missing or stale), copied into that directory's ``build/``: the example then finds
it where a user's second run would, and still checks that it is not stale before using it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The goal the example states: Goal("min-cost", quality=89.0, p95_s=30.0).
QUALITY, P95_S = 89.0, 30.0


def readme_example() -> str:
    """The code of the README's first ```python block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert found, "README.md has no ```python block"
    return found.group(1)


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    from profiling import load_scenario
    from tuning import Plan, default_db_path, planning_problem

    code = readme_example()
    assert 'planning_problem("paper-gsm8k")' in code and "build/plan.json" in code
    db = default_db_path(load_scenario("paper-gsm8k"))
    planning_problem("paper-gsm8k", db=str(ROOT / db), progress=False)  # built if missing
    (tmp_path / db).parent.mkdir(parents=True)
    shutil.copyfile(ROOT / db, tmp_path / db)
    monkeypatch.chdir(tmp_path)

    exec(compile(code, "README.md (python example)", "exec"), {"__name__": "readme_example"})

    plan = Plan.load(tmp_path / "build" / "plan.json")
    assert plan.predicted is not None
    assert plan.predicted.quality >= QUALITY - 1e-9
    assert plan.predicted.p95_s <= P95_S + 1e-9
    assert capsys.readouterr().out.startswith("Predicted(p95_s=")   # print(...predicted)
