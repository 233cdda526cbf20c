"""`--evals` / `--patience` / `--time-limit-s` -> `tuning.StopRule` (`boute._planning`)."""

import argparse

import pytest

from boute._planning import add_solver_args, stop_rule_from
from common.errors import BouteError
from tuning import StopRule


def _solver_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_solver_args(p)
    return p.parse_args(argv)


def test_cli_flags_map_to_the_rule() -> None:
    rule = stop_rule_from(_solver_args([]))
    assert rule == StopRule()
    rule = stop_rule_from(_solver_args(["--patience", "7", "--time-limit-s", "9"]))
    assert (rule.patience, rule.time_limit_s) == (7, 9.0)
    assert not rule.uses_acquisition("pareto")
    assert stop_rule_from(_solver_args(["--time-limit-s", "5"])).time_limit_s == 5.0
    with pytest.raises(BouteError, match="--patience=0 must be >= 1"):
        stop_rule_from(_solver_args(["--patience", "0"]))
