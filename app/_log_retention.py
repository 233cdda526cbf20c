"""Retention of the request log: drop closed Parquet files by age and by total size.

A *unit* is one closed file index of one writer: ``requests-{writer}-{n}.parquet`` and, when
it has one, ``refused-{writer}-{n}.parquet`` (its refusal counts); a unit is dropped whole.
Its age is ``now_s - mtime`` of its newest file (a file's mtime is when its last row group
was written, i.e. about when its newest row arrived).

Rules (`apply_retention`), in order:

* R1 (age): every unit with ``now_s - mtime > retain_s`` is dropped;
* R2 (size): while the units' total size exceeds ``max_bytes``, the oldest unit (mtime, then
  name) is dropped;
* R3 (never): a live writer's newest index (it may be the file it has open), quarantined and
  foreign files, WAL segments (they live at most ``rotate_s`` + ``flush_s`` past their rows'
  Parquet close) are never dropped, so the folder may exceed ``max_bytes`` by at most one
  open file per live writer plus its WAL.

What was dropped is counted in ``retention.json`` (cumulative files, rows, bytes, per rule,
and the last `KEEP_LAST` drops), read back by `read_dropped` and `read_log_report`.
Passes are serialized by an flock on ``retention.flock`` (several writers may share a folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ._log_files import FILE, LOCK, REFUSED_FILE, flock, is_live

KEEP_LAST = 50          # drops listed one by one in retention.json (the rest: totals only)
RETENTION_FILE = "retention.json"


@dataclass(frozen=True)
class DroppedFile:
    """One file retention dropped.

    Attributes:
        name: the file's name in the log folder.
        reason: ``"age"`` (R1) or ``"size"`` (R2).
        rows: its rows (from its footer; 0 when unreadable).
        size_bytes: its size.
        mtime_s: its modification time (unix s).
        dropped_s: when it was dropped (unix s, the retention clock).

    """

    name: str
    reason: str
    rows: int
    size_bytes: int
    mtime_s: float
    dropped_s: float


@dataclass(frozen=True)
class DroppedLog:
    """Everything retention dropped from a folder so far (``retention.json``).

    Attributes:
        files: files dropped in all.
        rows: their rows (request rows and refusal-count rows).
        size_bytes: their bytes.
        by_reason: files dropped per rule (``age``, ``size``).
        last: the last `KEEP_LAST` drops, oldest first.

    """

    files: int = 0
    rows: int = 0
    size_bytes: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    last: tuple[DroppedFile, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """As ``retention.json`` holds it."""
        return {"files": self.files, "rows": self.rows, "size_bytes": self.size_bytes,
                "by_reason": dict(self.by_reason),
                "last": [vars(d) for d in self.last]}


def read_dropped(folder: str | Path) -> DroppedLog:
    """What retention dropped from `folder` so far (empty when nothing; unreadable: empty)."""
    try:
        data = json.loads((Path(folder) / RETENTION_FILE).read_text())
        return DroppedLog(int(data["files"]), int(data["rows"]), int(data["size_bytes"]),
                          {str(k): int(v) for k, v in data["by_reason"].items()},
                          tuple(DroppedFile(**d) for d in data["last"]))
    except (OSError, ValueError, KeyError, TypeError):
        return DroppedLog()


def apply_retention(folder: str | Path, *, retain_s: float | None, max_bytes: int | None,
                    now_s: float) -> tuple[DroppedFile, ...]:
    """Drop units by the module's rules R1-R3; the files dropped by this pass.

    Args:
        folder: the log folder.
        retain_s: R1's age bound in seconds (None: no age bound).
        max_bytes: R2's bound on the units' total size (None: no size bound).
        now_s: the clock (unix s; injected by tests).

    """
    folder = Path(folder)
    if (retain_s is None and max_bytes is None) or not folder.is_dir():
        return ()
    lock = flock(folder / "retention.flock", wait=True)
    assert lock is not None
    try:
        units = _units(folder)
        dropped: list[DroppedFile] = []
        total = sum(size for _, _, size, _ in units)
        keep = []
        for unit in units:                                          # R1
            mtime, _, size, files = unit
            if retain_s is not None and now_s - mtime > retain_s:
                dropped += _drop(files, "age", now_s)
                total -= size
            else:
                keep.append(unit)
        for _, _, size, files in keep:                              # R2, oldest first
            if max_bytes is None or total <= max_bytes:
                break
            dropped += _drop(files, "size", now_s)
            total -= size
        if dropped:
            _remember(folder, dropped)
        return tuple(dropped)
    finally:
        os.close(lock)


def _units(folder: Path) -> list[tuple[float, str, int, list[Path]]]:
    """(mtime, name, bytes, files) of every droppable unit (R3), oldest first."""
    groups: dict[tuple[str, int], list[Path]] = {}
    writers = set()
    for p in folder.iterdir():
        m = FILE.match(p.name) or REFUSED_FILE.match(p.name)
        if m and p.name.endswith(".parquet"):
            groups.setdefault((m[1], int(m[2])), []).append(p)
        elif m := LOCK.match(p.name):
            writers.add(m[1])
    newest: dict[str, int] = {}
    for wid, n in groups:
        newest[wid] = max(n, newest.get(wid, -1))
    live = {wid for wid in writers if is_live(folder, wid)}
    units = []
    for (wid, n), files in groups.items():
        if wid in live and n == newest[wid]:                        # R3: maybe open
            continue
        try:
            stats = [p.stat() for p in files]
        except FileNotFoundError:                                   # dropped meanwhile
            continue
        units.append((max(s.st_mtime for s in stats), f"{wid}-{n:012d}",
                      sum(s.st_size for s in stats), sorted(files)))
    return sorted(units, key=lambda u: (u[0], u[1]))


def _drop(files: list[Path], reason: str, now_s: float) -> list[DroppedFile]:
    out = []
    for p in files:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        try:
            rows = pq.read_metadata(p).num_rows
        except (pa.ArrowException, OSError, ValueError):
            rows = 0
        p.unlink(missing_ok=True)
        out.append(DroppedFile(p.name, reason, rows, st.st_size, st.st_mtime, now_s))
    return out


def _remember(folder: Path, dropped: list[DroppedFile]) -> None:
    """Add `dropped` to ``retention.json`` (atomically; under the retention lock)."""
    old = read_dropped(folder)
    by_reason = dict(old.by_reason)
    for d in dropped:
        by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
    new = DroppedLog(old.files + len(dropped), old.rows + sum(d.rows for d in dropped),
                     old.size_bytes + sum(d.size_bytes for d in dropped), by_reason,
                     (*old.last, *dropped)[-KEEP_LAST:])
    tmp = folder / f".{RETENTION_FILE}.tmp"
    tmp.write_text(json.dumps(new.to_json(), indent=1) + "\n")
    os.replace(tmp, folder / RETENTION_FILE)
