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


def test_expiry_is_set_listed_and_cleared(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    f = str(tmp_path / "keys.yaml")
    code, _, _ = _run(capsys, "keys", "new", "--file", f, "--id", "old", "--expires-at",
                      "2020-01-01T00:00:00Z")                        # already past
    assert code == 0
    code, _, _ = _run(capsys, "keys", "new", "--file", f, "--id", "new", "--expires-at",
                      "2999-01-01T02:00:00+02:00")
    assert code == 0 and read_key_file(f)[1].to_dict()["expires_at"] == "2999-01-01T00:00:00Z"
    code, out, _ = _run(capsys, "--json", "keys", "list", "--file", f)
    assert json.loads(out) == {"keys": [
        {"id": "old", "expires_at": "2020-01-01T00:00:00Z", "expired": True},
        {"id": "new", "expires_at": "2999-01-01T00:00:00Z", "expired": False}]}
    code, out, _ = _run(capsys, "keys", "list", "--file", f)
    assert out.splitlines()[0].endswith("expires_at=2020-01-01T00:00:00Z\tEXPIRED")
    code, out, _ = _run(capsys, "--json", "keys", "expire", "--file", f, "--id", "old",
                        "--at", "never")
    assert code == 0 and json.loads(out) == {"id": "old", "expires_at": None}
    assert read_key_file(f)[0].expires_at is None
    code, _, err = _run(capsys, "keys", "expire", "--file", f, "--id", "new", "--at",
                        "2030-01-01")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "must be an ISO-8601 time with its zone" in err
    code, _, err = _run(capsys, "keys", "expire", "--file", f, "--id", "ghost", "--at", "now")
    assert code == 2 and "is not in" in err
