"""The request log: one Parquet row per request the router served, written off the hot path.

`RequestLog.record` appends a row to in-memory column lists (a few list appends: the router's
hot path pays nothing else). A background task (`RequestLog.run`, or `flush` when called)
swaps the buffer out and writes it as one row group through a thread, so the event loop never
waits on disk. Files rotate when they exceed ``rotate_bytes`` or ``rotate_s`` seconds of age:
``{folder}/requests-{start_unix_ms}-{pid}-{seq:04d}.parquet`` (a file is readable once closed, so
``rotate_s`` bounds how stale a reader's view is). Memory is bounded: when ``max_buffer``
rows are waiting, `record` writes them synchronously before returning (back-pressure, never
a dropped record). `close` flushes and closes the current file: a clean shutdown loses nothing.

Schema (`SCHEMA`): arrival_s (unix seconds), prompt_tokens, output_tokens, score (NaN when
pinned), model, group, ttft_s, latency_s, status (HTTP), stream.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["SCHEMA", "RequestLog", "read_log"]

SCHEMA = pa.schema([
    ("arrival_s", pa.float64()), ("prompt_tokens", pa.int32()),
    ("output_tokens", pa.int32()), ("score", pa.float32()), ("model", pa.string()),
    ("group", pa.string()), ("ttft_s", pa.float32()), ("latency_s", pa.float32()),
    ("status", pa.int16()), ("stream", pa.bool_()),
])
_NAMES = SCHEMA.names


class RequestLog:
    """Buffered, rotating Parquet writer of request records (see the module docstring)."""

    def __init__(self, folder: str | Path, *, flush_s: float = 1.0, max_buffer: int = 20_000,
                 rotate_bytes: int = 64 << 20, rotate_s: float = 300.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.flush_s, self.max_buffer = flush_s, max_buffer
        self.rotate_bytes, self.rotate_s = rotate_bytes, rotate_s
        self._cols: dict[str, list[Any]] = {n: [] for n in _NAMES}
        self._lock = threading.Lock()           # one writer at a time (thread or sync flush)
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._opened = 0.0
        self._seq = 0
        self.written = 0
        self.files: list[Path] = []

    def __len__(self) -> int:
        """Rows waiting in memory."""
        return len(self._cols["arrival_s"])

    def record(self, arrival_s: float, prompt_tokens: int, output_tokens: int, score: float,
               model: str, group: str, ttft_s: float, latency_s: float, status: int,
               stream: bool) -> None:
        """Append one request's row (writes synchronously only when the buffer is full)."""
        c = self._cols
        c["arrival_s"].append(arrival_s)
        c["prompt_tokens"].append(prompt_tokens)
        c["output_tokens"].append(output_tokens)
        c["score"].append(score)
        c["model"].append(model)
        c["group"].append(group)
        c["ttft_s"].append(ttft_s)
        c["latency_s"].append(latency_s)
        c["status"].append(status)
        c["stream"].append(stream)
        if len(c["arrival_s"]) >= self.max_buffer:
            self._write(self._take())

    def _take(self) -> dict[str, list[Any]]:
        cols, self._cols = self._cols, {n: [] for n in _NAMES}
        return cols

    def _write(self, cols: dict[str, list[Any]]) -> None:
        if not cols["arrival_s"]:
            return
        table = pa.table(cols, schema=SCHEMA)
        with self._lock:
            now = time.time()
            if self._writer is not None and (
                    (self._path is not None and self._path.stat().st_size >= self.rotate_bytes)
                    or now - self._opened >= self.rotate_s):
                self._close_file()
            if self._writer is None:
                self._path = self.folder / (f"requests-{int(now * 1000)}-{os.getpid()}-"
                                            f"{self._seq:04d}.parquet")
                self._seq += 1
                self._writer = pq.ParquetWriter(self._path, SCHEMA)
                self._opened = now
            self._writer.write_table(table)
            self.written += table.num_rows

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            assert self._path is not None
            self.files.append(self._path)
            self._writer, self._path = None, None

    async def flush(self) -> None:
        """Write the waiting rows (in a thread; the event loop keeps serving)."""
        await asyncio.to_thread(self._write, self._take())

    async def run(self) -> None:
        """Flush every ``flush_s`` seconds, forever (run it as a background task)."""
        while True:
            await asyncio.sleep(self.flush_s)
            await self.flush()
            with self._lock:
                if self._writer is not None and time.time() - self._opened >= self.rotate_s:
                    self._close_file()

    def close(self) -> None:
        """Write everything waiting and close the current file (idempotent)."""
        self._write(self._take())
        with self._lock:
            self._close_file()


def read_log(folder: str | Path, since_s: float | None = None) -> pa.Table:
    """All closed log files of `folder` as one table (rows with ``arrival_s >= since_s``).

    Raises:
        FileNotFoundError: `folder` holds no log file.

    """
    files = sorted(Path(folder).glob("requests-*.parquet"))
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, schema=SCHEMA))
        except (pa.ArrowInvalid, OSError):
            continue                        # the file being written, or a torn one
    if not tables:
        raise FileNotFoundError(f"no readable request log under {folder}")
    table = pa.concat_tables(tables)
    if since_s is not None:
        import pyarrow.compute as pc

        table = table.filter(pc.greater_equal(table["arrival_s"], since_s))
    return table
