"""What ``/health`` and ``/health/ready`` say: per group, per model, overall (pure).

Built from the router's view of its groups (`app.groups.GroupPool`): each group is
``serving``, ``degraded`` or ``down`` (`app.groups.GroupState.health`). From them:

- **A model** is ``serving`` when every group of it serves; ``degraded`` when some group of it
  takes traffic but not all serve, *or* when none does and its requests go to another model
  that can take them (``on_model_down: fallback``; the report names it in ``served_by``);
  ``down`` when none of its requests can be answered.
- **Overall** (`overall_status`): ``ok`` when every group serves; ``unavailable`` when every
  model is down (no request can be served); else ``degraded``.
- **The load balancer's check** (`health_code`): 200 unless ``unavailable`` (503). A router
  that serves every request, some of them from a fallback model, is in rotation.
- **Readiness** (`readiness`, for operators and deploy scripts): ready only when every group
  of the plan is ``serving`` and its replica count has been seen; else what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from placement import Lane

from .groups import GroupPool

__all__ = ["ModelHealth", "Status", "health_code", "model_health", "overall_status",
           "readiness"]

Status = Literal["ok", "degraded", "unavailable"]
ModelHealth = dict[str, Any]
"""``{"state": serving|degraded|down, "groups": [...], "served_by": model | None}``."""


def model_health(pool: GroupPool, models: Iterable[str], now: float,
                 fallback: Callable[[str], str | None]) -> dict[str, ModelHealth]:
    """Each served model's state (module docstring).

    Args:
        pool: the router's groups (their lanes are ``model`` or ``model#class``).
        models: the models the running plan serves.
        now: monotonic seconds (breaker cool-downs).
        fallback: model -> the model its requests go to when it has no group taking traffic
            (None: they fail, ``on_model_down: fail`` or no other model).

    Returns:
        model -> `ModelHealth`.

    """
    lanes = pool.health(now)["lanes"]
    own: dict[str, bool] = {}
    out: dict[str, ModelHealth] = {}
    for m in models:
        names = [n for n, st in pool.groups.items() if Lane.parse(st.model).model == m]
        own[m] = any(ok for lane, ok in lanes.items() if Lane.parse(lane).model == m)
        out[m] = {"state": "serving", "groups": names, "served_by": None}
    for m, entry in out.items():
        states = [pool.groups[n].health(now)[0] for n in entry["groups"]]
        if own[m]:
            entry["state"] = "serving" if all(s == "serving" for s in states) else "degraded"
            continue
        other = fallback(m)
        if other is not None and own.get(other, False):
            entry["state"], entry["served_by"] = "degraded", other
        else:
            entry["state"] = "down"
    return out


def overall_status(groups: Mapping[str, Mapping[str, Any]],
                   models: Mapping[str, ModelHealth]) -> Status:
    """``ok`` (every group serving), ``unavailable`` (every model down), else ``degraded``."""
    if not models or all(v["state"] == "down" for v in models.values()):
        return "unavailable"
    if all(g["state"] == "serving" for g in groups.values()):
        return "ok"
    return "degraded"


def health_code(status: Status) -> int:
    """The load balancer's answer: 200 while any request can be served, else 503."""
    return 503 if status == "unavailable" else 200


def readiness(pool: GroupPool, now: float) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Whether every group serves, and what is missing (group -> model, state, reason).

    A group whose replica count the liveness poll has not seen yet is missing ("not yet
    seen"): readiness never answers yes on a guess.
    """
    missing = {}
    for name, st in pool.groups.items():
        state, reason = st.health(now)
        if state == "serving" and st.running is None:
            reason = "replica count not seen yet (the router polls Serve every second)"
        elif state == "serving":
            continue
        missing[name] = {"model": st.model, "state": state, "reason": reason,
                         "replicas_running": st.running, "replicas_wanted": st.wanted}
    return not missing and bool(pool.groups), missing
