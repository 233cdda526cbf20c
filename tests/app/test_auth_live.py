"""Security on by default, live: a local cluster with Ray token authentication (a fresh
token, as `boute deploy --local` starts it) serves a plan deployed through Serve's REST API
with the token; a caller without it (or with another one) is refused by Serve's REST API and
the job API; a replan Ray job submitted with the token runs on the cluster and reads the
running stack through the same API."""

import json
import os
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.app import free_port, plan_replan_scenario

REPO = Path(__file__).resolve().parents[2]

DATA = REPO / "benchmarks" / "data" / "replan"       # the scenario and its slow GPU type


def _status(url: str, method: str = "GET", body: dict | None = None,
            token: str | None = None) -> tuple[int, str]:
    """HTTP status and body of a raw call (no Ray client: nothing adds a token by itself)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.heavy
def test_token_cluster_serves_with_the_token_and_refuses_without(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray import serve
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    from app.deploy import deploy_plan
    from app.serve_api import ServeApi, dashboard_url
    from boute.bench import run_bench
    from boute.replan_cli import submit_replan_job
    from placement import cluster_auth_token, local_cluster
    from profiling import generate_trace
    from tuning import Plan

    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)          # the product's default: auth on
    catalog = DATA / "gpus.yaml"
    plan_path, log_dir = plan_replan_scenario(tmp_path), tmp_path / "log"
    plan = Plan.load(plan_path)                         # one 2-GPU replica of the 8B model

    # the replan re-plans within the cluster's GPUs: H100s too (the strong model's)
    cluster = local_cluster({"H100": 4, "EDU-GPU": 2}, {"H100": 4, "EDU-GPU": 4},
                            temp_dir=REPO / "build" / "ray-tmp-auth", dashboard_port=free_port())
    try:
        token_file = Path(cluster.auth_token_path)
        token = token_file.read_text()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) == 64
        assert "RAY_AUTH_MODE" not in os.environ        # the nodes have it; this process is back
        assert cluster_auth_token() == token            # what this process's connection uses

        # Deploying goes through Serve's REST API with the token.
        url = deploy_plan(plan, backend="emulated", gpu_catalog=[str(catalog)],
                          port=free_port(), proxy_location="HeadOnly", log_dir=str(log_dir),
                          log_rotate_s=2.0)
        dashboard = dashboard_url()
        apps = ServeApi(dashboard).details()["applications"]
        assert apps["boute"]["status"] == "RUNNING"

        # Strangers are refused: Serve's REST API and the job API, read and write.
        serve_api, jobs = f"{dashboard}/api/serve/applications/", f"{dashboard}/api/jobs/"
        assert _status(serve_api)[0] == 401
        assert _status(serve_api, "PUT", {"applications": []})[0] == 401
        assert _status(serve_api, "PUT", {"applications": []}, token="0" * 64)[0] == 403
        code, text = _status(jobs, "POST", {"entrypoint": "echo pwned"})
        assert (code, text) == (401, "Unauthorized: Missing authentication token")
        with pytest.raises(AuthenticationError, match="Authentication failed"):
            JobSubmissionClient(dashboard, headers={"Authorization": "Bearer " + "0" * 64})
        assert ServeApi(dashboard).details()["applications"].keys() == apps.keys()  # untouched
        assert _status(serve_api, token=token)[0] == 200

        # A replan job submitted with the token runs on the cluster, which hands it the
        # mode and the token: it reads the running stack through Serve's REST API.
        bench = run_bench(url, generate_trace("gsm8k", rate_rps=4, num_requests=24, seed=1))
        assert not bench.summary()["errors"], bench.summary()
        time.sleep(3.0)                                 # the log file rotates: readable
        report = submit_replan_job(dashboard, ["--dry-run", "--window-s", "120",
                                               "--min-requests", "10"], timeout_s=300)
        assert report["dry_run"] and not report["applied"]
        assert 10 <= report["window"]["requests"] <= 24     # the rotated part of the log
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
