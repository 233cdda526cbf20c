import json
from pathlib import Path

import pytest

from boute.cli import main
from tests.tuning.conftest import SMALL


@pytest.fixture()
def small_yaml(tmp_path: Path, small_problem) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    small_problem.db.save(tmp_path / "db.parquet")
    return path


def test_plan_evaluate_compare_json(small_yaml: Path, tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "db.parquet")
    out = str(tmp_path / "plan.json")
    assert main(["--json", "plan", "--scenario", str(small_yaml), "--db", db, "--solver",
                 "exact", "--quality", "87", "--out", out, "--plot", ""]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["search"]["solver"] == "exact" and res["search"]["hypervolume"] > 0
    assert res["front"] and {"p95_s", "quality", "cost_per_hour", "strong_share"} <= set(
        res["front"][0])
    assert res["plan"]["predicted"]["quality"] >= 87
    assert main(["--json", "evaluate", out, "--scenario", str(small_yaml), "--db", db]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["predicted"]["cost_per_hour"] == pytest.approx(
        res["plan"]["predicted"]["cost_per_hour"])
    assert main(["--json", "compare", "--scenario", str(small_yaml), "--db", db, "--solver",
                 "exact", "--targets", "87:8"]) == 0
    cmp_ = json.loads(capsys.readouterr().out)
    costs = cmp_["targets"][0]["cost_per_hour"]
    assert costs["BOute"] <= min(v for v in costs.values() if v is not None)


def test_bad_inputs_give_one_line(small_yaml: Path, tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "db.parquet")
    assert main(["compare", "--scenario", str(small_yaml), "--db", db,
                 "--targets", "87"]) == 2
    assert "--targets item '87' must be QUALITY:SECONDS" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["evaluate", str(bad), "--scenario", str(small_yaml), "--db", db]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert main(["plan", "--scenario", str(small_yaml), "--db", db, "--quality", "99"]) == 2
    assert "above what" in capsys.readouterr().err


def test_quality_records_replace_the_published_curve(small_yaml: Path, tmp_path: Path,
                                                      capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    db = str(tmp_path / "db.parquet")
    # Four queries, hardest first by score: routing the top k of 4 to the strong model gives
    # Q = mean(q_weak) + sum_{i<=k}(q_strong - q_weak)/4 = 50, 75, 75, 100, 75 for k = 0..4,
    # envelope 50, 75, 75, 100, 100 at shares 0, .25, .5, .75, 1, linear between: quality 96
    # needs a strong share >= 0.5 + (96 - 75) / 100 = 0.71.
    records = tmp_path / "evals.parquet"
    pq.write_table(pa.table({"router_score": [0.9, 0.7, 0.4, 0.1],
                             "quality_weak": [0.0, 100.0, 0.0, 100.0],
                             "quality_strong": [100.0, 100.0, 100.0, 0.0]}), records)
    argv = ["--json", "plan", "--scenario", str(small_yaml), "--db", db, "--solver", "exact",
            "--objective", "min-cost", "--quality", "96", "--p95", "30", "--plot", "",
            "--out", str(tmp_path / "plan.json")]
    assert main(argv) == 2                      # the published GSM8K curve tops out at 95.1
    capsys.readouterr()
    assert main([*argv, "--quality-records", str(records)]) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    share = plan["routing"]["strong_share"]
    assert share >= 0.71 - 1e-6
    assert plan["predicted"]["quality"] == pytest.approx(min(100.0, 75 + 100 * (share - 0.5)))
    missing = str(tmp_path / "nope.parquet")
    assert main([*argv[1:], "--quality-records", missing]) == 2
    err = capsys.readouterr().err
    assert f"eval records {missing!r}: cannot read" in err and len(err.splitlines()) == 1
