"""Reading the request log (`read_log`, `read_log_report`) and its refusal counts."""

from __future__ import annotations

import collections
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ._log_files import (
    FILE,
    FIRST,
    LAST,
    REFUSED_FILE,
    REFUSED_SCHEMA,
    conform,
    covers,
    files_of,
    is_live,
    read_wal,
    to_refused_table,
    to_table,
)
from ._log_recovery import RecoveryReport, recover_log
from ._log_retention import DroppedLog, read_dropped


@dataclass(frozen=True)
class ReadReport:
    """What `read_log_report` read, and what it could not.

    Attributes:
        recovery: the `recover_log` run that preceded the read.
        live_rows: rows read from live writers' WAL (not yet in a closed Parquet file).
        in_quarantine: every file under ``quarantine/`` (never read; delete them once checked).
        unreadable: Parquet files that failed to read (a writer that died during the read).
        refused: refusal-count rows (`REFUSED_SCHEMA`, ``interval_start_s`` at or after
            ``since_s``): ``count`` is every refusal of the interval's (status, outcome,
            key_id), ``sampled`` the ones also in the table as full rows.
        dropped: what retention dropped from the folder so far (``retention.json``).

    """

    recovery: RecoveryReport
    live_rows: int = 0
    in_quarantine: tuple[Path, ...] = ()
    unreadable: tuple[Path, ...] = ()
    refused: pa.Table = field(default_factory=REFUSED_SCHEMA.empty_table)
    dropped: DroppedLog = field(default_factory=DroppedLog)

    def refused_total(self) -> dict[tuple[int, str], int]:
        """Refusals per (status, outcome), exact (summed over intervals and key ids)."""
        out: dict[tuple[int, str], int] = collections.Counter()
        for s, o, c in zip(self.refused["status"].to_pylist(),
                           self.refused["outcome"].to_pylist(),
                           self.refused["count"].to_pylist(), strict=True):
            out[(int(s), str(o))] += int(c)
        return dict(out)


def read_log_report(folder: str | Path, since_s: float | None = None) -> tuple[
        pa.Table, ReadReport]:
    """Every record of `folder` (``arrival_s >= since_s``) and a report of what was not read.

    Runs `recover_log` first, then reads live writers' WAL segments, then all Parquet files
    (in that order, so a record moved from WAL to Parquet meanwhile is seen at least once;
    duplicates are dropped by ``seq``). Files written before ``key_id``/``outcome`` existed
    read with ``key_id`` null and ``outcome`` from the status (ok, client_error, engine_error);
    before ``workload`` (``length_class``), with it null. The table holds request rows only
    (sampled refusals included); the refusal counts and what retention dropped are in the
    report.

    Raises:
        FileNotFoundError: `folder` holds no readable log file and no live writer's record.

    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no readable request log under {folder}")
    recovery = recover_log(folder)
    live = set(recovery.live_writers)
    wal_rows: dict[tuple[str, int], tuple[Any, ...]] = {}
    wal_counts: dict[tuple[str, int], tuple[Any, ...]] = {}
    dropped = 0
    for wid in sorted(live):
        for w in files_of(folder, wid, ".wal"):
            try:
                got, got_counts, d = read_wal(w, live=True)
            except FileNotFoundError:               # retired: its rows are in Parquet now
                continue
            dropped += d
            wal_rows.update(((wid, r[0]), r) for r in got)
            wal_counts.update(((wid, r[0]), r) for r in got_counts)
    tables, unreadable = [], []
    covered: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for p in sorted(folder.glob("requests-*.parquet")):
        m = FILE.match(p.name)
        try:
            with pq.ParquetFile(p) as f:
                tables.append(conform(f.read()))
                kv, n = f.metadata.metadata or {}, f.metadata.num_rows
        except (pa.ArrowException, OSError, ValueError):
            if not (m and (m[1] in live or is_live(folder, m[1]))):
                unreadable.append(p)                # else: the file a live writer has open
            continue
        if m and FIRST in kv:
            first = int(kv[FIRST])
            covered[m[1]].append((first, int(kv.get(LAST, first + n - 1))))
    refused, counts_covered = _read_counts(folder, live, unreadable)
    fresh = [r for (wid, s), r in sorted(wal_rows.items()) if not covers(covered[wid], s)]
    if fresh:
        table, bad = to_table(fresh)
        dropped += bad
        if table is not None:
            tables.append(table)
    fresh_counts = [r for (wid, s), r in sorted(wal_counts.items())
                    if not covers(counts_covered[wid], s)]
    if fresh_counts:
        counted, bad = to_refused_table(fresh_counts)
        dropped += bad
        if counted is not None:
            refused.append(counted)
    quarantine = folder / "quarantine"
    in_quarantine = tuple(sorted(quarantine.iterdir())) if quarantine.is_dir() else ()
    refused_table = pa.concat_tables(refused) if refused else REFUSED_SCHEMA.empty_table()
    if since_s is not None:
        refused_table = refused_table.filter(
            pc.greater_equal(refused_table["interval_start_s"], since_s))
    report = ReadReport(recovery, len(fresh), in_quarantine, tuple(unreadable), refused_table,
                        read_dropped(folder))
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


def _read_counts(folder: Path, live: set[str], unreadable: list[Path]) -> tuple[
        list[pa.Table], dict[str, list[tuple[int, int]]]]:
    """The closed ``refused-`` files' tables and seq ranges per writer (unreadable: listed)."""
    tables = []
    covered: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for p in sorted(folder.glob("refused-*.parquet")):
        m = REFUSED_FILE.match(p.name)
        try:
            with pq.ParquetFile(p) as f:
                tables.append(f.read().select(REFUSED_SCHEMA.names).cast(REFUSED_SCHEMA))
                kv, n = f.metadata.metadata or {}, f.metadata.num_rows
        except (pa.ArrowException, OSError, ValueError, KeyError):
            if not (m and (m[1] in live or is_live(folder, m[1]))):
                unreadable.append(p)
            continue
        if m and FIRST in kv:
            first = int(kv[FIRST])
            covered[m[1]].append((first, int(kv.get(LAST, first + n - 1))))
    return tables, covered


def read_log(folder: str | Path, since_s: float | None = None) -> pa.Table:
    """`read_log_report` without the report (what was not read is named on stderr).

    Raises:
        FileNotFoundError: `folder` holds no readable log file and no live writer's record.

    """
    return read_log_report(folder, since_s)[0]
