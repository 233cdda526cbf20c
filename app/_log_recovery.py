"""Recovery of dead writers' files (`recover_log`): WAL -> Parquet, torn files quarantined."""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ._log_files import (
    FILE,
    FIRST,
    LAST,
    LOCK,
    REFUSED_FILE,
    REFUSED_SCHEMA,
    REQUIRED,
    covers,
    files_of,
    flock,
    fsync_path,
    is_live,
    read_wal,
    refused_files_of,
    to_refused_table,
    to_table,
)


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
        recovered_counts: refusal-count rows (`REFUSED_SCHEMA`) written from WAL segments.

    """

    recovered_writers: tuple[str, ...] = ()
    recovered_rows: int = 0
    written: tuple[Path, ...] = ()
    quarantined: tuple[Path, ...] = ()
    dropped_lines: int = 0
    live_writers: tuple[str, ...] = ()
    recovered_counts: int = 0


def recover_log(folder: str | Path) -> RecoveryReport:
    """Turn dead writers' WAL segments into Parquet; quarantine torn and foreign files.

    Safe while other writers live in `folder` (their lock is held: they are left alone) and
    while other processes recover it (each dead writer is recovered under its lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return RecoveryReport()
    owned: dict[str, list[Path]] = collections.defaultdict(list)
    counted: dict[str, list[Path]] = collections.defaultdict(list)
    locks, orphans = set(), []
    for p in folder.iterdir():
        if m := FILE.match(p.name):
            owned[m[1]].append(p)
        elif m := REFUSED_FILE.match(p.name):
            counted[m[1]].append(p)
        elif m := LOCK.match(p.name):
            locks.add(m[1])
        elif p.name.startswith("requests-") and p.name.endswith(".parquet"):
            orphans.append(p)
    acc = _Acc()
    for wid in sorted(set(owned) | set(counted) | locks):
        if wid not in locks:                # closed cleanly (or legacy): only torn files
            check_parquet(folder, owned[wid], acc, wid)
            check_parquet(folder, counted[wid], acc, wid, REFUSED_SCHEMA.names)
            continue
        fd = flock(folder / f"requests-{wid}.lock", wait=False)
        if fd is None:
            acc.live.append(wid)
            continue
        try:
            _recover_writer(folder, wid, acc)
        finally:
            (folder / f"requests-{wid}.lock").unlink(missing_ok=True)
            os.close(fd)
    check_parquet(folder, orphans, acc, None)
    return RecoveryReport(tuple(acc.writers), acc.rows, tuple(acc.written),
                          tuple(acc.quarantined), acc.dropped, tuple(acc.live), acc.counts)


@dataclass
class _Acc:
    """`RecoveryReport`, being built."""

    writers: list[str] = field(default_factory=list)
    rows: int = 0
    written: list[Path] = field(default_factory=list)
    quarantined: list[Path] = field(default_factory=list)
    dropped: int = 0
    live: list[str] = field(default_factory=list)
    counts: int = 0


def _write_atomic(folder: Path, path: Path, table: pa.Table, first: int, last: int) -> None:
    """Write `table` (seq range first..last) to `path` via a fsync-ed temporary file."""
    tmp = folder / f".{path.name}.tmp"
    pq.write_table(table.replace_schema_metadata(
        {FIRST: str(first).encode(), LAST: str(last).encode()}), tmp)
    fsync_path(tmp)
    os.replace(tmp, path)                           # then the WAL goes: never neither
    fsync_path(folder)


def _write_recovered(folder: Path, path: Path, rows: dict[int, tuple[Any, ...]],
                     convert: Callable[[list[tuple[Any, ...]]], tuple[pa.Table | None, int]],
                     acc: _Acc) -> int:
    """Write the recovered `rows` (seq -> row) in seq order to `path`; the rows written.

    Lines of the wrong types are dropped by `convert` and counted in ``acc.dropped``.
    """
    ordered = [rows[s] for s in sorted(rows)]
    table, bad = convert(ordered)
    acc.dropped += bad
    if table is None:
        return 0
    _write_atomic(folder, path, table, ordered[0][0], ordered[-1][0])
    acc.written.append(path)
    return int(table.num_rows)


def _recover_writer(folder: Path, wid: str, acc: _Acc) -> None:
    """Recover dead writer `wid` (its lock is held): WAL rows not in its Parquet files.

    Request rows are covered by its ``requests-`` files' seq ranges, refusal counts by its
    ``refused-`` files' (each family is recovered on its own, so a kill between the two
    closes of a rotation neither loses nor doubles a count).
    """
    parquet, wals = files_of(folder, wid, ".parquet"), files_of(folder, wid, ".wal")
    counted = refused_files_of(folder, wid)
    for pattern in (f".requests-{wid}-*.tmp", f".refused-{wid}-*.tmp"):
        for tmp in folder.glob(pattern):
            tmp.unlink(missing_ok=True)             # a recovery that was itself killed
    covered = check_parquet(folder, parquet, acc, None)
    covered_counts = check_parquet(folder, counted, acc, None, REFUSED_SCHEMA.names)
    rows: dict[int, tuple[Any, ...]] = {}
    counts: dict[int, tuple[Any, ...]] = {}
    for w in wals:
        got, got_counts, dropped = read_wal(w, live=False)
        acc.dropped += dropped
        rows.update((r[0], r) for r in got if not covers(covered, r[0]))
        counts.update((r[0], r) for r in got_counts if not covers(covered_counts, r[0]))
    n = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in (*parquet, *counted)), default=-1)
    acc.counts += _write_recovered(folder, folder / f"refused-{wid}-{n:04d}.parquet", counts,
                                   to_refused_table, acc)
    acc.rows += _write_recovered(folder, folder / f"requests-{wid}-{n:04d}.parquet", rows,
                                 to_table, acc)
    for w in wals:
        w.unlink(missing_ok=True)
    if wals:
        acc.writers.append(wid)


def check_parquet(folder: Path, files: list[Path], acc: _Acc, wid: str | None,
                  required: list[str] = REQUIRED) -> list[tuple[int, int]]:
    """Quarantine the unreadable or foreign ones; the seq ranges of the others.

    `wid`: the writer of `files` when its lock is not held here (a torn file of a writer found
    live after all, one that started during the folder scan, is left alone).
    """
    covered = []
    for p in files:
        try:
            md = pq.read_metadata(p)
            names = set(md.schema.to_arrow_schema().names)
            if not set(required) <= names:
                raise ValueError(f"lacks columns {sorted(set(required) - names)}")
        except (pa.ArrowException, OSError, ValueError):
            if p.exists() and not (wid is not None and is_live(folder, wid)):
                acc.quarantined.append(_quarantine(folder, p))
            continue
        kv = md.metadata or {}
        if FIRST in kv:
            first = int(kv[FIRST])
            covered.append((first, int(kv.get(LAST, first + md.num_rows - 1))))
    return covered


def _quarantine(folder: Path, path: Path) -> Path:
    (folder / "quarantine").mkdir(exist_ok=True)
    dest = folder / "quarantine" / path.name
    while dest.exists():
        dest = dest.with_name(dest.name + ".1")
    os.replace(path, dest)
    return dest
