"""The request log: one Parquet row per request the router answered; a killed router loses none.

Each `RequestLog` is one *writer* with a unique id ``{start_unix_ms}-{pid}``; its files in the
log folder are

* ``requests-{writer}.lock``: `fcntl.flock`-ed for the writer's whole life (the kernel drops
  the lock when the process dies, even by SIGKILL): a lock that can be taken marks a dead writer;
* ``requests-{writer}-{n:04d}.wal``: the write-ahead log, a JSON header line then one JSON array
  per record (``[seq, <SCHEMA columns>]``), appended by `record` with one `os.write` on an
  ``O_APPEND`` descriptor: no user-space buffer, so what `record` returned from is in the OS page
  cache and survives a kill of the process. JSON lines, not an Arrow IPC stream: one line costs a
  C-encoder call (Arrow needs a record batch of ~1 KiB metadata per row to write it at once), and
  a line torn by a kill is easy to find and drop;
* ``requests-{writer}-{n:04d}.parquet``: the same rows, written as row groups every ``flush_s``
  from an in-memory buffer in a thread (the event loop never waits on Parquet) and rotated after
  ``rotate_bytes`` or ``rotate_s``. Its footer metadata ``boute.first_seq``, ``boute.last_seq``
  give the ``seq`` range it holds (rows reach Parquet in ``seq`` order).

A WAL segment is deleted only once every record in it is in a closed (and fsync-ed) Parquet
file, so each record is, at every instant, in a closed Parquet file or a WAL segment, or both.
Loss bounds: a killed process loses nothing `record` returned from (at most the one record being
written, torn); a machine crash loses what `record` wrote in the last ``fsync_s`` seconds (WAL
fsync-ed by the background task; ``fsync_s=None``: no fsync, only process kills are covered).

`recover_log` (run by each new `RequestLog` and by `read_log`) turns the WAL of every dead writer
into a Parquet file (rows not already in one of its closed Parquet files), moves its torn Parquet
file (no footer) and any foreign file into ``quarantine/``, and drops (and counts) torn WAL lines.
`read_log` also reads the WAL of live writers, so it sees every record written so far, and names
on stderr what it could not read. `record` is not thread-safe: call it from one thread (the event
loop). Schema (`SCHEMA`): arrival_s (unix s), prompt_tokens, output_tokens, score (NaN when
pinned), model, group, ttft_s, latency_s, status (HTTP), stream, key_id (the API key's id, never
the key; null when none), outcome (one of `OUTCOMES`), workload (the routed request's workload;
null when pinned or refused before routing), length_class (short / long when the plan splits
requests by length; null otherwise).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.errors import BouteError

__all__ = ["OUTCOMES", "SCHEMA", "ReadReport", "RecoveryReport", "RequestLog",
           "RequestLogError", "read_log", "read_log_report", "recover_log"]

SCHEMA = pa.schema([
    ("arrival_s", pa.float64()), ("prompt_tokens", pa.int32()),
    ("output_tokens", pa.int32()), ("score", pa.float32()), ("model", pa.string()),
    ("group", pa.string()), ("ttft_s", pa.float32()), ("latency_s", pa.float32()),
    ("status", pa.int16()), ("stream", pa.bool_()), ("key_id", pa.string()),
    ("outcome", pa.string()), ("workload", pa.string()), ("length_class", pa.string()),
])
# ok; client_error (4xx) / engine_error (5xx); shed (429 from admission control); abandoned
# (the client disconnected); degraded (served by another model); unauthorized; rate_limited
# (the key's quota); too_large (the request exceeds a limit).
OUTCOMES = frozenset({"ok", "client_error", "engine_error", "shed", "abandoned", "degraded",
                      "unauthorized", "rate_limited", "too_large", "unavailable",
                      "internal_error"})
_WAL_COLUMNS = ("seq", *SCHEMA.names)
_REQUIRED = SCHEMA.names[:10]                   # files written before key_id / outcome existed
_FILE = re.compile(r"^requests-(\d+-\d+)-(\d+)\.(parquet|wal)$")
_LOCK = re.compile(r"^requests-(\d+-\d+)\.lock$")
_FIRST, _LAST = b"boute.first_seq", b"boute.last_seq"
_encode = json.JSONEncoder(separators=(",", ":")).encode
_ids = threading.Lock()
_last_ms = 0


class RequestLogError(BouteError, ValueError):
    """A request log setting is out of range, a record is malformed, or the log is closed."""


@dataclass(frozen=True)
class RecoveryReport:
    """What `recover_log` did to a log folder.

    Attributes:
        recovered_writers: ids of dead writers whose files were recovered.
        recovered_rows: WAL rows written to new Parquet files (not already in a closed one).
        written: the Parquet files written from WAL segments.
        quarantined: files moved into ``quarantine/`` (torn Parquet files, foreign files).
        dropped_lines: torn or corrupt WAL lines dropped (a killed writer's last line).
        live_writers: ids of writers alive now (their files were left alone).

    """

    recovered_writers: tuple[str, ...] = ()
    recovered_rows: int = 0
    written: tuple[Path, ...] = ()
    quarantined: tuple[Path, ...] = ()
    dropped_lines: int = 0
    live_writers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReadReport:
    """What `read_log_report` read, and what it could not.

    Attributes:
        recovery: the `recover_log` run that preceded the read.
        live_rows: rows read from live writers' WAL (not yet in a closed Parquet file).
        in_quarantine: every file under ``quarantine/`` (never read; delete them once checked).
        unreadable: Parquet files that failed to read (a writer that died during the read).

    """

    recovery: RecoveryReport
    live_rows: int = 0
    in_quarantine: tuple[Path, ...] = ()
    unreadable: tuple[Path, ...] = ()


class RequestLog:
    """A request-log writer with a write-ahead log (see the module docstring).

    Args:
        folder: the log folder (created); several writers may share it.
        flush_s: period of the Parquet flush of `run`.
        max_buffer: rows held in memory before `record` writes them synchronously.
        rotate_bytes: Parquet file size that starts a new file.
        rotate_s: Parquet file age that starts a new file (bounds how long WAL segments stay).
        wal: write the WAL (False: Parquet only, a kill loses the unflushed rows).
        fsync_s: WAL fsync period of `run` (None: never; a machine crash may lose the page cache).
        recover: run `recover_log` on the folder (dead writers' files) at start.

    Raises:
        RequestLogError: a setting is out of range.

    """

    def __init__(self, folder: str | Path, *, flush_s: float = 1.0, max_buffer: int = 20_000,
                 rotate_bytes: int = 64 << 20, rotate_s: float = 300.0, wal: bool = True,
                 fsync_s: float | None = 0.1, recover: bool = True) -> None:
        for name, value in (("flush_s", flush_s), ("max_buffer", max_buffer),
                            ("rotate_bytes", rotate_bytes), ("rotate_s", rotate_s),
                            ("fsync_s", 1.0 if fsync_s is None else fsync_s)):
            if not value > 0:
                raise RequestLogError(f"RequestLog: {name}={value!r} must be > 0")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flush_s, self.max_buffer, self.fsync_s = flush_s, max_buffer, fsync_s
        self.rotate_bytes, self.rotate_s = rotate_bytes, rotate_s
        self.writer_id = _new_writer_id()
        self.recovery = recover_log(self.folder) if recover else RecoveryReport()
        self._lock_path = self.folder / f"requests-{self.writer_id}.lock"
        lock_fd = _flock(self._lock_path, wait=True)    # held until close or death
        assert lock_fd is not None
        self._lock_fd = lock_fd
        self._rows: list[tuple[Any, ...]] = []
        self._pending: collections.deque[list[tuple[Any, ...]]] = collections.deque()
        self._lock = threading.Lock()       # Parquet writes, in `_pending` (= seq) order
        self._wal_lock = threading.Lock()   # the WAL descriptor vs the fsync thread
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._opened, self._seq, self._file_last = 0.0, 0, -1
        self._next, self._durable, self._synced = 0, 0, 0   # seq: next, all below in Parquet
        self._closes = self._seg_closes = 0
        self._wal_fd, self._wal_n, self._seg_first = -1, 0, 0
        self._wal_path = self.folder / "-"
        self._segments: list[tuple[Path, int]] = []         # closed segments, last seq
        self._closed = False
        self.written = 0
        self.dropped = 0            # rows of the wrong types (annotations not followed)
        self.files: list[Path] = []
        if wal:
            self._open_segment()

    def __len__(self) -> int:
        """Rows waiting in memory."""
        return len(self._rows)

    def record(self, arrival_s: float, prompt_tokens: int, output_tokens: int, score: float,
               model: str, group: str, ttft_s: float, latency_s: float, status: int,
               stream: bool, *, key_id: str | None = None, outcome: str = "ok",
               workload: str | None = None, length_class: str | None = None) -> None:
        """Append one request's row to the WAL and the buffer (see the module docstring).

        Raises:
            RequestLogError: `outcome` is not one of `OUTCOMES`, the log is closed, or the WAL
                cannot be written (disk full).

        """
        if outcome not in OUTCOMES or self._closed:
            raise RequestLogError(f"RequestLog.record: the log at {self.folder} is closed"
                                  if self._closed else f"RequestLog.record: {outcome=} must be "
                                  f"one of {sorted(OUTCOMES)}")
        seq = self._next
        row = (seq, arrival_s, prompt_tokens, output_tokens, score, model, group, ttft_s,
               latency_s, status, stream, key_id, outcome, workload, length_class)
        if self._wal_fd >= 0:
            try:
                line = (_encode(row) + "\n").encode()
            except TypeError:                       # numpy scalars: plain Python values
                row = (seq, float(arrival_s), int(prompt_tokens), int(output_tokens),
                       float(score), str(model), str(group), float(ttft_s), float(latency_s),
                       int(status), bool(stream), key_id, outcome, workload, length_class)
                line = (_encode(row) + "\n").encode()
            try:
                while line:
                    line = line[os.write(self._wal_fd, line):]
            except OSError as exc:
                raise RequestLogError(f"request log: cannot append to {self._wal_path}: {exc}; "
                                      "free disk space in the log folder") from exc
        self._next = seq + 1
        self._rows.append(row)
        if len(self._rows) >= self.max_buffer:
            self._take()
            self._drain()

    def _take(self) -> None:
        if self._rows:
            self._pending.append(self._rows)
            self._rows = []

    def _drain(self, check_age: bool = False) -> None:
        with self._lock:
            while self._pending:
                self._write(self._pending.popleft())
            if check_age and self._writer is not None and time.time() - self._opened \
                    >= self.rotate_s:
                self._close_file()

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        now = time.time()
        if self._writer is not None and self._path is not None and (
                self._path.stat().st_size >= self.rotate_bytes
                or now - self._opened >= self.rotate_s):
            self._close_file()
        if self._writer is None:
            self._path = self.folder / f"requests-{self.writer_id}-{self._seq:04d}.parquet"
            self._seq += 1
            self._writer = pq.ParquetWriter(self._path, SCHEMA.with_metadata(
                {_FIRST: str(rows[0][0]).encode()}))
            self._opened = now
        table, bad = _to_table(rows)            # rows of the wrong types: dropped, counted
        self.dropped += bad
        if table is not None:
            self._writer.write_table(table)
        self._file_last = rows[-1][0]
        self.written += len(rows) - bad

    def _close_file(self) -> None:
        if self._writer is not None and self._path is not None:
            with contextlib.suppress(AttributeError):   # pyarrow < 14: first_seq + num_rows
                self._writer.add_key_value_metadata({_LAST: str(self._file_last).encode()})
            self._writer.close()
            if self.fsync_s is not None:        # durable before its WAL segments go
                _fsync_path(self._path)
                _fsync_path(self.folder)
            self.files.append(self._path)
            self._writer, self._path = None, None
            self._durable = self._file_last + 1
            self._closes += 1

    def _open_segment(self) -> None:
        self._wal_path = self.folder / f"requests-{self.writer_id}-{self._wal_n:04d}.wal"
        self._wal_n += 1
        fd = os.open(self._wal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        os.write(fd, (json.dumps({"boute_wal": 1, "writer": self.writer_id,
                                  "columns": _WAL_COLUMNS}) + "\n").encode())
        self._wal_fd, self._seg_first, self._seg_closes = fd, self._next, self._closes

    def _maintain_wal(self) -> None:
        """Start a new segment after a Parquet close; delete segments now all in Parquet."""
        if self._wal_fd >= 0 and self._seg_closes != self._closes \
                and self._next > self._seg_first:
            with self._wal_lock:
                os.close(self._wal_fd)
                self._segments.append((self._wal_path, self._next - 1))
                self._open_segment()
        while self._segments and self._segments[0][1] < self._durable:
            self._segments.pop(0)[0].unlink(missing_ok=True)

    def _sync(self) -> None:
        with self._wal_lock:
            if self._wal_fd >= 0:
                os.fsync(self._wal_fd)
                _fsync_path(self.folder)            # the segment's directory entry

    async def flush(self) -> None:
        """Write the waiting rows to Parquet (in a thread; the event loop keeps serving)."""
        self._take()
        await asyncio.to_thread(self._drain, True)
        self._maintain_wal()

    async def run(self) -> None:
        """Flush every ``flush_s`` and fsync the WAL every ``fsync_s`` (a background task)."""
        tick = self.flush_s if self.fsync_s is None else min(self.flush_s, self.fsync_s)
        due = time.monotonic() + self.flush_s
        while True:
            await asyncio.sleep(tick)
            if self.fsync_s is not None and self._synced != self._next:
                self._synced = self._next
                await asyncio.to_thread(self._sync)
            if time.monotonic() >= due:
                due = time.monotonic() + self.flush_s
                await self.flush()

    def close(self) -> None:
        """Write everything waiting, close the Parquet file, delete the WAL (idempotent)."""
        if self._closed:
            return
        self._take()
        self._drain()
        with self._lock:
            self._close_file()
        with self._wal_lock:
            if self._wal_fd >= 0:
                os.close(self._wal_fd)
                self._segments.append((self._wal_path, self._next - 1))
                self._wal_fd = -1
        self._durable = self._next              # every row is in a closed Parquet file
        self._maintain_wal()
        self._lock_path.unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._closed = True


def recover_log(folder: str | Path) -> RecoveryReport:
    """Turn dead writers' WAL segments into Parquet; quarantine torn and foreign files.

    Safe while other writers live in `folder` (their lock is held: they are left alone) and
    while other processes recover it (each dead writer is recovered under its lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return RecoveryReport()
    owned: dict[str, list[Path]] = collections.defaultdict(list)
    locks, orphans = set(), []
    for p in folder.iterdir():
        if m := _FILE.match(p.name):
            owned[m[1]].append(p)
        elif m := _LOCK.match(p.name):
            locks.add(m[1])
        elif p.name.startswith("requests-") and p.name.endswith(".parquet"):
            orphans.append(p)
    acc = _Acc()
    for wid in sorted(set(owned) | locks):
        if wid not in locks:                # closed cleanly (or legacy): only torn files
            _check_parquet(folder, owned[wid], acc, wid)
            continue
        fd = _flock(folder / f"requests-{wid}.lock", wait=False)
        if fd is None:
            acc.live.append(wid)
            continue
        try:
            _recover_writer(folder, wid, acc)
        finally:
            (folder / f"requests-{wid}.lock").unlink(missing_ok=True)
            os.close(fd)
    _check_parquet(folder, orphans, acc, None)
    return RecoveryReport(tuple(acc.writers), acc.rows, tuple(acc.written),
                          tuple(acc.quarantined), acc.dropped, tuple(acc.live))


@dataclass
class _Acc:
    """`RecoveryReport`, being built."""

    writers: list[str] = field(default_factory=list)
    rows: int = 0
    written: list[Path] = field(default_factory=list)
    quarantined: list[Path] = field(default_factory=list)
    dropped: int = 0
    live: list[str] = field(default_factory=list)


def _files_of(folder: Path, wid: str, suffix: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"requests-{wid}-*{suffix}")
                  if (m := _FILE.match(p.name)) and m[1] == wid)


def _recover_writer(folder: Path, wid: str, acc: _Acc) -> None:
    """Recover dead writer `wid` (its lock is held): WAL rows not in its Parquet files."""
    parquet, wals = _files_of(folder, wid, ".parquet"), _files_of(folder, wid, ".wal")
    for tmp in folder.glob(f".requests-{wid}-*.tmp"):
        tmp.unlink(missing_ok=True)                 # a recovery that was itself killed
    covered = _check_parquet(folder, parquet, acc, None)
    rows: dict[int, tuple[Any, ...]] = {}
    for w in wals:
        got, dropped = _read_wal(w, live=False)
        acc.dropped += dropped
        rows.update((r[0], r) for r in got if not _covers(covered, r[0]))
    ordered = [rows[s] for s in sorted(rows)]
    table, bad = _to_table(ordered)                 # lines of the wrong types: dropped
    acc.dropped += bad
    if table is not None:
        n = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in parquet), default=-1)
        path = folder / f"requests-{wid}-{n:04d}.parquet"
        tmp = folder / f".{path.name}.tmp"
        pq.write_table(table.replace_schema_metadata(
            {_FIRST: str(ordered[0][0]).encode(), _LAST: str(ordered[-1][0]).encode()}), tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)                       # then the WAL goes: never neither
        _fsync_path(folder)
        acc.rows += table.num_rows
        acc.written.append(path)
    for w in wals:
        w.unlink(missing_ok=True)
    if wals:
        acc.writers.append(wid)


def _check_parquet(folder: Path, files: list[Path], acc: _Acc, wid: str | None) -> list[
        tuple[int, int]]:
    """Quarantine the unreadable or foreign ones; the seq ranges of the others.

    `wid`: the writer of `files` when its lock is not held here (a torn file of a writer found
    live after all, one that started during the folder scan, is left alone).
    """
    covered = []
    for p in files:
        try:
            md = pq.read_metadata(p)
            names = set(md.schema.to_arrow_schema().names)
            if not set(_REQUIRED) <= names:
                raise ValueError(f"lacks columns {sorted(set(_REQUIRED) - names)}")
        except (pa.ArrowException, OSError, ValueError):
            if p.exists() and not (wid is not None and _is_live(folder, wid)):
                acc.quarantined.append(_quarantine(folder, p))
            continue
        kv = md.metadata or {}
        if _FIRST in kv:
            first = int(kv[_FIRST])
            covered.append((first, int(kv.get(_LAST, first + md.num_rows - 1))))
    return covered


def _quarantine(folder: Path, path: Path) -> Path:
    (folder / "quarantine").mkdir(exist_ok=True)
    dest = folder / "quarantine" / path.name
    while dest.exists():
        dest = dest.with_name(dest.name + ".1")
    os.replace(path, dest)
    return dest


def _read_wal(path: Path, *, live: bool) -> tuple[list[tuple[Any, ...]], int]:
    """The records of a WAL segment and the count of torn or corrupt lines dropped.

    A live writer's unterminated last line is a record being written: skipped, not counted.
    """
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()                              # b"" when the last line is complete
    dropped = 0 if live or not tail else 1
    if not lines:
        return [], dropped
    try:
        columns = json.loads(lines[0])["columns"]
        index = [columns.index(c) if c in columns else None for c in _WAL_COLUMNS]
        if index[0] is None:
            raise ValueError("no seq column")
    except (ValueError, KeyError, TypeError):
        return [], dropped + len(lines)
    rows = []
    for line in lines[1:]:
        try:
            v = json.loads(line)
            if not isinstance(v, list) or len(v) != len(columns):
                raise ValueError(line)
        except ValueError:
            dropped += 1
            continue
        rows.append(tuple(None if i is None else v[i] for i in index))
    return rows, dropped


def read_log_report(folder: str | Path, since_s: float | None = None) -> tuple[
        pa.Table, ReadReport]:
    """Every record of `folder` (``arrival_s >= since_s``) and a report of what was not read.

    Runs `recover_log` first, then reads live writers' WAL segments, then all Parquet files
    (in that order, so a record moved from WAL to Parquet meanwhile is seen at least once;
    duplicates are dropped by ``seq``). Files written before ``key_id``/``outcome`` existed
    read with ``key_id`` null and ``outcome`` from the status (ok, client_error, engine_error);
    before ``workload`` (``length_class``), with it null.

    Raises:
        FileNotFoundError: `folder` holds no readable log file and no live writer's record.

    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no readable request log under {folder}")
    recovery = recover_log(folder)
    live = set(recovery.live_writers)
    wal_rows: dict[tuple[str, int], tuple[Any, ...]] = {}
    dropped = 0
    for wid in sorted(live):
        for w in _files_of(folder, wid, ".wal"):
            try:
                got, d = _read_wal(w, live=True)
            except FileNotFoundError:               # retired: its rows are in Parquet now
                continue
            dropped += d
            wal_rows.update(((wid, r[0]), r) for r in got)
    tables, unreadable = [], []
    covered: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for p in sorted(folder.glob("requests-*.parquet")):
        m = _FILE.match(p.name)
        try:
            with pq.ParquetFile(p) as f:
                tables.append(_conform(f.read()))
                kv, n = f.metadata.metadata or {}, f.metadata.num_rows
        except (pa.ArrowException, OSError, ValueError):
            if not (m and (m[1] in live or _is_live(folder, m[1]))):
                unreadable.append(p)                # else: the file a live writer has open
            continue
        if m and _FIRST in kv:
            first = int(kv[_FIRST])
            covered[m[1]].append((first, int(kv.get(_LAST, first + n - 1))))
    fresh = [r for (wid, s), r in sorted(wal_rows.items()) if not _covers(covered[wid], s)]
    if fresh:
        table, bad = _to_table(fresh)
        dropped += bad
        if table is not None:
            tables.append(table)
    quarantine = folder / "quarantine"
    in_quarantine = tuple(sorted(quarantine.iterdir())) if quarantine.is_dir() else ()
    report = ReadReport(recovery, len(fresh), in_quarantine, tuple(unreadable))
    if in_quarantine or unreadable or recovery.dropped_lines or dropped:
        print(f"boute: request log {folder}: not read: {len(in_quarantine)} file(s) in "
              f"quarantine/ ({', '.join(p.name for p in in_quarantine[:5])}"
              f"{', ...' if len(in_quarantine) > 5 else ''}: torn or foreign files; a killed "
              f"writer's rows were recovered from its WAL; delete once checked), {len(unreadable)} "
              f"unreadable ({', '.join(p.name for p in unreadable[:5])}), "
              f"{recovery.dropped_lines + dropped} torn WAL line(s) dropped", file=sys.stderr)
    if not tables:
        raise FileNotFoundError(f"no readable request log under {folder}")
    table = pa.concat_tables(tables)
    if since_s is not None:
        table = table.filter(pc.greater_equal(table["arrival_s"], since_s))
    return table, report


def read_log(folder: str | Path, since_s: float | None = None) -> pa.Table:
    """`read_log_report` without the report (what was not read is named on stderr).

    Raises:
        FileNotFoundError: `folder` holds no readable log file and no live writer's record.

    """
    return read_log_report(folder, since_s)[0]


def _conform(table: pa.Table) -> pa.Table:
    """`table` in `SCHEMA` (files of older versions lack key_id, outcome and workload)."""
    missing = set(_REQUIRED) - set(table.column_names)
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


def _to_table(rows: list[tuple[Any, ...]]) -> tuple[pa.Table | None, int]:
    """`rows` (``seq`` first) less those of wrong types, as a `SCHEMA` table; how many those were.

    The table is None when no row is left.
    """
    def convert(rows: list[tuple[Any, ...]]) -> pa.Table:
        cols = list(zip(*rows, strict=True))
        return pa.Table.from_arrays([pa.array(cols[i + 1], type=f.type)
                                     for i, f in enumerate(SCHEMA)], schema=SCHEMA)

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


def _covers(ranges: list[tuple[int, int]], seq: int) -> bool:
    return any(lo <= seq <= hi for lo, hi in ranges)


def _new_writer_id() -> str:
    global _last_ms
    with _ids:
        _last_ms = max(_last_ms + 1, int(time.time() * 1000))
        return f"{_last_ms}-{os.getpid()}"


def _flock(path: Path, *, wait: bool) -> int | None:
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


def _is_live(folder: Path, wid: str) -> bool:
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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
