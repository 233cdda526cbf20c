"""The ingress's Serve side without Serve: method handles made once, replica counts polled.

`ServeEngines` on fake deployment handles; `_running_replicas` on a fake Serve client whose
details are the controller's plain dicts; `RouterIngress._liveness` on a bare instance.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from app.ingress import RouterIngress, ServeEngines, _running_replicas


class _Handle:
    """A deployment handle: ``options(...)`` makes a method handle, counted."""

    def __init__(self, name: str) -> None:
        self.name, self.options_calls = name, 0

    def options(self, **kwargs: Any) -> Any:
        self.options_calls += 1
        handle = self

        class _Method:
            def remote(self, *args: Any) -> tuple[str, dict[str, Any], tuple[Any, ...]]:
                return handle.name, kwargs, args
        return _Method()


def test_method_handles_are_made_once_per_group_and_handle() -> None:
    a, b = _Handle("a"), _Handle("b")
    handles: dict[str, Any] = {"ga": a, "gb": b}
    engines: Any = ServeEngines(handles)
    body = {"model": "m"}
    for _ in range(3):
        assert engines.call("ga", "chat", body) == ("a", {"method_name": "openai"},
                                                    ("chat", body))
    assert engines.stream("ga", "completions", body) == (
        "a", {"method_name": "openai", "stream": True}, ("completions", body))
    assert engines.stream("ga", "chat", body)[1] == {"method_name": "openai", "stream": True}
    assert engines.ping("ga") == ("a", {"method_name": "ping"}, ())
    assert engines.call("gb", "chat", body)[0] == "b"
    assert (a.options_calls, b.options_calls) == (3, 1)    # openai, openai streamed, ping
    fresh = _Handle("a2")
    engines.handles["ga"] = fresh                           # a reconfigure replaced it
    assert engines.call("ga", "chat", body)[0] == "a2"
    assert (a.options_calls, fresh.options_calls) == (3, 1)


def _replica(state: str) -> dict[str, str]:
    return {"replica_id": "x", "state": state}


def test_running_replicas_counts_running_ones_from_the_controller_details(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.serve.context as context

    details = {"applications": {
        "boute": {"deployments": {
            "g8b": {"replicas": [_replica("RUNNING"), _replica("STARTING"),
                                 _replica("RUNNING")]},
            "g70b": {"replicas": [_replica("STOPPING")]},
            "RouterIngress": {"replicas": [_replica("RUNNING")]}}},
        "other": {"deployments": {"g8b": {"replicas": []}}},
        "empty": {}}}
    client = SimpleNamespace(get_serve_details=lambda: details)
    monkeypatch.setattr(context, "_get_global_client", lambda **_: client)
    assert _running_replicas() == {("boute", "g8b"): 2, ("boute", "g70b"): 0,
                                   ("boute", "RouterIngress"): 1, ("other", "g8b"): 0}
    monkeypatch.setattr(context, "_get_global_client", lambda **_: None)
    assert _running_replicas() == {}                        # Serve not started


def test_liveness_hands_each_group_its_count_and_zero_when_missing() -> None:
    seen: dict[str, int] = {}
    ing = SimpleNamespace(
        handles={"ga": SimpleNamespace(app_name="boute", deployment_name="g8b"),
                 "gb": SimpleNamespace(app_name="g70b-app", deployment_name="g70b")},
        dispatcher=SimpleNamespace(set_replicas=lambda g, n: seen.__setitem__(g, n)))
    ingress: Any = RouterIngress
    ingress.func_or_class._liveness(ing, {("boute", "g8b"): 2, ("boute", "g70b"): 1})
    assert seen == {"ga": 2, "gb": 0}       # gb lives in its own application: not running
