"""The router's user_config: one typed value, its errors in one line, its wire format kept."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from app.guard import KeyEntry
from app.router_config import RouterConfig, RouterSettings, WorkloadRouting
from app.routing import RouterError
from placement import Lane, PlacementError

BASE: dict[str, Any] = {"weak": "w", "strong": "s", "strong_share": 0.5,
                        "shares": {"w": {"a": 1.0}, "s": {"b": 1.0}}}


@pytest.mark.parametrize("model", [RouterConfig, RouterSettings, WorkloadRouting])
def test_every_field_has_a_description(model: type[BaseModel]) -> None:
    assert [n for n, f in model.model_fields.items() if not f.description] == []


def test_a_hand_written_config_needs_four_fields_and_goes_back_to_the_wire_as_given() -> None:
    cfg = RouterConfig.parse(BASE)
    assert (cfg.router, cfg.seed, cfg.threshold, cfg.ladder) == ("builtin", 0, None, False)
    assert cfg.ladder_models == ("w", "s") and cfg.settings == RouterSettings()
    assert cfg.wire() == BASE
    full = {**BASE, "threshold": None, "limits": {"a": 3, "b": 2}, "replicas": {"a": 1, "b": 1},
            "context": {"w": 8192}, "settings": {"on_model_down": "fail"}, "apps": {"a": "a"}}
    assert RouterConfig.parse(full).wire() == full
    keys = [{"id": "team-a", "sha256": "0" * 64, "rate_rps": 2.0}]
    cfg = RouterConfig.parse({**BASE, "api_keys": keys})
    # Parsed once into typed entries; on the wire as the dicts they came as.
    assert cfg.api_keys == [KeyEntry("team-a", "0" * 64, 2.0)] and cfg.wire()["api_keys"] == keys


@pytest.mark.parametrize(("change", "match"), [
    ({"settings": {"on_model_down": "retry"}},
     r"settings\.on_model_down='retry': Input should be 'fallback' or 'fail'"),
    ({"settings": {"max_tries": 0}}, r"settings\.max_tries=0: .*greater than or equal to 1"),
    ({"settings": {"call_timeout_s": -1}}, r"settings\.call_timeout_s=-1: .*greater than 0"),
    ({"settings": {"retries": 2}},
     r"settings\.retries=2: unknown field; known: \['body_timeout_s', 'call_timeout_s'"),
    ({"strong_shar": 0.3}, r"strong_shar=0\.3: unknown field; known: \['api_keys'"),
    ({"strong_share": 1.5}, r"strong_share=1\.5: .*less than or equal to 1"),
    ({"shares": {"w#medium": {"a": 1.0}}}, r"length_class='medium' is unknown"),
    ({"shares": {"w": {"a": 0.0}}}, r"lane 'w': group shares \{'a': 0\.0\} must be >= 0 "
                                    r"with a positive sum"),
    ({"shares": {"w": {"a": 1.0}, "s": {"a": 1.0}}}, r"group 'a' is in two lanes"),
    ({"api_keys": [{"id": "k", "sha256": "x"}]}, r"sha256 must be 64 lowercase hex digits"),
    ({"models": ["w", "s", "x"], "workloads": {"m": {"shares": [0.5, 0.5]}}},
     r"workload 'm': 2 shares for 3 models"),
    ({"workloads": {"m": {"shares": [0.5, 0.5], "thresholds": [None, None]}}},
     r"workload 'm': 2 thresholds for 2 models; give 1"),
    ({"workloads": {"m": {"shares": [0.5, 0.5], "extra": 1}}},
     r"workloads\.m\.extra=1: unknown field; known: \['shares', 'thresholds'\]"),
    ({"threshold": float("nan")}, r"threshold=nan: Input should be a finite number"),
])
def test_a_bad_config_is_one_line_naming_field_value_and_fix(change: dict[str, Any],
                                                             match: str) -> None:
    with pytest.raises(RouterError, match=match) as info:
        RouterConfig.parse({**BASE, **change})
    message = str(info.value)
    assert "\n" not in message and message.startswith("router config: ")
    assert message.endswith("fix the router's user_config (app.main.routing_config writes a "
                            "valid one)")


def test_a_missing_field_is_named() -> None:
    with pytest.raises(RouterError, match=r"router config: shares: Field required"):
        RouterConfig.parse({k: v for k, v in BASE.items() if k != "shares"})


def test_workload_tails_and_initial_thresholds() -> None:
    w = WorkloadRouting(shares=[0.2, 0.5, 0.3], thresholds=[None, 0.7])
    # Tails: 0.5 + 0.3 = 0.8, then 0.3.
    assert w.tails == pytest.approx([0.8, 0.3])
    initial = w.initial
    assert initial is not None and initial[1] == 0.7 and initial[0] != initial[0]   # NaN
    assert WorkloadRouting(shares=[1.0]).initial is None


def test_a_lane_is_built_and_read_in_one_place() -> None:
    assert Lane("m").key == "m" and Lane("m", "short").key == "m#short"
    assert Lane.parse("m#long") == Lane("m", "long") and Lane.parse("m") == Lane("m")
    assert Lane("m", "short").fallbacks() == (Lane("m", "short"), Lane("m", "long"))
    assert Lane("m").fallbacks() == (Lane("m"),)
    with pytest.raises(PlacementError, match="length_class='medium' is unknown"):
        Lane.parse("m#medium")
    with pytest.raises(PlacementError, match="must be a non-empty model name without '#'"):
        Lane("a#b")


def test_what_the_stack_deploys_parses_and_goes_back_unchanged() -> None:
    """The user_config of `stack_config` (a ladder with length classes, keys, settings): the
    router parses it and its wire form is the very dict Serve carries."""
    import math

    from app.main import Stack, stack_config
    from tuning import Group, LengthRouting, Plan, Routing, WorkloadRouting

    models = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b")
    plan = Plan(Routing(0.3, models=models, workloads=(
        WorkloadRouting("math", (0.2, 0.5, 0.3), (0.3, math.nan), 5.0),
        WorkloadRouting("chat", (0.6, 0.4, 0.0), (math.nan, math.nan), 1.0)),
        length_classes=LengthRouting(160, {"math": (0.7, 0.3), "chat": (0.4, 0.6)})),
        tuple(Group(m, "H100", 8, 1, 1, 1.0, c) for m in models for c in ("short", "long")))
    stack = Stack(api_keys=[{"id": "a", "sha256": "0" * 64, "rate_rps": 2.0}],
                  on_model_down="fail", call_timeout_s=3.0)
    uc = stack_config(plan, stack)["applications"][0]["deployments"][0]["user_config"]
    cfg = RouterConfig.parse(uc)
    assert cfg.wire() == uc
    assert cfg.ladder_models == models and set(cfg.workloads) == {"math", "chat"}
    assert {Lane.parse(k) for k in cfg.shares} == {Lane(m, c) for m in models
                                                   for c in ("short", "long")}
    assert cfg.settings.on_model_down == "fail" and cfg.config_id == uc["config_id"]
