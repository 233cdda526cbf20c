import os

import pytest

from boute.envvars import scoped_env


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
