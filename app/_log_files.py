"""The request log's files: schemas, names, WAL lines, table conversion and file locks.

Shared by the writer (`app._log_writer`), the recovery (`app._log_recovery`), the retention
(`app._log_retention`) and the reader (`app._log_reader`); `app.request_log` is the facade.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from common.errors import BouteError

SCHEMA = pa.schema([
    ("arrival_s", pa.float64()), ("prompt_tokens", pa.int32()),
    ("output_tokens", pa.int32()), ("score", pa.float32()), ("model", pa.string()),
    ("group", pa.string()), ("ttft_s", pa.float32()), ("latency_s", pa.float32()),
    ("status", pa.int16()), ("stream", pa.bool_()), ("key_id", pa.string()),
    ("outcome", pa.string()), ("workload", pa.string()), ("length_class", pa.string()),
])
# One row per (interval, status, outcome, key_id) of refusals (`SAMPLED_OUTCOMES`): ``count``
# of them in all (exact), ``sampled`` of which were written as full `SCHEMA` rows.
REFUSED_SCHEMA = pa.schema([
    ("interval_start_s", pa.float64()), ("interval_s", pa.float32()), ("status", pa.int16()),
    ("outcome", pa.string()), ("key_id", pa.string()), ("count", pa.int64()),
    ("sampled", pa.int64()),
])
# ok; client_error (4xx) / engine_error (5xx); shed (429 from admission control); abandoned
# (the client disconnected); degraded (served by another model); unauthorized; rate_limited
# (the key's quota); too_large (the request exceeds a limit).
OUTCOMES = frozenset({"ok", "client_error", "engine_error", "shed", "abandoned", "degraded",
                      "unauthorized", "rate_limited", "too_large", "unavailable",
                      "internal_error"})
# Refusals before routing (group "") that are counted and sampled, not each written: what a
# client can send at any rate without a valid key or quota. Not ``shed`` (admission control's
# 429: the replan job reads each one as demand) nor ``unavailable`` (the router's own state).
SAMPLED_OUTCOMES = frozenset({"unauthorized", "rate_limited", "too_large", "client_error"})
REFUSED_TAG = "refused"     # a WAL line [seq, "refused", <REFUSED_SCHEMA columns>]
WAL_COLUMNS = ("seq", *SCHEMA.names)
REQUIRED = SCHEMA.names[:10]                    # files written before key_id / outcome existed
FILE = re.compile(r"^requests-(\d+-\d+)-(\d+)\.(parquet|wal)$")
REFUSED_FILE = re.compile(r"^refused-(\d+-\d+)-(\d+)\.parquet$")
LOCK = re.compile(r"^requests-(\d+-\d+)\.lock$")
FIRST, LAST = b"boute.first_seq", b"boute.last_seq"
encode = json.JSONEncoder(separators=(",", ":")).encode


class RequestLogError(BouteError, ValueError):
    """A request log setting is out of range, a record is malformed, or the log is closed."""


def is_refused_row(row: tuple[Any, ...]) -> bool:
    """Whether a buffered / WAL row is a refusal count (``[seq, "refused", ...]``)."""
    return type(row[1]) is str


def files_of(folder: Path, wid: str, suffix: str) -> list[Path]:
    """Writer `wid`'s ``requests-`` files ending in `suffix`, in index order."""
    return sorted(p for p in folder.glob(f"requests-{wid}-*{suffix}")
                  if (m := FILE.match(p.name)) and m[1] == wid)


def refused_files_of(folder: Path, wid: str) -> list[Path]:
    """Writer `wid`'s ``refused-`` (count) files, in index order."""
    return sorted(p for p in folder.glob(f"refused-{wid}-*.parquet")
                  if (m := REFUSED_FILE.match(p.name)) and m[1] == wid)


def read_wal(path: Path, *, live: bool) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]],
                                                 int]:
    """(request records, refusal-count records, torn or corrupt lines dropped) of a segment.

    A live writer's unterminated last line is a record being written: skipped, not counted.
    """
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()                              # b"" when the last line is complete
    dropped = 0 if live or not tail else 1
    if not lines:
        return [], [], dropped
    try:
        columns = json.loads(lines[0])["columns"]
        index = [columns.index(c) if c in columns else None for c in WAL_COLUMNS]
        if index[0] is None:
            raise ValueError("no seq column")
    except (ValueError, KeyError, TypeError):
        return [], [], dropped + len(lines)
    rows, counts = [], []
    width = 2 + len(REFUSED_SCHEMA)
    for line in lines[1:]:
        try:
            v = json.loads(line)
            if not isinstance(v, list):
                raise ValueError(line)
            if len(v) == width and v[1] == REFUSED_TAG:
                counts.append(tuple(v))
                continue
            if len(v) != len(columns):
                raise ValueError(line)
        except ValueError:
            dropped += 1
            continue
        rows.append(tuple(None if i is None else v[i] for i in index))
    return rows, counts, dropped


def conform(table: pa.Table) -> pa.Table:
    """`table` in `SCHEMA` (files of older versions lack key_id, outcome and workload)."""
    missing = set(REQUIRED) - set(table.column_names)
    if missing:
        raise ValueError(f"not a request log: lacks {sorted(missing)}")
    table = table.select([n for n in SCHEMA.names if n in table.column_names])
    if "key_id" not in table.column_names:
        table = table.append_column("key_id", pa.nulls(table.num_rows, pa.string()))
    if "outcome" not in table.column_names:
        status = table["status"]
        outcome = pc.if_else(pc.less(status, 400), "ok", pc.if_else(
            pc.greater_equal(status, 500), "engine_error", "client_error"))
        table = table.append_column("outcome", outcome)
    for name in ("workload", "length_class"):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
    return table.cast(SCHEMA)


def to_table(rows: list[tuple[Any, ...]], schema: pa.Schema = SCHEMA, skip: int = 1
             ) -> tuple[pa.Table | None, int]:
    """`rows` less those of wrong types, as a `schema` table; how many those were.

    Each row holds `skip` leading values that are not columns (``seq``; ``seq, "refused"``
    for `REFUSED_SCHEMA` rows). The table is None when no row is left.
    """
    def convert(rows: list[tuple[Any, ...]]) -> pa.Table:
        cols = list(zip(*rows, strict=True))
        return pa.Table.from_arrays([pa.array(cols[i + skip], type=f.type)
                                     for i, f in enumerate(schema)], schema=schema)

    good = rows
    try:
        return (convert(rows) if rows else None), 0
    except (pa.ArrowException, TypeError, ValueError):
        good = []
        for r in rows:
            with contextlib.suppress(pa.ArrowException, TypeError, ValueError):
                convert([r])
                good.append(r)
    return (convert(good) if good else None), len(rows) - len(good)


def to_refused_table(rows: list[tuple[Any, ...]]) -> tuple[pa.Table | None, int]:
    """`to_table` of refusal-count rows (``[seq, "refused", <REFUSED_SCHEMA columns>]``)."""
    return to_table(rows, REFUSED_SCHEMA, 2)


def covers(ranges: list[tuple[int, int]], seq: int) -> bool:
    """Whether `seq` is inside one of the inclusive `ranges`."""
    return any(lo <= seq <= hi for lo, hi in ranges)


def flock(path: Path, *, wait: bool) -> int | None:
    """An fd holding an exclusive flock on `path` (created), or None if another holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)                            # unlinked by its recoverer meanwhile: retry


def is_live(folder: Path, wid: str) -> bool:
    """Whether writer `wid` holds its lock now (a writer started after `recover_log` ran)."""
    try:
        fd = os.open(folder / f"requests-{wid}.lock", os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def fsync_path(path: Path) -> None:
    """Flush a file or a directory to disk (by path)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
