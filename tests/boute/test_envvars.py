import os

import pytest

from common.envvars import scoped_env
from placement import HIGH_THROUGHPUT_ENV


def test_keep_set_leaves_a_users_value_and_restores_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOUTE_TEST_A", "user")
    monkeypatch.delenv("BOUTE_TEST_B", raising=False)
    with scoped_env({"BOUTE_TEST_A": "ours", "BOUTE_TEST_B": "ours"}, keep_set=True):
        assert os.environ["BOUTE_TEST_A"] == "user"
        assert os.environ["BOUTE_TEST_B"] == "ours"
    assert os.environ["BOUTE_TEST_A"] == "user" and "BOUTE_TEST_B" not in os.environ
    with scoped_env({"BOUTE_TEST_A": "ours"}):      # without keep_set: ours inside
        assert os.environ["BOUTE_TEST_A"] == "ours"
    assert os.environ["BOUTE_TEST_A"] == "user"


def test_scoped_env_is_set_inside_and_restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")        # a user's own setting
    with scoped_env(HIGH_THROUGHPUT_ENV):
        assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"


def test_scoped_env_restores_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    with pytest.raises(RuntimeError), scoped_env({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}):
        raise RuntimeError("a raylet failed to start")
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ
