"""Perf DB build time and scaling, and vectorized lookup throughput, on the default scenario.

    python benchmarks/perfdb.py [--scenario paper-gsm8k] [--json build/perfdb_bench.json]
        [--ray-nodes 3] [--cpus-per-node 1] [--no-ray] [--scaling-json FILE]
        [--repeat N] [--target KEY=VALUE]

Builds the scenario's DB (4 GPU types, 2 models, every feasible TP/PP, 32 rates each) in 1
and 2 local processes (and all cores, where there are more), then as Ray tasks on a local
Ray cluster of `--ray-nodes` nodes started here with ``ray start`` (a head and workers joining
it, `--cpus-per-node` logical CPUs each, Ray token authentication on with a fresh token;
stopped after), and reports configs/s for each. Every build must give the serial build's
content: the same rows and metadata but the build's own time stamps (``build_seconds``,
``created_utc``); `content_sha256` hashes that content. Then times `PerfDB.lookup` on
1,000,000 random (config, rate) queries and `mixture_quantile` on 100,000 random 4-group
mixtures.
Targets (`TARGETS`): all-cores build <= 60 s on a 2-core machine, >= 100,000 lookups/s,
identical content everywhere (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from profiling import (
    ConfigMapper,
    PerfDB,
    ProfileSpec,
    build_perfdb,
    load_catalog,
    load_scenario,
    mixture_quantile,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _targets import Target, add_target_argument, check, passed, print_checks, resolve

REPO = Path(__file__).resolve().parents[1]
STAMPS = ("build_seconds", "created_utc")
TARGETS = {
    "build_s": Target("<=", 60.0, "s", "perf DB build on all cores, fastest of --repeat"),
    "lookups_per_s": Target(">=", 100_000.0, "1/s", "vectorized PerfDB.lookup queries"),
}


def content_sha256(db: PerfDB) -> str:
    """SHA-256 of the DB's content: its rows as Parquet, its metadata but the time stamps."""
    meta = {k: v for k, v in db.meta.items() if k not in STAMPS}
    sink = pa.BufferOutputStream()
    pq.write_table(db.table.replace_schema_metadata(None), sink)
    digest = hashlib.sha256(sink.getvalue().to_pybytes())
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def timed_build(spec: ProfileSpec, repeat: int, *, workers: int | None = None,
                map_configs: ConfigMapper | None = None) -> tuple[PerfDB, list[float]]:
    """The DB built `repeat` times the same way; the last one and every build's seconds.

    Every repeat must give the same content (checked here: a mismatch is an AssertionError).
    """
    catalog = load_catalog()
    times, db, first = [], None, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        db = build_perfdb(spec, catalog, workers=workers, map_configs=map_configs,
                          progress=True)
        times.append(time.perf_counter() - t0)
        first = first or content_sha256(db)
        assert content_sha256(db) == first, "two builds of one executor differ"
    assert db is not None
    return db, times


class LocalRayNodes:
    """Ray nodes on this machine, each its own ``ray start --block``: a head, then workers.

    Token authentication is on: the nodes get a fresh random token in a file under
    `temp_dir` (as `placement.local_cluster` gives its clusters); `driver_env` is what a
    client needs to find it. Only the processes started here are stopped (SIGTERM to each
    ``ray start --block``, which stops its node's processes), never other Ray instances.
    """

    def __init__(self, cpus: int, temp_dir: Path) -> None:
        from placement import AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV, free_port, new_token_file

        self.temp_dir = temp_dir
        self.token_path = new_token_file(temp_dir)
        auth = {AUTH_MODE_ENV: "token", TOKEN_PATH_ENV: str(self.token_path)}
        if TOKEN_ENV in os.environ:     # it would win over the file: the fresh token there too
            auth[TOKEN_ENV] = self.token_path.read_text()
        self.driver_env = {k: v for k, v in auth.items() if k != AUTH_MODE_ENV}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ray_bin = str(Path(sys.executable).with_name("ray"))
        self.common = ["--block", f"--num-cpus={cpus}", "--num-gpus=0",
                       "--dashboard-agent-listen-port=0", "--disable-usage-stats",
                       f"--temp-dir={temp_dir}"]
        self.env = {**os.environ, **auth}
        self.log = (temp_dir / "ray-start.log").open("ab")
        try:
            self._spawn([self.ray_bin, "start", "--head", f"--port={self.port}",
                         "--include-dashboard=false", *self.common])
            self._wait_for_port(60.0)
        except BaseException:
            self.stop()
            raise

    def add_workers(self, n: int, timeout_s: float = 120.0) -> None:
        """Start `n` worker nodes one at a time, each alive before the next (connected).

        Raylets of one machine starting together can pick the same socket name.
        """
        import ray

        for _ in range(n):
            alive = sum(node["Alive"] for node in ray.nodes())  # type: ignore[no-untyped-call]
            self._spawn([self.ray_bin, "start", f"--address={self.address}", *self.common])
            deadline = time.monotonic() + timeout_s
            while sum(n["Alive"] for n in ray.nodes()) <= alive:  # type: ignore[no-untyped-call]
                if self.procs[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"a Ray worker node did not join in {timeout_s:.0f} s; "
                                       f"see {self.log.name}")
                time.sleep(0.5)

    def _spawn(self, cmd: list[str]) -> None:
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=self.log,
                                           stderr=subprocess.STDOUT, cwd=REPO))

    def _wait_for_port(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.procs[0].poll() is not None:
                raise RuntimeError(f"ray start --head exited ({self.procs[0].returncode}); "
                                   f"see {self.log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not listen at {self.address} in {timeout_s:.0f} s")

    def stop(self) -> None:
        """SIGTERM each started ``ray start --block`` (workers first); SIGKILL after 30 s."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()


def ray_build(spec: ProfileSpec, nodes: int, cpus: int, repeat: int
              ) -> tuple[PerfDB, list[float], float, bool]:
    """The DB built `repeat` times as Ray tasks on one fresh local cluster.

    Returns the DB, the build times (the first with workers still to start), the cluster's
    start time (s) and whether the driver talked to it with the cluster's token.
    """
    import ray

    from placement import cluster_auth_token, connect, ray_config_mapper, ray_temp_dir

    temp = ray_temp_dir(REPO / "build" / "ray-pdb")
    t0 = time.perf_counter()
    cluster = LocalRayNodes(cpus, temp)
    try:
        os.environ.update(cluster.driver_env)   # the client finds the token, as a user's does
        connect(cluster.address, f"see {cluster.log.name}")
        cluster.add_workers(nodes - 1)
        start_s = time.perf_counter() - t0
        token_auth = cluster_auth_token() == cluster.token_path.read_text()
        db, times = timed_build(spec, repeat, map_configs=ray_config_mapper())
    finally:
        ray.shutdown()
        cluster.stop()
    return db, times, start_s, token_auth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="paper-gsm8k")
    parser.add_argument("--json", default="build/perfdb_bench.json")
    parser.add_argument("--ray-nodes", type=int, default=3, help="nodes of the local Ray "
                        "cluster (a head and workers)")
    parser.add_argument("--cpus-per-node", type=int, default=1, help="logical CPUs of each")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray cluster build")
    parser.add_argument("--repeat", type=int, default=1, help="builds per executor; the "
                        "fastest counts (a shared machine's load comes and goes)")
    parser.add_argument("--scaling-json", default=None, help="also write the scaling result "
                        "here (e.g. benchmarks/data/perfdb_scaling.json)")
    add_target_argument(parser, TARGETS)
    args = parser.parse_args()
    targets = resolve(TARGETS, args.target)
    scenario = load_scenario(args.scenario)
    spec = scenario.profile_spec()
    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    levels = sorted({1, 2, cores})
    runs: list[dict[str, Any]] = []
    reference: PerfDB | None = None
    build_s = float("nan")
    for workers in levels:
        load = os.getloadavg()[0]
        db, times = timed_build(spec, args.repeat, workers=workers)
        reference = reference or db
        if workers == max(levels):
            build_s = min(times)
        runs.append({"executor": "local processes", "nodes": 1, "cpus": workers,
                     "seconds": min(times), "seconds_each": times, "db": db,
                     "load_avg_1m": [load, os.getloadavg()[0]]})
    assert reference is not None
    if not args.no_ray:
        load = os.getloadavg()[0]
        db, times, start_s, token_auth = ray_build(spec, args.ray_nodes, args.cpus_per_node,
                                                   args.repeat)
        runs.append({"executor": f"Ray tasks{', token auth' if token_auth else ''}",
                     "nodes": args.ray_nodes, "cpus": args.ray_nodes * args.cpus_per_node,
                     "seconds": min(times), "seconds_each": times, "db": db,
                     "load_avg_1m": [load, os.getloadavg()[0]],
                     "cluster_start_s": start_s, "token_auth": token_auth})
    load_after = os.getloadavg()
    configs = len(reference.keys)
    ref_hash = content_sha256(reference)
    for run in runs:
        run_db: PerfDB = run.pop("db")
        run["configs_per_s"] = configs / run["seconds"]
        run["speedup"] = runs[0]["seconds"] / run["seconds"]
        run["content_sha256"] = content_sha256(run_db)
        run["identical"] = (run_db.table.equals(reference.table, check_metadata=False)
                            and run["content_sha256"] == ref_hash)
    identical = all(run["identical"] for run in runs)

    rng = np.random.default_rng(0)
    n = 1_000_000
    cfg = rng.integers(0, len(reference.keys), n)
    rate = rng.uniform(0, 1, n) * reference.capacity[cfg]
    reference.lookup(cfg[:1000], rate[:1000])  # warm-up
    t0 = time.perf_counter()
    quant, _, _ = reference.lookup(cfg, rate)
    lookup_s = time.perf_counter() - t0
    m = 100_000
    groups = quant[: m * 4].reshape(m, 4, -1)
    weights = rng.dirichlet(np.ones(4), m)
    t0 = time.perf_counter()
    mixture_quantile(groups, weights, reference.quantile_levels, 0.95)
    mix_s = time.perf_counter() - t0
    machine = f"{platform.machine()}, {cores} cores"
    scaling = {
        "scenario": scenario.name, "machine": machine, "configs": configs,
        "rows": reference.table.num_rows, "load_avg_1m": [load_before[0], load_after[0]],
        "identical": identical, "content_sha256": ref_hash,
        "identical_means": "same rows, columns and metadata but build_seconds/created_utc",
        "command": "python benchmarks/perfdb.py " + " ".join(sys.argv[1:]),
        "repeat": args.repeat, "seconds_are": "the fastest of `repeat` builds (seconds_each)",
        "runs": runs,
    }
    result = {
        "scenario": scenario.name, "machine": machine,
        "configs": configs, "rows": reference.table.num_rows,
        "infeasible": len(reference.meta["infeasible"]), "build_s": build_s,
        "lookups": n, "lookups_per_s": n / lookup_s,
        "mixtures": m, "mixtures_per_s": m / mix_s,
        "scaling": scaling,
    }
    print(f"\nperf DB build, {scenario.name}: {configs} configs x {spec.num_rates} rates on "
          f"{machine} (load {load_before[0]:.1f} before, {load_after[0]:.1f} after); "
          f"fastest of {args.repeat}")
    print(f"{'executor':<24}{'nodes':>6}{'CPUs':>6}{'seconds':>9}{'configs/s':>11}"
          f"{'speedup':>9}{'load':>11}  content")
    for run in runs:
        same = "reference" if run is runs[0] else ("identical" if run["identical"]
                                                   else "DIFFERS")
        load_text = "{:.1f}-{:.1f}".format(*run["load_avg_1m"])
        print(f"{run['executor']:<24}{run['nodes']:>6}{run['cpus']:>6}{run['seconds']:>9.1f}"
              f"{run['configs_per_s']:>11.2f}{run['speedup']:>9.2f}{load_text:>11}  {same} "
              f"{run['content_sha256']}")
    if not args.no_ray:
        print(f"(the Ray cluster took {runs[-1]['cluster_start_s']:.1f} s to start; not in "
              "its build time)")
    t_build, t_lookup = targets["build_s"], targets["lookups_per_s"]
    print(f"\n{'metric':<28}{'value':>16}{'target':>12}")
    print(f"{'configs x rates (rows)':<28}{reference.table.num_rows:>16,}")
    print(f"{f'build time, {max(levels)} processes':<28}{build_s:>15.1f}s"
          f"{f'{t_build.op} {t_build.value:g} s':>12}")
    print(f"{'lookups per second':<28}{n / lookup_s:>16,.0f}"
          f"{f'{t_lookup.op} {t_lookup.value:,.0f}':>12}")
    print(f"{'4-group P95 mixtures per s':<28}{m / mix_s:>16,.0f}")
    print(f"{'identical content':<28}{'yes' if identical else 'NO':>16}{'yes':>12}")
    rows = check(targets, {"build_s": build_s, "lookups_per_s": n / lookup_s},
                 {"identical content in every build": identical})
    print_checks(rows)
    result["targets"] = rows
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if args.scaling_json:
        Path(args.scaling_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.scaling_json).write_text(json.dumps(scaling, indent=2) + "\n")
    return 0 if passed(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
