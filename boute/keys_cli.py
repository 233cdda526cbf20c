"""`boute keys`: API keys of the OpenAI endpoint (made, listed, revoked, rotated live).

A key is shown once, when made; the file keeps its SHA-256 digest only (`app.guard`).
``boute keys apply`` puts the file's keys into the running router's ``user_config`` through
Serve's REST API: the router takes them live (no restart; requests in flight are not
affected), which is how a key is rotated (``new`` + ``apply``, later ``revoke`` + ``apply``).
"""

from __future__ import annotations

import argparse
import sys

from common.errors import BouteError

__all__ = ["add_keys"]


def add_keys(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `boute keys`."""
    p = sub.add_parser("keys", help="API keys of the OpenAI endpoint (hashed at rest)")
    modes = p.add_subparsers(dest="keys_command", required=True)
    new = modes.add_parser("new", help="make a key: printed once, its digest kept in FILE")
    new.add_argument("--file", required=True, help="key file (YAML of digests; made 0600)")
    new.add_argument("--id", required=True, help="a name for the key's holder (logged)")
    new.add_argument("--rate-rps", type=float, default=None, help="requests/s allowed")
    new.add_argument("--burst", type=float, default=None, help="requests at once "
                     "(default 2 x rate)")
    new.add_argument("--expires-at", default=None, metavar="TIME",
                     help="when the key stops working: ISO-8601 with its zone, e.g. "
                     "2027-01-31T00:00:00Z (default: never)")
    new.set_defaults(run=_run_new)
    ls = modes.add_parser("list", help="the key ids, limits and expiry of FILE")
    ls.add_argument("--file", required=True)
    ls.set_defaults(run=_run_list)
    ex = modes.add_parser("expire", help="set or clear a key's expiry in FILE (then `boute "
                          "keys apply`)")
    ex.add_argument("--file", required=True)
    ex.add_argument("--id", required=True)
    ex.add_argument("--at", required=True, metavar="TIME", help="ISO-8601 with its zone "
                    "(2027-01-31T00:00:00Z), 'now', or 'never' (clears it)")
    ex.set_defaults(run=_run_expire)
    rm = modes.add_parser("revoke", help="remove a key from FILE (then `boute keys apply`)")
    rm.add_argument("--file", required=True)
    rm.add_argument("--id", required=True)
    rm.set_defaults(run=_run_revoke)
    ap = modes.add_parser("apply", help="give the running router FILE's keys (live)")
    ap.add_argument("--file", required=True)
    ap.add_argument("--dashboard", default="http://127.0.0.1:8265",
                    help="the cluster's dashboard (Serve's REST API)")
    ap.add_argument("--app", default="boute", help="the router's application")
    ap.set_defaults(run=_run_apply)


def _entries(path: str, must_exist: bool = True) -> list:  # type: ignore[type-arg]
    from pathlib import Path

    from app.guard import read_key_file

    if not must_exist and not Path(path).exists():
        return []
    return read_key_file(path)


def _run_new(args: argparse.Namespace) -> int:
    from app.guard import KeyEntry, hash_key, new_key, write_key_file
    from boute._shared import emit

    entries = _entries(args.file, must_exist=False)
    if any(e.id == args.id for e in entries):
        raise BouteError(f"--id={args.id!r} already has a key in {args.file}; revoke it first "
                         "or pick another id")
    key = new_key()
    entry = KeyEntry(args.id, hash_key(key), args.rate_rps, args.burst,   # validates
                     args.expires_at)
    write_key_file(args.file, [*entries, entry])
    print(f"boute keys: key {args.id!r} added to {args.file} (digest only); it is shown "
          "once, here:", file=sys.stderr)
    emit(args, {"id": args.id, "key": key, "file": args.file}, lambda: key)
    return 0


def _run_list(args: argparse.Namespace) -> int:
    import time

    from boute._shared import emit

    now = time.time()
    entries = []
    for entry in _entries(args.file):
        e = entry.to_dict()
        e.pop("sha256")
        if entry.expires_at is not None:
            e["expired"] = entry.expired(now)
        entries.append(e)
    emit(args, {"keys": entries},
         lambda: "\n".join(
             f"{e['id']}\trate_rps={e.get('rate_rps', 'unlimited')}"
             f"\texpires_at={e.get('expires_at', 'never')}"
             + ("\tEXPIRED" if e.get("expired") else "") for e in entries) or "(none)")
    return 0


def _run_expire(args: argparse.Namespace) -> int:
    import dataclasses
    from datetime import UTC, datetime

    from app.guard import format_expiry, write_key_file
    from boute._shared import emit

    entries = _entries(args.file)
    if not any(e.id == args.id for e in entries):
        raise BouteError(f"--id={args.id!r} is not in {args.file}; `boute keys list --file "
                         f"{args.file}` shows the ids")
    at = {"never": None, "now": datetime.now(UTC)}.get(args.at, args.at)
    entries = [dataclasses.replace(e, expires_at=at) if e.id == args.id else e
               for e in entries]                                     # validates `at`
    write_key_file(args.file, entries)
    when = next(e.expires_at for e in entries if e.id == args.id)
    shown = "never" if when is None else format_expiry(when)
    emit(args, {"id": args.id, "expires_at": None if when is None else shown},
         lambda: f"key {args.id!r} expires: {shown}; run `boute keys apply --file "
                 f"{args.file}` to tell the running router")
    return 0


def _run_revoke(args: argparse.Namespace) -> int:
    from app.guard import write_key_file
    from boute._shared import emit

    entries = _entries(args.file)
    kept = [e for e in entries if e.id != args.id]
    if len(kept) == len(entries):
        raise BouteError(f"--id={args.id!r} is not in {args.file}; `boute keys list --file "
                         f"{args.file}` shows the ids")
    write_key_file(args.file, kept)
    emit(args, {"revoked": args.id}, lambda: f"revoked {args.id!r}; run `boute keys apply "
          f"--file {args.file}` to take it off the running router")
    return 0


def _run_apply(args: argparse.Namespace) -> int:
    from app.deploy import apply_api_keys
    from app.serve_api import ServeApi
    from boute._shared import emit

    entries = _entries(args.file)
    apply_api_keys(ServeApi(args.dashboard), [e.to_dict() for e in entries], app=args.app)
    emit(args, {"applied": [e.id for e in entries]},
          lambda: f"the router now accepts {len(entries)} key(s): "
                  f"{', '.join(e.id for e in entries) or 'none'}")
    return 0
