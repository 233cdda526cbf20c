"""``serve run app.main:app``: the builder fails fast on a cluster without the plan's GPUs, as
``boute deploy`` does, and leaves no token file readable by others.

No Ray: `placement.target_nodes` (the cluster ``serve run`` would deploy on) is replaced by
fake clusters (resource dicts as ``ray.nodes()`` reports them); HOME is a temporary folder.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

import placement
from app.deploy import DeployError
from app.fit import fit_plan
from app.main import Stack, _serve_run_address, app
from placement import ClusterTarget, target_nodes
from tuning import Group, Plan, Routing

WEAK, STRONG = "llama-3.1-8b", "llama-3.1-70b"
# The chaos benchmark's plan: 8B on 2 RTX-4090 + 1 RTX-5090, 70B on one H100 TP4 replica.
PLAN = Plan(Routing(0.3), (Group(WEAK, "RTX-4090", 1, 1, 2, 2 / 3),
                           Group(WEAK, "RTX-5090", 1, 1, 1, 1 / 3),
                           Group(STRONG, "H100", 4, 1, 1, 1.0)),
            scenario={"models": {"weak": WEAK, "strong": STRONG}})
FITS = [{"CPU": 8.0}, {"GPU": 2.0, "gpu_type_RTX-4090": 2.0},
        {"GPU": 1.0, "gpu_type_RTX-5090": 1.0}, {"GPU": 4.0, "gpu_type_H100": 4.0}]
AT = "the Ray cluster at 10.0.0.5:6379"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    PLAN.save(tmp_path / "plan.json")
    return tmp_path


def _cluster(monkeypatch: pytest.MonkeyPatch, target: ClusterTarget) -> list[str | None]:
    """Serve `target` as the cluster serve run would join; returns the addresses asked."""
    asked: list[str | None] = []

    def fake(address: str | None = None) -> ClusterTarget:
        asked.append(address)
        return target
    monkeypatch.setattr(placement, "target_nodes", fake)
    return asked


def _run(home: Path, **extra: str) -> Any:
    return app({"plan": str(home / "plan.json"), "api_keys": "none", **extra})


@pytest.mark.parametrize(("nodes", "message"), [
    # No RTX-5090 node at all: the type, needed vs available, and the fix.
    ([FITS[0], FITS[1], FITS[3]],
     r"serve run: the Ray cluster at 10\.0\.0\.5:6379 has no node with GPU type\(s\) "
     r"RTX-5090 \(RTX-5090: the plan needs 1 GPU\(s\), the Ray cluster at 10\.0\.0\.5:6379 "
     r"has 0\); add nodes of these types, each declaring the resource gpu_type_<TYPE> per GPU"),
    # One RTX-4090 where the plan runs two replicas of one GPU each: short by 1.
    ([FITS[0], {"GPU": 1.0, "gpu_type_RTX-4090": 1.0}, FITS[2], FITS[3]],
     r"serve run: the plan does not fit the Ray cluster at 10\.0\.0\.5:6379:\n  RTX-4090: the "
     r"plan needs 2 GPU\(s\), the cluster has 1; add 1 RTX-4090 GPU\(s\) \(nodes declare the "
     r"resource 'gpu_type_RTX-4090' per GPU\); or pass fit_check=skip"),
    # H100 nodes of 2 GPUs: the TP4 replica cannot be placed on any.
    (FITS[:3] + [{"GPU": 2.0, "gpu_type_H100": 2.0}] * 2,
     r"serve run: groups\[2\]: tp=4 exceeds the 2 GPUs of a H100 node; tensor parallelism "
     r"must stay inside a node"),
])
def test_serve_run_of_a_plan_the_cluster_cannot_place_fails_at_once(
        home: Path, monkeypatch: pytest.MonkeyPatch, nodes: list[dict[str, float]],
        message: str) -> None:
    _cluster(monkeypatch, ClusterTarget(nodes, AT))
    with pytest.raises(DeployError, match=message):
        _run(home)
    assert not (home / ".ray").exists()         # nothing written for a run that stops here


def test_serve_run_without_any_cluster_says_to_start_one_first(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No cluster and no RAY_ADDRESS: serve run would start a local Ray, which has no GPU-type
    # resource unless RAY_OVERRIDE_RESOURCES gives it some.
    monkeypatch.setattr("ray._private.services.find_bootstrap_address", lambda _tmp: None)
    target = target_nodes(None, environ={})
    assert target.new_local and target.nodes == [{}]
    _cluster(monkeypatch, target)
    with pytest.raises(DeployError, match=r"a new local Ray .* has no node with GPU type\(s\) "
                       r"H100, RTX-4090, RTX-5090 \(H100: the plan needs 4 GPU\(s\), .*\(start "
                       r"the cluster first: `ray start --head --resources"):
        _run(home)
    assert not (home / ".ray").exists()


def test_a_plan_that_fits_is_built_and_a_new_local_rays_token_is_0600(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One local node that declares every type (RAY_OVERRIDE_RESOURCES): serve run will start
    # it, and Ray would write ~/.ray/auth_token 0644: the builder creates it 0600 first.
    monkeypatch.setattr("ray._private.services.find_bootstrap_address", lambda _tmp: None)
    target = target_nodes(None, environ={"RAY_OVERRIDE_RESOURCES": (
        '{"gpu_type_H100": 4, "gpu_type_RTX-4090": 2, "gpu_type_RTX-5090": 1}')})
    assert target.nodes == [{"gpu_type_H100": 4.0, "gpu_type_RTX-4090": 2.0,
                             "gpu_type_RTX-5090": 1.0}] and target.new_local
    _cluster(monkeypatch, target)
    built = _run(home)
    assert type(built).__name__ == "Application"
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64


def test_joining_a_cluster_creates_no_token_and_skip_waives_the_check(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _cluster(monkeypatch, ClusterTarget(FITS, AT))
    monkeypatch.setattr("sys.argv", ["/venv/bin/serve", "run", "--address", "10.0.0.5:6379",
                                     "app.main:app", "plan=p.json"])
    _run(home)
    assert asked == ["10.0.0.5:6379"]            # the address on serve run's command line
    assert not (home / ".ray").exists()          # an existing cluster: Ray generates none
    _cluster(monkeypatch, ClusterTarget([], AT))
    with pytest.raises(DeployError):
        _run(home)
    _run(home, fit_check="skip")                 # an autoscaling cluster: GPUs on demand
    with pytest.raises(ValueError, match=r"fit_check='no' is unknown; use 'on'"):
        _run(home, fit_check="no")


@pytest.mark.parametrize(("argv", "address"), [
    (["serve", "run", "-a", "ray://h:10001", "app.main:app"], "ray://h:10001"),
    (["/x/bin/serve", "run", "--address=h:6379", "app.main:app"], "h:6379"),
    (["serve", "run", "app.main:app", "plan=p.json"], None),
    (["serve", "deploy", "--address", "http://h:8265", "cfg.yaml"], None),   # not serve run
    (["python", "-m", "pytest", "--address", "h:1"], None),
])
def test_the_address_serve_run_was_given(argv: list[str], address: str | None) -> None:
    assert _serve_run_address(argv) == address


def test_deploys_check_takes_a_fake_cluster() -> None:
    # The same check `boute deploy` runs on the live cluster, on resource dicts: the node
    # sizes it returns are the cluster's (what the builder builds with).
    stack = fit_plan(PLAN, Stack(), FITS)
    assert stack.gpus_per_node == {"RTX-4090": 2, "RTX-5090": 1, "H100": 4}
    with pytest.raises(DeployError, match=r"^the cluster has no node with GPU type\(s\) H100 "
                       r"\(H100: the plan needs 4 GPU\(s\), the cluster has 0\)"):
        fit_plan(PLAN, Stack(), FITS[:3])
