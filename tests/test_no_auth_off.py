"""Closed by default: no product file turns Ray token authentication off.

Product code (the packages, the benchmarks, the cluster files, the Makefile, the operations
guide) never sets ``RAY_AUTH_MODE`` to ``disabled``; tests of throw-away local clusters may
(``monkeypatch.setenv``), and that is the only place.
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PRODUCT = ["boute", "app", "placement", "tuning", "profiling", "benchmarks"]
FILES = ["cluster.yaml", "cluster-onprem.yaml", "Makefile", "docs/operations.md"]
SUFFIXES = {".py", ".yaml", ".yml", ".sh", ".md", ".toml", ".json", ".cfg"}

# RAY_AUTH_MODE (or a name for it: AUTH_MODE_ENV) and "disabled" in one statement: an
# assignment, a setdefault, a dict entry, an env prefix of a command.
_AUTH_OFF = re.compile(r"AUTH_MODE\w*\W{0,8}disabled", re.IGNORECASE)


def _product_files() -> list[Path]:
    files = [REPO / f for f in FILES]
    for package in PRODUCT:
        files += [p for p in (REPO / package).rglob("*")
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    return sorted(files)


def _offences(text: str) -> list[str]:
    """Lines that turn authentication off (a statement may span two lines: joined pairwise)."""
    lines = text.splitlines()
    pairs = [a.strip() + " " + b.strip() for a, b in zip(lines, [*lines[1:], ""], strict=True)]
    return [line for line in pairs if _AUTH_OFF.search(line)]


@pytest.mark.parametrize("snippet", [
    'os.environ.setdefault("RAY_AUTH_MODE", "disabled")',
    'runtime_env={"env_vars": {"RAY_AUTH_MODE": "disabled"}}',
    "\tRAY_AUTH_MODE=disabled $(BIN)/boute deploy build/plan.json",
    "export RAY_AUTH_MODE=disabled; ray start --head",
    "os.environ[AUTH_MODE_ENV] = 'disabled'",
    'env = {\n    "RAY_AUTH_MODE":\n        "disabled"}',
])
def test_the_scan_catches_every_way_of_turning_auth_off(snippet: str) -> None:
    assert _offences(snippet)


def test_no_product_file_turns_ray_auth_off() -> None:
    files = _product_files()
    assert len(files) > 50 and REPO / "placement" / "_local.py" in files
    found = {str(p.relative_to(REPO)): hits for p in files
             if (hits := _offences(p.read_text(errors="replace")))}
    assert not found, f"RAY_AUTH_MODE=disabled in product code (only tests may): {found}"
