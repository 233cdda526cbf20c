"""`boute keys`: a key shown once, its digest kept; bad asks are one line and exit 2."""

import json
from pathlib import Path

import pytest

from app.guard import hash_key, read_key_file
from boute.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_new_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = str(tmp_path / "keys.yaml")
    code, out, _ = _run(capsys, "--json", "keys", "new", "--file", f, "--id", "team-a",
                        "--rate-rps", "5")
    assert code == 0
    key = json.loads(out)["key"]
    (entry,) = read_key_file(f)
    assert entry.id == "team-a" and entry.sha256 == hash_key(key) and entry.rate_rps == 5
    assert key not in Path(f).read_text()
    code, out, _ = _run(capsys, "--json", "keys", "list", "--file", f)
    assert json.loads(out) == {"keys": [{"id": "team-a", "rate_rps": 5.0}]}
    code, _, _ = _run(capsys, "keys", "revoke", "--file", f, "--id", "team-a")
    assert code == 0 and read_key_file(f) == []


@pytest.mark.parametrize("argv, message", [
    (["keys", "new", "--id", "team-a"], "already has a key"),
    (["keys", "revoke", "--id", "nobody"], "is not in"),
    (["keys", "new", "--id", "b", "--rate-rps", "0"], "rate_rps=0.0 must be a positive"),
])
def test_bad_asks_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               argv: list[str], message: str) -> None:
    f = str(tmp_path / "keys.yaml")
    assert main(["keys", "new", "--file", f, "--id", "team-a"]) == 0
    capsys.readouterr()
    code, _, err = _run(capsys, *argv, "--file", f)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_serve_run_builder_requires_keys_or_an_explicit_none(tmp_path: Path) -> None:
    from app.main import app

    with pytest.raises(ValueError, match=r"api_keys=FILE is required .* api_keys=none"):
        app({"plan": str(tmp_path / "plan.json")})
