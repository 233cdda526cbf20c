"""Bad files on the command line: each gives one line on stderr and exit status 2.

A corpus of malformed inputs, written to a temporary folder: GPU and model catalogs, a model
directory's config.json, scenarios, traces (CSV, JSONL, Parquet), plans, perf DBs, hardware
profiles and prompt samples, each empty, header-only, ill-typed, not UTF-8, zero, negative,
huge, or missing a required key. Every case runs `boute.cli.main` in-process and fails before
any perf DB is built or any request is sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from boute.cli import main

NOT_UTF8 = b"\xff\xfe\x00bad \xc3\x28 bytes\n"
GARBAGE = bytes(range(256)) * 4
SIM = ["simulate", "--model", "llama-3.1-8b", "--gpu", "H100", "--rate", "1",
       "--input-len", "8", "--output-len", "8", "--requests", "5"]

GPU_OK = {"name": "X1", "memory_gib": 80, "memory_bandwidth_gbps": 3350, "bf16_tflops": 989,
          "interconnect": "nvlink", "link_bandwidth_gbps": 450, "gpus_per_node": 8,
          "price_per_hour": 2.5}
MODEL_OK = {"name": "m1", "num_layers": 2, "hidden_size": 64, "num_heads": 4,
            "num_kv_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 1000}
HF_OK = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000}
TRACE_HEAD = "arrival_s,input_tokens,output_tokens\n"
PLAN_OK = {"routing": {"strong_share": 0.5},
           "groups": [{"model": "llama-3.1-8b", "gpu": "H100", "replicas": 1},
                      {"model": "llama-3.1-70b", "gpu": "H100", "tp": 4, "replicas": 1}],
           "scenario": {"name": "paper-gsm8k", "rate_rps": 5.0,
                        "models": {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b"}}}
GEMM_HEAD = "model,layer,tp,m,n,k,median_us,tflops,gbps,min_us,reps\n"
GEMM_ROW = "x,l,1,{m},4096,4096,{t},1,1,1,1\n"


def _yaml(value: object) -> str:
    # PyYAML reads 1e+308 as a string: floats need a dot in the mantissa (1.0e+308).
    return f"{value:.1e}" if isinstance(value, float) else json.dumps(value)


def _yaml_list(entry: dict[str, object], **change: object) -> str:
    row = {**entry, **change}
    return "- " + "\n  ".join(f"{k}: {_yaml(v)}" for k, v in row.items()) + "\n"


def _without(entry: dict[str, object], key: str) -> dict[str, object]:
    return {k: v for k, v in entry.items() if k != key}


# -- the corpus: (case id, files to write {name: text or bytes}, argv with {tmp}) ------------
Files = dict[str, str | bytes]
Case = tuple[str, Files, list[str]]


def _catalog_cases(flag: str, entry: dict[str, object], number: str) -> list[Case]:
    argv = [*SIM, flag, "{tmp}/c.yaml"]
    bodies: dict[str, str | bytes] = {
        "empty": "",
        "not-utf8": NOT_UTF8,
        "binary": GARBAGE,
        "bad-yaml": "- name: [unclosed\n",
        "mapping": "name: X1\n",
        "scalars": "- 1\n- 2\n",
        "missing-key": _yaml_list(_without(entry, number)),
        "unknown-key": _yaml_list(entry, colour="red"),
        "string": _yaml_list(entry, **{number: "lots"}),
        "zero": _yaml_list(entry, **{number: 0}),
        "negative": _yaml_list(entry, **{number: -4}),
        "huge-float": _yaml_list(entry, **{number: 1e308}),
        "huge-int": _yaml_list(entry, **{number: 10**30}),
        "inf": _yaml_list(entry).replace(f"{number}: ", f"{number}: .inf #"),
        "nan": _yaml_list(entry).replace(f"{number}: ", f"{number}: .nan #"),
        "bool": _yaml_list(entry, **{number: True}),
        "name-missing": _yaml_list(_without(entry, "name")),
    }
    return [(f"{flag[2:]}-{k}", {"c.yaml": v}, argv) for k, v in bodies.items()]


def _model_dir_cases() -> list[Case]:
    argv = ["simulate", "--model", "{tmp}/m", "--gpu", "H100", "--rate", "1", "--input-len",
            "8", "--output-len", "8", "--requests", "5"]
    bodies: dict[str, str | bytes] = {
        "empty": "",
        "not-utf8": NOT_UTF8,
        "not-json": "{num_hidden_layers: 2",
        "list": "[1, 2]",
        "missing-key": json.dumps(_without(HF_OK, "vocab_size")),
        "heads-zero": json.dumps({**HF_OK, "num_attention_heads": 0}),
        "heads-string": json.dumps({**HF_OK, "num_attention_heads": "four"}),
        "heads-null": json.dumps({**HF_OK, "num_attention_heads": None}),
        "layers-negative": json.dumps({**HF_OK, "num_hidden_layers": -2}),
        "hidden-huge-int": json.dumps({**HF_OK, "hidden_size": 10**30}),
        "hidden-huge-float": json.dumps({**HF_OK, "hidden_size": 1e308}),
        "hidden-fraction": json.dumps({**HF_OK, "hidden_size": 64.5}),
        "kv-not-divisor": json.dumps({**HF_OK, "num_key_value_heads": 3}),
        "tie-string": json.dumps({**HF_OK, "tie_word_embeddings": "yes"}),
        "context-zero": json.dumps({**HF_OK, "max_position_embeddings": 0}),
    }
    return [(f"model-dir-{k}", {"m/config.json": v}, argv) for k, v in bodies.items()]


def _scenario_cases() -> list[Case]:
    argv = ["plan", "--scenario", "{tmp}/s.yaml", "--out", "{tmp}/plan.json", "--plot", ""]
    ok = "gpus: {H100: {count: 2}}\n"
    bodies: dict[str, str | bytes] = {
        "empty": "",
        "not-utf8": ok.encode() + b"name: \xff\xfe\n",
        "binary": GARBAGE,
        "bad-yaml": "gpus: {H100: [\n",
        "list": "- 1\n",
        "missing-gpus": "budget_per_hour: 10\n",
        "no-gpus": "gpus: {}\n",
        "unknown-key": ok + "colour: red\n",
        "rate-string": ok + "workload: {rate_rps: fast}\n",
        "rate-zero": ok + "workload: {rate_rps: 0}\n",
        "rate-negative": ok + "workload: {rate_rps: -5}\n",
        "rate-huge": ok + "workload: {rate_rps: 1.0e+308}\n",
        "rate-inf": ok + "workload: {rate_rps: .inf}\n",
        "budget-nan": ok + "budget_per_hour: .nan\n",
        "count-huge": "gpus: {H100: {count: 1000000000000000000000000000000}}\n",
        "count-zero": "gpus: {H100: {count: 0}}\n",
        "unknown-gpu": "gpus: {H900: {count: 2}}\n",
        "unknown-shape": ok + "workload: {shape: chess}\n",
        "ceiling-huge": ok + "p95_ceiling_s: 1.0e+300\n",
        "trace-missing": ok + "workload: {trace: nowhere.csv}\n",
        "trace-header-only": ok + "workload: {trace: {tmp}/h.csv}\n",
        # ladders: K models, several workloads
        "models-none": ok + "models: []\n",
        "length-threshold-zero": ok + "length_classes: {threshold_tokens: 0}\n",
        "length-thresholds-empty": ok + "length_classes: {threshold_tokens: []}\n",
        "length-threshold-word": ok + "length_classes: {threshold_tokens: median}\n",
        "models-unknown": ok + "models: [llama-3.1-8b, llama-9]\n",
        "workload-name-bad": ok + "workloads: [{name: 'Math Stuff', rate_rps: 1}]\n",
        "workloads-and-task": ok + "task: gsm8k\nworkloads: [{name: a, rate_rps: 1}]\n",
        "workload-score-string": ok + "workloads: [{name: a, rate_rps: 1, "
                                      "scores: {llama-3.1-8b: high}}]\n",
        "target-per-workload-missing": ok + "workloads: [{name: a, rate_rps: 1}, "
                                            "{name: b, rate_rps: 1}]\n"
                                            "targets: [{quality: {a: 90}, p95_s: 5}]\n",
    }
    extra: Files = {"h.csv": TRACE_HEAD}
    cases = [(f"scenario-{k}", {"s.yaml": v, **extra}, argv) for k, v in bodies.items()]
    cases.append(("plan-resim-seeds-negative", {"s.yaml": ok}, [*argv, "--resim-seeds", "-1"]))
    return cases


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def _trace_cases() -> list[Case]:
    # Not malformed since issue 25 (production logs have them): 0-token rows (counted as 1),
    # unsorted or negative arrivals (sorted; times relative to the first request).
    cases: list[Case] = []
    csv: dict[str, str | bytes] = {
        "empty": "",
        "header-only": TRACE_HEAD,
        "not-utf8": TRACE_HEAD.encode() + b"0,\xff\xfe,3\n",
        "binary": GARBAGE,
        "string": TRACE_HEAD + "0,five,3\n",
        "negative": TRACE_HEAD + "0,5,-3\n",
        "fraction": TRACE_HEAD + "0,5.5,3\n",
        "huge": TRACE_HEAD + "0,1e30,3\n",
        "huge-int": TRACE_HEAD + f"0,{10**30},3\n",
        "inf-arrival": TRACE_HEAD + "0,5,3\n1e999,5,3\n",
        "blank-cell": TRACE_HEAD + "0,,3\n",
        "missing-column": "arrival_s,input_tokens\n0,5\n",
        "ragged": TRACE_HEAD + "0,5\n",
    }
    jsonl: dict[str, str | bytes] = {
        "empty": "",
        "not-utf8": NOT_UTF8,
        "garbage": "{not json\n",
        "array": '[{"arrival_s": 0, "input_tokens": 5, "output_tokens": 3}]\n',
        "string": '{"arrival_s": 0, "input_tokens": "five", "output_tokens": 3}\n',
        "huge": f'{{"arrival_s": 0, "input_tokens": {10**30}, "output_tokens": 3}}\n',
        "list": '{"arrival_s": 0, "input_tokens": [5], "output_tokens": 3}\n',
        "bool": '{"arrival_s": 0, "input_tokens": true, "output_tokens": 3}\n',
        "missing-key": '{"arrival_s": 0, "input_tokens": 5}\n',
        "null": '{"arrival_s": 0, "input_tokens": null, "output_tokens": 3}\n',
    }
    good = {"arrival_s": [0.0, 1.0], "input_tokens": [5, 6], "output_tokens": [3, 4]}
    valid = _parquet(pa.table(good))
    parquet: dict[str, str | bytes] = {
        "empty": b"",
        "garbage": GARBAGE,
        "truncated": valid[: len(valid) // 2],
        "header-only": _parquet(pa.table({k: pa.array([], pa.float64()) for k in good})),
        "string": _parquet(pa.table({**good, "input_tokens": ["a", "b"]})),
        "huge": _parquet(pa.table({**good, "input_tokens": [1e308, 5.0]})),
        "missing-column": _parquet(pa.table({"arrival_s": [0.0]})),
    }
    for suffix, bodies in (("csv", csv), ("jsonl", jsonl), ("parquet", parquet)):
        for k, v in bodies.items():
            cases.append((f"trace-{suffix}-{k}", {f"t.{suffix}": v},
                          ["trace", "--file", f"{{tmp}}/t.{suffix}"]))
    cases.append(("bench-trace-header-only", {"t.csv": TRACE_HEAD},
                  ["bench", "--url", "http://127.0.0.1:9", "--trace", "{tmp}/t.csv"]))
    return cases


def _plan_cases() -> list[Case]:
    def plan(**change: object) -> str:
        data = json.loads(json.dumps(PLAN_OK))
        for dotted, value in change.items():
            *parents, last = dotted.split("__")
            node = data
            for p in parents:
                node = node[int(p)] if isinstance(node, list) else node[p]
            node[last] = value
        return json.dumps(data)

    bodies: dict[str, str | bytes] = {
        "empty": "",
        "not-utf8": NOT_UTF8,
        "garbage": "{routing:",
        "list": "[]",
        "no-routing": json.dumps({"groups": PLAN_OK["groups"]}),
        "share-string": plan(routing__strong_share="half"),
        "share-huge": plan(routing__strong_share=1e308),
        "share-inf": plan(routing__strong_share=1e999).replace("Infinity", "1e999"),
        "share-nan": plan(routing__strong_share=float("nan")),
        "share-negative": plan(routing__strong_share=-0.5),
        "router-number": plan(routing__router=5),
        "groups-empty": plan(groups=[]),
        "replicas-zero": plan(groups__0__replicas=0),
        "replicas-huge": plan(groups__0__replicas=10**30),
        "tp-string": plan(groups__1__tp="4"),
        "model-missing": json.dumps({**PLAN_OK, "groups": [{"gpu": "H100", "replicas": 1}]}),
        "rate-string": plan(scenario__rate_rps="fast"),
        "rate-zero": plan(scenario__rate_rps=0),
        "rate-negative": plan(scenario__rate_rps=-3),
        "rate-inf": plan(scenario__rate_rps=float("inf")),
        "scenario-list": plan(scenario=[1]),
        "models-list": plan(scenario__models=[]),
        "spec-bad": plan(scenario__spec={"gpus": {}}),
        # ladder routing (K models, several workloads)
        "ladder-models-none": plan(routing__models=[], routing__workloads=[]),
        "length-class-unknown": plan(groups__0__length_class="medium"),
        "length-class-without-threshold": plan(groups__0__length_class="short"),
        "length-threshold-string": plan(routing__length_classes={"threshold_tokens": "200"}),
        "ladder-shares-sum": plan(routing__models=["a", "b"], routing__workloads=[
            {"name": "w", "shares": {"a": 0.7, "b": 0.7}}]),
        "ladder-share-string": plan(routing__models=["a", "b"], routing__workloads=[
            {"name": "w", "shares": {"a": "x", "b": 1.0}}]),
        "ladder-thresholds-short": plan(routing__models=["a", "b", "c"], routing__workloads=[
            {"name": "w", "shares": {"a": 0.2, "b": 0.3, "c": 0.5}, "thresholds": [0.1]}]),
    }
    cases: list[Case] = []
    for k, v in bodies.items():
        files: Files = {"plan.json": v}
        cases.append((f"plan-evaluate-{k}", files, ["evaluate", "{tmp}/plan.json"]))
    for k in ("not-utf8", "rate-string", "share-string", "replicas-huge", "spec-bad"):
        cases.append((f"plan-deploy-{k}", {"plan.json": bodies[k]},
                      ["deploy", "{tmp}/plan.json", "--serve-config", "{tmp}/serve.yaml"]))
        cases.append((f"plan-bench-{k}", {"plan.json": bodies[k]},
                      ["bench", "--url", "http://127.0.0.1:9", "--plan", "{tmp}/plan.json"]))
    return cases


def _perfdb_cases() -> list[Case]:
    from profiling import PERFDB_SCHEMA

    def table(meta: object, **change: pa.Array) -> bytes:
        row: dict[str, object] = {f.name: 1 for f in PERFDB_SCHEMA}
        row.update(model="llama-3.1-8b", gpu="H100", saturated=False,
                   latency_quantiles_s=[1.0, 2.0])
        t = pa.Table.from_pylist([row], schema=PERFDB_SCHEMA)
        for name, arr in change.items():
            t = t.set_column(t.column_names.index(name), name, arr)
        raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
        return _parquet(t.replace_schema_metadata({"boute": raw}))

    meta = {"schema_version": 1, "quantiles": [0.5, 0.95]}
    valid = table(meta)
    bodies: dict[str, str | bytes] = {
        "empty": b"",
        "garbage": GARBAGE,
        "truncated": valid[: len(valid) - 40],
        "not-a-db": _parquet(pa.table({"x": [1]})),
        "no-metadata": _parquet(pa.Table.from_pylist([], schema=PERFDB_SCHEMA)),
        "meta-not-json": table(b"\xff{not json"),
        "meta-list": table([1, 2]),
        "meta-no-quantiles": table({"schema_version": 1}),
        "meta-quantiles-huge": table({**meta, "quantiles": [0.5, 1e308]}),
        "tp-string": table(meta, tp=pa.array(["four"])),
        "rate-null": table(meta, rate_rps=pa.array([None], pa.float64())),
        "quantiles-short": table(meta, latency_quantiles_s=pa.array([[1.0]])),
        "header-only": _parquet(pa.Table.from_pylist([], schema=PERFDB_SCHEMA)
                                .replace_schema_metadata({"boute": json.dumps(meta)})),
    }
    return [(f"perfdb-{k}", {"db.parquet": v},
             ["plan", "--db", "{tmp}/db.parquet", "--out", "{tmp}/plan.json", "--plot", ""])
            for k, v in bodies.items()]


def _hardware_cases() -> list[Case]:
    argv = [*SIM, "--hardware-profiles", "{tmp}/hw"]
    rows = "".join(GEMM_ROW.format(m=m, t=10.0 * m) for m in (1, 16, 256))
    meta = '{"gpu_type": "H100", "status": "complete"}'
    bodies: dict[str, Files] = {
        "no-dir": {"other.txt": "x"},
        "gemm-empty": {"hw/gemm.csv": ""},
        "gemm-header-only": {"hw/gemm.csv": GEMM_HEAD},
        "gemm-not-utf8": {"hw/gemm.csv": GEMM_HEAD.encode() + b"x,l,1,\xff,1,1,1,1,1,1,1\n"},
        "gemm-binary": {"hw/gemm.csv": GARBAGE},
        "gemm-string": {"hw/gemm.csv": GEMM_HEAD + rows + GEMM_ROW.format(m="big", t=1)},
        "gemm-zero": {"hw/gemm.csv": GEMM_HEAD + rows + GEMM_ROW.format(m=0, t=1)},
        "gemm-negative": {"hw/gemm.csv": GEMM_HEAD + rows + GEMM_ROW.format(m=4, t=-1)},
        "gemm-huge": {"hw/gemm.csv": GEMM_HEAD + rows + GEMM_ROW.format(m=1e308, t=1)},
        "gemm-inf": {"hw/gemm.csv": GEMM_HEAD + rows + GEMM_ROW.format(m=4, t="inf")},
        "gemm-missing-column": {"hw/gemm.csv": "m,n,k\n1,2,3\n4,5,6\n7,8,9\n"},
        "gemm-ragged": {"hw/gemm.csv": GEMM_HEAD + rows + "x,l,1,4\n"},
        "meta-not-utf8": {"hw/gemm.csv": GEMM_HEAD + rows, "hw/meta.json": NOT_UTF8},
        "meta-garbage": {"hw/gemm.csv": GEMM_HEAD + rows, "hw/meta.json": "{gpu_type"},
        "meta-list": {"hw/gemm.csv": GEMM_HEAD + rows, "hw/meta.json": "[1]"},
        "meta-gpu-number": {"hw/gemm.csv": GEMM_HEAD + rows, "hw/meta.json": '{"gpu_type": 5}'},
        "attention-string": {
            "hw/gemm.csv": GEMM_HEAD + rows, "hw/meta.json": meta,
            "hw/attention.csv": "phase,backend,q_len,tflops\nprefill,default,128,fast\n"},
        "attention-not-utf8": {
            "hw/gemm.csv": GEMM_HEAD + rows, "hw/meta.json": meta,
            "hw/attention.csv": b"phase,backend,q_len,tflops\nprefill,\xff,128,1\n"},
    }
    return [(f"hardware-{k}", files, argv) for k, files in bodies.items()]


def _prompt_cases() -> list[Case]:
    bodies: dict[str, tuple[str, str | bytes]] = {
        "empty": ("p.txt", ""),
        "not-utf8": ("p.txt", NOT_UTF8),
        "jsonl-scalar": ("p.jsonl", "5\n"),
        "jsonl-garbage": ("p.jsonl", "{prompt\n"),
        "jsonl-no-prompt": ("p.jsonl", '{"text": "hi"}\n'),
        "jsonl-messages-number": ("p.jsonl", '{"messages": 5}\n'),
    }
    return [(f"prompts-{k}", {"plan.json": json.dumps(PLAN_OK), name: body},
             ["deploy", "{tmp}/plan.json", "--calibration-prompts", f"{{tmp}}/{name}",
              "--serve-config", "{tmp}/serve.yaml"])
            for k, (name, body) in bodies.items()]


def _other_cases() -> list[Case]:
    plan = {"plan.json": json.dumps({**PLAN_OK, "routing": {"strong_share": 0.5,
                                                            "router": "mf"}}),
            "p.txt": "hello\nworld\n"}
    return [
        ("engine-unknown", {}, [*SIM, "--engine", "sglang"]),
        ("router-mf-calibration", plan,
         ["deploy", "{tmp}/plan.json", "--calibration-prompts", "{tmp}/p.txt",
          "--serve-config", "{tmp}/serve.yaml"]),
        ("catalog-directory", {"d/x": ""}, [*SIM, "--gpu-catalog", "{tmp}/d"]),
        ("scenario-directory", {"d.yaml/x": ""}, ["plan", "--scenario", "{tmp}/d.yaml"]),
        # generated loads: a falsy value is an error, not a default; huge counts are refused
        ("trace-rate-zero", {}, ["trace", "--shape", "gsm8k", "--rate", "0"]),
        ("trace-file-rate-zero", {"t.csv": TRACE_HEAD + "0,5,3\n1,5,3\n"},
         ["trace", "--file", "{tmp}/t.csv", "--rate", "0"]),
        ("trace-requests-zero", {}, ["trace", "--shape", "gsm8k", "--requests", "0"]),
        ("trace-requests-huge", {}, ["trace", "--shape", "gsm8k", "--requests", str(10**12)]),
        ("trace-cv-zero", {}, ["trace", "--shape", "gsm8k", "--arrival", "gamma", "--cv", "0"]),
        ("simulate-requests-zero", {}, [*SIM[:-1], "0"]),
        ("simulate-concurrency-huge", {},
         ["simulate", "--model", "llama-3.1-8b", "--gpu", "H100", "--concurrency", str(10**12),
          "--input-len", "8", "--output-len", "8"]),
    ]


CORPUS: list[Case] = [
    *_catalog_cases("--gpu-catalog", GPU_OK, "memory_gib"),
    *_catalog_cases("--model-catalog", MODEL_OK, "hidden_size"),
    *_model_dir_cases(), *_scenario_cases(), *_trace_cases(), *_plan_cases(),
    *_perfdb_cases(), *_hardware_cases(), *_prompt_cases(), *_other_cases(),
]


def _write(root: Path, files: Files) -> None:
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(body, bytes):
            path.write_bytes(body)
        else:
            path.write_text(body.replace("{tmp}", str(root)))


def test_corpus_ids_are_unique() -> None:
    ids = [c[0] for c in CORPUS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 150


@pytest.mark.parametrize(("files", "argv"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_malformed_input_is_one_line_and_exit_2(
        files: Files, argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)          # a default build/ path never finds a real DB
    _write(tmp_path, files)
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, err
    assert out == ""
    assert len(lines) == 1 and lines[0].startswith(f"boute {argv[0]}: error: "), err
    assert "Traceback" not in err and len(lines[0]) > len(f"boute {argv[0]}: error: ") + 10
    assert not (tmp_path / "build").exists()          # nothing was built


# -- engine profiles: read by the fidelity tools, not a `boute` command ------------------------
ENGINE_META = '{"kind": "meta", "model": "m"}\n'
ENGINE_POINT = {"kind": "point", "mode": "rate", "level": 2.0,
                "requests": {"arrival_s": [0.0, 0.5], "input_tokens": [5, 6],
                             "output_tokens": [3, 4], "ttft_s": [0.1, 0.1],
                             "latency_s": [0.3, 0.4]},
                "summary": {"ttft_ms": 100.0, "tpot_ms": 70.0, "latency_s_p50": 0.35,
                            "latency_s_p95": 0.4, "latency_s_p99": 0.4,
                            "throughput_tok_s": 10.0, "throughput_rps": 2.0}}


def _engine_point(change: Callable[[dict], None]) -> str:  # type: ignore[type-arg]
    point = json.loads(json.dumps(ENGINE_POINT))
    change(point)
    return ENGINE_META + json.dumps(point) + "\n"


ENGINE_CORPUS: dict[str, str | bytes] = {
    "empty": "",
    "not-utf8": NOT_UTF8,
    "binary": GARBAGE,
    "no-meta": json.dumps(ENGINE_POINT) + "\n",
    "scalar-line": ENGINE_META + "5\n",
    "garbage-line": ENGINE_META + "{kind\n",
    "mode-unknown": _engine_point(lambda p: p.update(mode="burst")),
    "level-string": _engine_point(lambda p: p.update(level="two")),
    "level-zero": _engine_point(lambda p: p.update(level=0)),
    "level-huge": _engine_point(lambda p: p.update(level=1e999)).replace("Infinity", "1e999"),
    "requests-missing": _engine_point(lambda p: p.pop("requests")),
    "column-missing": _engine_point(lambda p: p["requests"].pop("ttft_s")),
    "column-strings": _engine_point(lambda p: p["requests"].update(ttft_s=["a", "b"])),
    "column-short": _engine_point(lambda p: p["requests"].update(latency_s=[0.3])),
    "column-nan": _engine_point(lambda p: p["requests"].update(latency_s=[0.3, None])),
    "summary-string": _engine_point(lambda p: p["summary"].update(ttft_ms="slow")),
}


@pytest.mark.parametrize("body", list(ENGINE_CORPUS.values()), ids=list(ENGINE_CORPUS))
def test_malformed_engine_profile_raises_a_one_line_profiler_error(
        body: str | bytes, tmp_path: Path) -> None:
    from common.errors import ProfilerError
    from profiling.measure import load_engine_profile

    path = tmp_path / "engine.jsonl"
    _write(tmp_path, {"engine.jsonl": body})
    with pytest.raises(ProfilerError) as info:
        load_engine_profile(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_valid_engine_profile_still_loads(tmp_path: Path) -> None:
    from profiling.measure import load_engine_profile

    path = tmp_path / "engine.jsonl"
    path.write_text(ENGINE_META + json.dumps(ENGINE_POINT) + "\n")
    (point,) = load_engine_profile(path).points
    assert point.level == 2.0 and list(point.output_tokens) == [3, 4]
