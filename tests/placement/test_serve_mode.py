import os

import pytest

from placement import HIGH_THROUGHPUT_ENV, serve_env


def test_serve_env_is_set_inside_and_restored_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")        # a user's own setting
    with serve_env(HIGH_THROUGHPUT_ENV):
        assert os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
        assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"


def test_serve_env_restores_on_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_SERVE_THROUGHPUT_OPTIMIZED", raising=False)
    with pytest.raises(RuntimeError), serve_env({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}):
        raise RuntimeError("a raylet failed to start")
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in os.environ
