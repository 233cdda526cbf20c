"""Deploy-side pure pieces: plan scaling, the Serve config, the bench's arithmetic, error
bodies, the emulated server's request checks, the tiny model directory."""

import asyncio
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from app.openai_api import ApiError, error_body, error_status
from boute.bench import BenchResult, RequestRecord, format_bench, synth_prompt
from boute.cli import main
from tests.app import SERVE_SMALL_SCENARIO
from tuning import Group, Plan, PlanError, Routing

PLAN = Plan(Routing(0.4), (
    Group("llama-3.1-8b", "RTX-4090", 1, 1, 6, 0.75),
    Group("llama-3.1-8b", "RTX-5090", 1, 1, 2, 0.25),
    Group("llama-3.1-70b", "H100", 4, 1, 2, 1.0),
), scenario={"name": "paper-gsm8k", "rate_rps": 100.0,
             "models": {"weak": "llama-3.1-8b", "strong": "llama-3.1-70b"}})


def test_scaled_plan_keeps_configs_and_scales_rate_by_gpus() -> None:
    small = PLAN.scaled(0.25)
    # replicas: round(6/4)=2 (1.5 rounds to even 2), round(0.5)=0 -> 1, round(0.5)=0 -> 1
    assert [g.replicas for g in small.groups] == [2, 1, 1]
    assert [(g.gpu, g.tp) for g in small.groups] == [(g.gpu, g.tp) for g in PLAN.groups]
    # GPUs 6+2+8 = 16 -> 2+1+4 = 7: rate 100 * 7/16
    assert small.scenario["rate_rps"] == pytest.approx(43.75)
    assert small.predicted is None
    with pytest.raises(PlanError, match="scale factor -1"):
        PLAN.scaled(-1)


def test_serve_config_is_a_stack_whose_args_do_not_depend_on_replicas_or_shares() -> None:
    from app.deploy import serve_config
    from app.main import Stack

    cfg = serve_config(PLAN, backend="vllm", device="cpu", sources={"llama-3.1-8b": "/m/8b",
                       "llama-3.1-70b": "/m/70b"}, engine_kwargs={"max_model_len": 4096})
    router, *groups = cfg["applications"]
    assert (router["name"], router["route_prefix"], router["import_path"]) == (
        "boute", "/", "app.main:router_app")
    stack = Stack.from_args(router["args"])
    assert (stack.backend, stack.device, stack.engine_kwargs) == ("vllm", "cpu",
                                                                  {"max_model_len": 4096})
    (rd,) = router["deployments"]
    uc = rd["user_config"]
    assert rd["name"] == "RouterIngress" and uc["strong_share"] == 0.4
    assert uc["shares"]["llama-3.1-8b"] == {"llama-3.1-8b-RTX-4090-tp1pp1": 0.75,
                                            "llama-3.1-8b-RTX-5090-tp1pp1": 0.25}
    assert uc["apps"] == {n: n for n in ("llama-3.1-8b-RTX-4090-tp1pp1",
                                         "llama-3.1-8b-RTX-5090-tp1pp1",
                                         "llama-3.1-70b-H100-tp4pp1")}
    assert Plan.from_dict(uc["plan"]).groups == PLAN.groups
    drain = {"graceful_shutdown_timeout_s": 60.0}     # no goal, no prediction: the minimum
    assert {g["name"]: (g["route_prefix"], g["deployments"]) for g in groups} == {
        "llama-3.1-70b-H100-tp4pp1": (None, [{"name": "llama-3.1-70b-H100-tp4pp1",
                                              "num_replicas": 2, **drain}]),
        "llama-3.1-8b-RTX-4090-tp1pp1": (None, [{"name": "llama-3.1-8b-RTX-4090-tp1pp1",
                                                 "num_replicas": 6, **drain}]),
        "llama-3.1-8b-RTX-5090-tp1pp1": (None, [{"name": "llama-3.1-8b-RTX-5090-tp1pp1",
                                                 "num_replicas": 2, **drain}])}
    assert groups[0]["args"]["group"] == {"model": "llama-3.1-70b", "gpu": "H100", "tp": 4,
                                          "pp": 1}
    # Another plan with the same configs: every application's args are unchanged (Serve
    # updates replicas and the router's user_config in place), only the routing id moves.
    other = replace(PLAN, routing=Routing(0.5), groups=tuple(
        replace(g, replicas=g.replicas + 1, share=g.share) for g in PLAN.groups))
    cfg2 = serve_config(other, backend="vllm", device="cpu", sources={
        "llama-3.1-8b": "/m/8b", "llama-3.1-70b": "/m/70b"}, engine_kwargs={"max_model_len": 4096})
    assert [a["args"] for a in cfg2["applications"]] == [a["args"] for a in cfg["applications"]]
    assert cfg2["applications"][0]["deployments"][0]["user_config"]["config_id"] != uc["config_id"]
    yaml.safe_dump(cfg)                                  # serializable as the file


def test_bench_summary_arithmetic() -> None:
    recs = [RequestRecord(0.0, 200, 0.1, 1.1, 11, "w", "g0"),
            RequestRecord(0.5, 200, 0.3, 2.3, 21, "s", "g1"),
            RequestRecord(1.0, 503, error="busy"),
            RequestRecord(1.5, 200, 0.2, 0.2, 1, "w", "g0")]
    s = BenchResult("http://x", recs, duration_s=4.0).summary()
    assert (s["requests"], s["ok"], s["errors"]) == (4, 3, {"503": 1})
    assert s["throughput_rps"] == pytest.approx(0.75)
    assert s["output_tokens_per_s"] == pytest.approx(33 / 4)
    # TPOT: (1.1-0.1)/10 = 0.1 and (2.3-0.3)/20 = 0.1; the 1-token request has none.
    assert s["tpot_s"]["p50"] == pytest.approx(0.1) and s["tpot_s"]["mean"] == pytest.approx(0.1)
    # e2e [1.1, 2.3, 0.2]: median 1.1; p90 by linear interpolation 1.1 + 0.8 * 1.2 = 2.06
    assert s["e2e_s"]["p50"] == pytest.approx(1.1) and s["e2e_s"]["p90"] == pytest.approx(2.06)
    assert s["model_share"] == {"s": pytest.approx(1 / 3), "w": pytest.approx(2 / 3)}
    assert s["first_error"] == "busy" and s["first_errors"] == {"503": "busy"}
    s["strong_share"] = s["model_share"]["s"]
    text = format_bench(s, {"system_p95_s": 2.0, "mean_s": 1.0, "strong_share": 0.3})
    assert "P95 latency (s)" in text and "+" in text


def test_synth_prompt_length_follows_four_chars_per_token() -> None:
    rng = np.random.default_rng(0)
    p = synth_prompt(100, rng)
    assert 400 <= len(p) <= 400 + 8          # stops at the first word past 400 characters


def test_error_bodies_and_status() -> None:
    body = ApiError("no such model", 404, "model", "model_not_found").body()
    assert body == {"error": {"message": "no such model", "type": "model_not_found",
                              "param": "model", "code": 404}}
    assert error_status(body) == 404
    assert error_status(error_body(999, "x")) == 500       # not an HTTP status -> 500
    assert error_status({"choices": []}) is None


def test_emulated_server_checks_context_and_max_tokens(catalog) -> None:
    from app.emulated_server import EmulatedLLMServer

    cls = EmulatedLLMServer.func_or_class                  # the plain class, no Serve
    server = cls("llama-3.1-8b", "H100", 1, 1)
    limit = catalog.model("llama-3.1-8b").max_position_embeddings
    long = {"messages": [{"role": "user", "content": "x" * 4 * limit}], "max_tokens": 8}
    err = asyncio.run(server.openai("chat", long))
    assert error_status(err) == 400 and "maximum context length" in err["error"]["message"]
    err = asyncio.run(server.openai("chat", {"messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 0}))
    assert err["error"]["param"] == "max_tokens"


def test_tiny_llama_directory(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from profiling import load_hf_config
    from profiling.measure import make_tiny_llama

    d = make_tiny_llama(tmp_path / "tiny", hidden_size=64, layers=1, heads=4, kv_heads=2)
    cfg = json.loads((d / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(d))
    assert cfg["vocab_size"] == len(tok) and cfg["num_hidden_layers"] == 1
    ids = tok("The quick brown fox")["input_ids"]
    assert tok.decode(ids) == "The quick brown fox"
    arch = load_hf_config(d / "config.json", name="tiny")
    assert arch.head_dim == 16 and arch.num_kv_heads == 2
    with pytest.raises(ValueError, match="must divide"):
        make_tiny_llama(tmp_path / "bad", hidden_size=30, heads=4)


def test_deploy_cli_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "plan.json"
    PLAN.save(plan)
    assert main(["deploy", str(plan), "--backend", "emulated", "--model", "oops"]) == 2
    assert "--model 'oops' must look like NAME=VALUE" in capsys.readouterr().err
    assert main(["deploy", str(plan), "--backend", "emulated", "--scale", "0"]) == 2
    assert "scale factor 0" in capsys.readouterr().err
    assert main(["bench", "--shape", "nope", "--duration", "1"]) == 2
    assert "--shape='nope' is unknown" in capsys.readouterr().err
    assert math.isfinite(PLAN.scenario["rate_rps"])


def test_threshold_calibrated_on_a_prompt_sample(tmp_path: Path) -> None:
    from app.deploy import DeployError, calibrated, read_prompts
    from app.routing import BuiltinRouter

    sample = tmp_path / "prompts.jsonl"
    rng = np.random.default_rng(1)
    prompts = [synth_prompt(int(rng.integers(5, 200)), rng) for _ in range(300)]
    sample.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": p}]})
                                for p in prompts) + "\n")
    plan = calibrated(PLAN, read_prompts(str(sample)))
    scores = [BuiltinRouter().calculate_strong_win_rate(p) for p in prompts]
    assert plan.routing.threshold == pytest.approx(np.quantile(scores, 1 - 0.4))
    assert sum(s >= plan.routing.threshold for s in scores) == 120      # 40% of 300
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n[1, 2]\n')
    with pytest.raises(DeployError, match=r"bad.jsonl:2: not a JSON object"):
        read_prompts(str(bad))


def test_deploy_refuses_a_replica_that_does_not_fit_in_memory() -> None:
    from app.deploy import deploy_plan
    from common.errors import BouteError

    plan = Plan(Routing(0.5), (Group("llama-3.1-70b", "H100", 1, 1, 1, 1.0),),
                scenario=PLAN.scenario)
    with pytest.raises(BouteError, match=r"llama-3.1-70b on 1xH100 .* does not fit"):
        deploy_plan(plan, backend="emulated")           # before any Ray call


def test_name_value_pairs_for_flags_and_builder_args() -> None:
    from common.pairs import PairError, parse_pairs

    assert parse_pairs([" a = 1 ", "", "b=x=y"], "--model") == {"a": "1", "b": "x=y"}
    assert parse_pairs([""], "models") == {}      # the builder default "" split by ","
    with pytest.raises(PairError, match=r"models 'a=' must look like NAME=VALUE"):
        parse_pairs(["a="], "models")
    with pytest.raises(ValueError, match=r"gpus_per_node 'H100' must look like NAME=VALUE"):
        parse_pairs(["H100"], "gpus_per_node")


def test_deploy_serve_config_json_and_default_backend(tmp_path: Path, capsys) -> None:
    plan = tmp_path / "plan.json"
    PLAN.save(plan)
    out = tmp_path / "serve.yaml"
    assert main(["--json", "deploy", str(plan), "--serve-config", str(out),
                 "--no-predictions"]) == 0
    assert json.loads(capsys.readouterr().out) == {"serve_config": str(out), "applications": [
        "boute", "llama-3.1-70b-H100-tp4pp1", "llama-3.1-8b-RTX-4090-tp1pp1",
        "llama-3.1-8b-RTX-5090-tp1pp1"]}
    args = yaml.safe_load(out.read_text())["applications"][0]["args"]
    assert args["backend"] == "vllm"                  # real engines unless emulated is asked


def test_serve_config_ships_the_groups_prediction_tables(tmp_path: Path, capsys) -> None:
    """`boute deploy --serve-config` (the `serve deploy` path) gives the router the same
    prediction tables as a live deploy: one per group, the perf DB's P95 at the DB's rates."""
    from profiling import PerfDB

    scenario, db, plan = tmp_path / "s.yaml", tmp_path / "db.parquet", tmp_path / "plan.json"
    scenario.write_text(SERVE_SMALL_SCENARIO)
    assert main(["plan", "--scenario", str(scenario), "--db", str(db), "--quality", "87",
                 "--solver", "exact", "--resim-seeds", "0", "--plot", "",
                 "--out", str(plan)]) == 0
    out = tmp_path / "serve.yaml"
    assert main(["deploy", str(plan), "--serve-config", str(out), "--scenario", str(scenario),
                 "--db", str(db), "--backend", "emulated"]) == 0
    capsys.readouterr()
    router = yaml.safe_load(out.read_text())["applications"][0]
    tables = router["deployments"][0]["user_config"]["predictions"]
    groups = Plan.load(plan).groups
    assert set(tables) == {g.name for g in groups}
    rows = PerfDB.load(db).table.to_pylist()
    g = groups[0]
    want = [r["latency_p95_s"] for r in rows if (r["model"], r["gpu"], r["tp"], r["pp"]) ==
            (g.model, g.gpu, g.tp, g.pp) and not r["saturated"]]
    assert tables[g.name]["p95_s"][:len(want)] == pytest.approx(want)

