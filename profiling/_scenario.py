"""Scenario files: what a user can rent, which models, which workload, and the sweep settings.

A scenario is YAML, validated once with pydantic at the entry point and typed after that.
Presets ship as package data (`profiling/data/scenarios/*.yaml`): ``paper-gsm8k`` (the default)
and ``paper-mtbench``. Planning stages read the parts they need: profiling reads ``gpus``,
``models``, ``workload`` and ``profile``; the optimizer also reads ``budget_per_hour``,
``task`` and ``targets``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import CatalogError, ScenarioError, TraceError
from common.textfile import read_utf8

from ._arrivals import ScaledTraffic, ThinnedTraffic, Traffic
from ._conversations import PrefixSpec, SharedTraffic
from ._workload import TRACE_SHAPES, Trace, generate_trace, load_trace

if TYPE_CHECKING:
    from ._catalog import Catalog, GpuType

__all__ = ["DEFAULT_SCENARIO", "LengthClasses", "NamedWorkload", "PrefixSharing", "ProfileSpec",
           "Scenario",
           "ScenarioError", "length_thresholds", "list_presets", "load_scenario",
           "request_tokens"]

DEFAULT_SCENARIO = "paper-gsm8k"
# Bounds that catch typos and unit mix-ups before a sweep starts: the paper's setting is
# 100 req/s, $30/h and P95 targets of 8-12 s (benchmarks/data/reference/calibration.md s0),
# four to six orders below.
IntArray = npt.NDArray[np.int64]
MAX_RATE_RPS = 1e6
MAX_BUDGET_PER_HOUR = 1e7
MAX_LATENCY_S = 86_400.0    # one day


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GpuOffer(_Strict):
    """GPUs of one type on offer.

    An offer's key names the GPU type in plans and perf DBs. With `gpu` set, the key is an
    *alias* of that catalog GPU (same silicon, its own stock and price), so that the same GPU
    can be offered twice, e.g. ``H100: {count: 64}`` on demand next to
    ``H100-spot: {gpu: H100, count: 64, price_per_hour: 1.35}``.
    """

    count: int = Field(8, ge=1, le=4096, description="GPUs of this type that can be rented.")
    price_per_hour: float | None = Field(
        None, ge=0, le=1e4, description="Override of the catalog's $/GPU-hour for this "
        "scenario (at most $10,000, the catalog's bound).")
    gpu: str | None = Field(None, min_length=1, description="The catalog GPU this offer rents "
                            "(e.g. `H100` for an `H100-spot` offer); default: the offer's key.")


class ModelPair(_Strict):
    """The weak (small, cheap) and strong (large) model."""

    weak: str = Field("llama-3.1-8b", description="Catalog name of the small model.")
    strong: str = Field("llama-3.1-70b", description="Catalog name of the large model.")


MAX_MODELS = 8
"""Models of one ladder: the search's dimension grows by one per model and workload."""
MAX_WORKLOADS = 8


ArrivalModel = Literal["poisson", "gamma", "trace", "modulated"]


class PrefixSharing(_Strict):
    """Requests that share prefixes: applications' system prompts and multi-turn chats.

    The generated workload (`profiling._conversations`) draws conversations of `turns` mean
    turns, each of an application (Zipf popularity) whose system prompt starts every prompt;
    a turn's prompt holds the whole conversation so far. The perf DB then simulates every
    replica with vLLM's prefix cache (`profiling._prefix_cache`), routed by `routing`.
    """

    apps: int = Field(10, ge=1, le=100_000, description="Applications, each with its own "
                      "system prompt.")
    system_tokens: float = Field(1000.0, ge=0, le=100_000, description="Mean system prompt "
                                 "length, tokens (0: none).")
    system_tokens_median: float | None = Field(
        None, gt=0, le=100_000, description="Median system prompt length (log-normal, at "
        "most the mean); default: every application's prompt is `system_tokens` long.")
    zipf: float = Field(1.0, ge=0, le=5.0, description="Popularity exponent of the "
                        "applications: the k-th most used gets a share ~ k^-zipf (0: uniform).")
    turns: float = Field(1.0, ge=1, le=100, description="Mean turns per conversation "
                         "(geometric; 1: one-shot requests).")
    think_s: float = Field(30.0, gt=0, le=3600, description="Mean seconds between two turns "
                           "of a conversation.")
    max_context_tokens: int = Field(8192, ge=2, le=10_000_000, description="A conversation "
                                    "ends before a turn's prompt + answer passes this.")
    routing: Literal["affinity", "random"] = Field(
        "affinity", description="How a group spreads requests over its replicas: affinity "
        "(every turn of a conversation on one replica, as a prefix-aware router does) or "
        "random (a replica never holds a conversation's previous turn; only system prompts "
        "are reused).")
    cache: bool = Field(True, description="Model vLLM's automatic prefix caching (false: "
                        "plan as if every prompt were prefilled whole).")

    @model_validator(mode="after")
    def _median(self) -> PrefixSharing:
        if self.system_tokens_median is not None and (
                self.system_tokens_median > self.system_tokens):
            raise ValueError(f"prefix.system_tokens_median={self.system_tokens_median:g} must "
                             f"be at most system_tokens={self.system_tokens:g} (a log-normal's "
                             "median is below its mean)")
        return self

    def spec(self) -> PrefixSpec:
        """The generator's `PrefixSpec`."""
        return PrefixSpec(self.apps, self.system_tokens, self.system_tokens_median, self.zipf,
                          self.turns, self.think_s, self.max_context_tokens)


class Workload(_Strict):
    """The request stream: a built-in shape or a trace file, at a total rate."""

    shape: str | None = Field("gsm8k", description="Built-in trace shape (gsm8k, mtbench, "
                              "sharegpt); ignored when `trace` is set.")
    trace: str | None = Field(None, description="Path of a CSV/JSONL/Parquet trace file "
                              "(relative paths: from the scenario file's folder).")
    columns: dict[str, str] | None = Field(
        None, description="The trace file's column names: ours -> theirs, e.g. {arrival_s: "
        "TIMESTAMP, input_tokens: ContextTokens, output_tokens: GeneratedTokens} "
        "(as `boute trace --columns`).")
    time_unit: Literal["auto", "s", "ms", "us", "ns"] = Field(
        "auto", description="Unit of a numeric arrival column (auto: seconds, or an epoch "
        "clock detected by magnitude); datetime columns are read as such.")
    rate_rps: float = Field(100.0, gt=0, le=MAX_RATE_RPS,
                            description="Total request rate of the system, req/s (a trace's "
                            "arrival times are scaled to it).")
    arrival: Literal["auto", "poisson", "gamma", "trace", "modulated"] = Field(
        "auto", description="Arrival process: auto (a trace file's own arrivals, else "
        "poisson), poisson, gamma (bursty gaps), trace (the file's arrivals, drawn from the "
        "whole file), modulated (Poisson with a rate redrawn every minute, `minute_cv`); "
        "poisson with a trace file keeps its lengths and replaces its arrivals.")
    burstiness_cv: float = Field(1.0, gt=0, le=100.0, description="Gamma inter-arrival CV "
                                 "(1 = Poisson; at most 100, a gamma shape of 1e-4).")
    minute_cv: float = Field(0.5, ge=0, le=10.0, description="Coefficient of variation of "
                             "the per-minute rate of `arrival: modulated` (production "
                             "traces: 0.2 to 1.0).")
    prefix: PrefixSharing | None = Field(
        None, description="Shared system prompts and multi-turn conversations (prefix "
        "caching); generated shapes with poisson arrivals only (a trace file carries its own "
        "prefix_id, prefix_tokens, session_id and turn columns).")
    daily_profile: list[float] | None = Field(
        None, min_length=2, max_length=1440, description="Relative rate at evenly spaced "
        "times of the day (24 values: hours 0-23), linear in between; `rate_rps` is the "
        "day's mean. `boute schedule` plans one plan per window of the day on it (default: "
        "a flat day).")

    @model_validator(mode="after")
    def _known_shape(self) -> Workload:
        if self.trace is None and self.shape not in TRACE_SHAPES:
            raise ValueError(f"workload.shape={self.shape!r} is unknown; use one of "
                             f"{sorted(TRACE_SHAPES)} or set workload.trace")
        if self.arrival == "trace" and self.trace is None:
            raise ValueError("workload.arrival='trace' needs workload.trace (a file with "
                             "arrival times); for generated bursts use 'modulated'")
        if self.arrival == "modulated" and self.trace is not None:
            raise ValueError("workload.arrival='modulated' generates arrivals but "
                             f"workload.trace={self.trace!r} has its own; use arrival: trace "
                             "(or auto), or drop the trace")
        if self.prefix is not None and (self.trace is not None
                                        or self.arrival_model != "poisson"):
            raise ValueError("workload.prefix generates conversations with poisson arrivals "
                             f"(workload.arrival={self.arrival!r}, trace={self.trace!r}); a "
                             "trace file carries its own sharing columns")
        if self.daily_profile is not None and (
                min(self.daily_profile) < 0 or max(self.daily_profile) <= 0):
            raise ValueError(f"workload.daily_profile={self.daily_profile} must hold relative "
                             "rates >= 0, not all 0 (e.g. 24 hourly values)")
        if self.columns is not None:
            bad = sorted(set(self.columns) - {"arrival_s", "input_tokens", "output_tokens",
                                              "prompt"})
            if bad:
                raise ValueError(f"workload.columns names {bad}; map only arrival_s, "
                                 "input_tokens, output_tokens and prompt to the file's columns")
        return self

    def shared_traffic(self, num_requests: int, seed: int) -> SharedTraffic | None:
        """The conversation traffic of `prefix` (None without it).

        Each run covers at least ten mean conversation spans (``10 turns think_s``), so
        that most conversations are seen whole.
        """
        if self.prefix is None:
            return None
        assert self.shape is not None
        return SharedTraffic(self.shape, self.prefix.spec(), num_requests, seed,
                             self.prefix.routing, self.prefix.cache,
                             min_span_s=10.0 * self.prefix.turns * self.prefix.think_s)

    @property
    def arrival_model(self) -> ArrivalModel:
        """The arrival process in effect (``auto`` resolved)."""
        if self.arrival == "auto":
            return "trace" if self.trace is not None else "poisson"
        return self.arrival

    def load(self) -> Trace:
        """The workload's trace file, with its column mapping and time unit.

        Raises:
            TraceError: no `trace` set, or the file is unreadable or malformed.

        """
        if self.trace is None:
            raise TraceError("workload.trace is not set")
        return load_trace(self.trace, columns=self.columns, time_unit=self.time_unit)


class NamedWorkload(Workload):
    """One of several workloads sharing the GPU pool: its own traffic, task and quality.

    Requests carry the workload's name (model alias ``auto:NAME`` or the ``x-boute-workload``
    header); each workload gets its own routing shares over the models.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="Workload name, "
                      "used in plans, request metadata and metrics (lower case, digits, - _).")
    task: str = Field("gsm8k", description="Task of its quality (gsm8k, mtbench, ...).")
    scores: dict[str, float] | None = Field(
        None, description="Published score of each model on the task, by catalog name "
        "(overrides the embedded ones; needed for models the task has none for).")
    quality_records: str | None = Field(
        None, description="Per-query eval records (Parquet/CSV: router_score and "
        "quality_<model> per model) giving its quality exactly.")


class ProfileSettings(_Strict):
    """How densely the perf DB samples each replica config."""

    num_rates: int = Field(32, ge=4, le=256, description="Rates per replica config.")
    num_requests: int = Field(1000, ge=100, le=100_000,
                              description="Requests simulated per (config, rate).")
    seed: int = Field(0, ge=0, description="Seed of the generated base trace.")
    hardware_profiles: str | None = Field(
        None, description="Folder of hardware profiles (`boute profile hardware` output, e.g. "
        "build/calibration) or one profile directory, relative to the working directory: GPU "
        "types with a profile there get the efficiency fitted on it. None (default): the "
        "spec-sheet roofline with the default factors. `--hardware-profiles` overrides it.")
    served_calibration: str | None = Field(
        None, description="A served calibration (`boute calibrate --out FILE`), relative to "
        "the working directory: its GPU types get the fitted efficiency scale (times their "
        "hardware-profile or spec-sheet efficiency) and its configs the fitted engine "
        "overheads. None (default): none. `--calibration` overrides it.")


LENGTH_QUANTILES = (0.4, 0.5, 0.6)
"""Where ``threshold_tokens: auto`` puts its candidate thresholds: these quantiles of the
requests' prompt + max_tokens."""


class LengthClasses(_Strict):
    """Request classes by length: *short* (prompt + max_tokens <= threshold) and *long*.

    Each class is served by its own replica groups, so that short requests, whose P95 is
    short, can run on cheap latency-bound replicas while long ones go where long sequences are
    fast. Routing between models is unchanged (a query's model depends on its difficulty
    score, not on its length): each model's traffic is split by length. The planner plans
    with each candidate threshold and keeps the cheapest plan, with or without classes
    (`tuning.plan_length_classes`): classes are used only where they pay.
    """

    threshold_tokens: Literal["auto"] | int | list[int] = Field(
        "auto", description="Candidate thresholds, tokens of prompt + max_tokens: `auto` "
        "(the 40/50/60% quantiles of the workloads' lengths), one number, or a list.")

    @model_validator(mode="after")
    def _positive(self) -> LengthClasses:
        values = ([self.threshold_tokens] if isinstance(self.threshold_tokens, int)
                  else [] if self.threshold_tokens == "auto" else self.threshold_tokens)
        if isinstance(self.threshold_tokens, list) and not values:
            raise ValueError("length_classes.threshold_tokens=[] lists no threshold; give "
                             "one or more token counts, or auto")
        bad = [v for v in values if not 1 <= v <= 10_000_000]
        if bad:
            raise ValueError(f"length_classes.threshold_tokens={bad[0]} must be a number of "
                             "tokens from 1 to 10,000,000 (prompt + max_tokens)")
        return self


class Target(_Strict):
    """A (quality, P95 latency) target of the paper's Table 3.

    With several workloads, ``quality`` maps each workload's name to its minimum quality.
    """

    quality: float | dict[str, float] = Field(
        description="Minimum quality (task's unit); with several workloads, one per "
        "workload name.")
    p95_s: float = Field(gt=0, le=MAX_LATENCY_S, description="Maximum P95 latency, seconds "
                         "(every replica group meets it; see README, planning P95).")

    @property
    def single_quality(self) -> float:
        """The quality of a one-workload target.

        Raises:
            ScenarioError: the target gives one quality per workload.

        """
        if isinstance(self.quality, dict):
            raise ScenarioError(f"target quality {self.quality} is per workload; this step "
                                "needs one number")
        return self.quality

    def qualities(self, workloads: tuple[str, ...]) -> tuple[float, ...]:
        """Minimum quality of each workload, in `workloads` order."""
        if isinstance(self.quality, dict):
            return tuple(self.quality[w] for w in workloads)
        return tuple(self.quality for _ in workloads)


class Scenario(_Strict):
    """Everything a planning run needs besides the catalogs."""

    name: str = Field("custom", description="Scenario name (shown in outputs).")
    gpus: dict[str, GpuOffer] = Field(description="GPU types on offer, by catalog name.")
    models: ModelPair | list[str] = Field(
        default_factory=lambda: ModelPair(), description="Model pair {weak, strong}, or a "
        "ladder of 1 to 8 catalog models in order of capability (smallest first; one model: "
        "no routing, only the deployment is planned).")
    task: str = Field("gsm8k", description="Task of the quality curve (gsm8k, mtbench, ...).")
    workload: Workload = Field(default_factory=lambda: Workload(), description="Request stream.")
    workloads: list[NamedWorkload] | None = Field(
        None, description="Several workloads on one pool (replaces `workload` and `task`).")
    budget_per_hour: float = Field(30.0, gt=0, le=MAX_BUDGET_PER_HOUR,
                                   description="Budget, $/hour.")
    targets: list[Target] = Field(default_factory=list, description="Table-3 targets.")
    p95_ceiling_s: float = Field(60.0, gt=0, le=MAX_LATENCY_S, description="Slowest P95 a "
                                 "plan may have; the "
                                 "reference point of hypervolumes and the top of the latency "
                                 "grid of the optimizer.")
    profile: ProfileSettings = Field(default_factory=lambda: ProfileSettings(),
                                     description="Perf DB sweep settings.")
    length_classes: LengthClasses | None = Field(
        None, description="Split each model's traffic into short and long requests, each "
                          "served by its own replica groups (default: no split).")

    @model_validator(mode="after")
    def _some_gpus(self) -> Scenario:
        if not self.gpus:
            raise ValueError("gpus must list at least one GPU type")
        if isinstance(self.models, list):
            if not 1 <= len(self.models) <= MAX_MODELS:
                raise ValueError(f"models lists {len(self.models)} model(s); list 1 to "
                                 f"{MAX_MODELS}, smallest first")
            if len(set(self.models)) != len(self.models):
                raise ValueError(f"models={self.models} names a model twice; list each once")
        if self.workloads is not None:
            if not 1 <= len(self.workloads) <= MAX_WORKLOADS:
                raise ValueError(f"workloads lists {len(self.workloads)}; give 1 to "
                                 f"{MAX_WORKLOADS}")
            names = [w.name for w in self.workloads]
            if len(set(names)) != len(names):
                raise ValueError(f"workloads: the names {names} repeat; name each once")
            clash = {"workload", "task"} & self.model_fields_set
            if clash:
                raise ValueError(f"set either workloads or {' and '.join(sorted(clash))}, not "
                                 "both (each workload has its own rate, shape and task)")
        for i, t in enumerate(self.targets):
            if isinstance(t.quality, dict):
                want = set(self.workload_names)
                if set(t.quality) != want:
                    raise ValueError(f"targets[{i}].quality names {sorted(t.quality)}; give "
                                     f"one quality per workload: {sorted(want)}")
            elif self.workloads is not None and len(self.workloads) > 1:
                raise ValueError(f"targets[{i}].quality={t.quality} is one number but there "
                                 f"are {len(self.workloads)} workloads; map each workload "
                                 f"name to its quality")
        return self

    # -- the ladder and the workloads ------------------------------------------------------
    @property
    def model_names(self) -> tuple[str, ...]:
        """The models, smallest first (``(weak, strong)`` for a pair)."""
        if isinstance(self.models, ModelPair):
            return (self.models.weak, self.models.strong)
        return tuple(self.models)

    @property
    def named_workloads(self) -> tuple[NamedWorkload, ...]:
        """The workloads; a scenario with one `workload` has one named ``default``."""
        if self.workloads is not None:
            return tuple(self.workloads)
        return (NamedWorkload(name="default", task=self.task,
                              **self.workload.model_dump()),)

    @property
    def workload_names(self) -> tuple[str, ...]:
        """Names of `named_workloads`."""
        return tuple(w.name for w in self.named_workloads)

    @property
    def total_rate_rps(self) -> float:
        """Sum of the workloads' rates."""
        return float(sum(w.rate_rps for w in self.named_workloads))

    @property
    def is_pair(self) -> bool:
        """Two models and one workload: the paper's setting (its exact solver and encoding)."""
        return len(self.model_names) == 2 and len(self.named_workloads) == 1

    def for_workload(self, name: str) -> Scenario:
        """The scenario cut to workload `name` (its perf DB is profiled on that traffic).

        A scenario with one `workload` is itself; one with a ``workloads`` list keeps that
        one entry and is named ``<scenario>-<workload>``.
        """
        wl = next(w for w in self.named_workloads if w.name == name)
        if self.workloads is None:
            return self
        return self.model_copy(update={"name": f"{self.name}-{name}", "workloads": [wl]})

    def with_rates(self, rates: dict[str, float]) -> Scenario:
        """A copy with new rates for the named workloads (the others keep theirs)."""
        if self.workloads is None:
            rate = rates.get("default", self.workload.rate_rps)
            return self.model_copy(update={"workload": self.workload.model_copy(
                update={"rate_rps": rate})})
        return self.model_copy(update={"workloads": [
            w.model_copy(update={"rate_rps": rates.get(w.name, w.rate_rps)})
            for w in self.workloads]})

    def profile_spec(self, length_tokens: tuple[int, int] | None = None) -> ProfileSpec:
        """The profiling view of this scenario (of one length class: `ProfileSpec`)."""
        return ProfileSpec(self, length_tokens)

    def catalog_gpu(self, offer: str) -> str:
        """The catalog GPU that offer `offer` rents: its ``gpu`` field, else its key."""
        return self.gpus[offer].gpu or offer

    def offered_gpus(self, catalog: Catalog, source: str | None = None) -> dict[str, GpuType]:
        """The GPU type of each offer, by offer key, in scenario order.

        Each is the catalog row of the offer's GPU (`catalog_gpu`) renamed to the offer's key,
        at the offer's price (``price_per_hour``, else the catalog's); everything else (memory,
        bandwidth, TFLOPS, node size) is the catalog GPU's.

        Args:
            catalog: the merged catalog (embedded + the user's files).
            source: how to name the scenario in messages (default: its name).

        Raises:
            ScenarioError: an offer names no catalog GPU (its key without ``gpu``, or its
                ``gpu``), or an alias key is itself another catalog GPU's name; the message
                names the field, the value and the fix.

        """
        where = f"scenario {source or self.name!r}"
        out: dict[str, GpuType] = {}
        for key, offer in self.gpus.items():
            if offer.gpu is None:
                try:
                    base = catalog.gpu(key)
                except CatalogError as exc:
                    raise ScenarioError(f"{where}: gpus: {exc}; or, for another name of a "
                                        f"catalog GPU, set gpus.{key}.gpu") from None
            else:
                try:
                    base = catalog.gpu(offer.gpu)
                except CatalogError as exc:
                    raise ScenarioError(f"{where}: gpus.{key}.gpu: {exc}") from None
                if key != offer.gpu and key in catalog.gpus:
                    raise ScenarioError(
                        f"{where}: gpus.{key}.gpu={offer.gpu!r}: the key {key!r} is itself a "
                        f"catalog GPU type, so it cannot rent {offer.gpu!r}; give this offer a "
                        f"name of its own (e.g. '{offer.gpu}-spot') or drop `gpu`")
            price = base.price_per_hour if offer.price_per_hour is None else offer.price_per_hour
            out[key] = replace(base, name=key, price_per_hour=price)
        return out

    def check_catalog(self, catalog: Catalog, source: str | None = None) -> None:
        """Check that every GPU type and model the scenario names is in `catalog`.

        Args:
            catalog: the merged catalog (embedded + the user's files).
            source: how to name the scenario in messages (default: its name).

        Raises:
            ScenarioError: naming the scenario, the field and the unknown name, with the
                catalog's known names and how to add one (see `offered_gpus` for aliases).

        """
        where = f"scenario {source or self.name!r}"
        self.offered_gpus(catalog, source)
        for i, name in enumerate(self.model_names):
            field = (("models.weak", "models.strong")[i] if isinstance(self.models, ModelPair)
                     else f"models[{i}]")
            try:
                catalog.model(name)
            except CatalogError as exc:
                raise ScenarioError(f"{where}: {field}: {exc}") from None


class ProfileSpec:
    """What the perf DB sweeps: GPUs with counts, models, the base trace and the grid.

    ``gpus`` maps *catalog* GPUs to the most GPUs any offer of them has: offers that alias one
    GPU (``gpu:``) share its rows, since they differ only in price and stock, and the planner
    (`tuning.load_problem`) prices each offer and keeps the configs that fit its stock.

    ``length_tokens = (lo, hi)``: the DB of one request class by length (`LengthClasses`):
    only requests with ``lo < prompt + max_tokens <= hi`` (the trace's input + output tokens).
    A generated workload draws `CLASS_OVERSAMPLE` times the requests (more for a rare class,
    up to `MAX_CLASS_DRAW`) and keeps the first ``num_requests`` of the class, so every class
    is measured on as many requests as the whole workload; a trace file keeps its requests
    of the class. Arrivals are the thinned
    process, rescaled to 1 req/s.
    """

    def __init__(self, scenario: Scenario, length_tokens: tuple[int, int] | None = None
                 ) -> None:
        self.scenario = scenario
        self.name = scenario.name
        self.length_tokens = length_tokens
        self.gpus: dict[str, int] = {}
        for key, offer in scenario.gpus.items():
            gpu = scenario.catalog_gpu(key)
            self.gpus[gpu] = max(self.gpus.get(gpu, 0), offer.count)
        self.models = list(dict.fromkeys(scenario.model_names))
        self.num_rates = scenario.profile.num_rates
        self.hardware_profiles = scenario.profile.hardware_profiles
        self.served_calibration = scenario.profile.served_calibration

    @cached_property
    def _file(self) -> Trace:
        """The workload's trace file, read once per spec."""
        return self.scenario.named_workloads[0].load()

    @cached_property
    def _traffic(self) -> Traffic:
        workloads = self.scenario.named_workloads
        if len(workloads) != 1:
            raise ScenarioError(f"scenario {self.name!r} has {len(workloads)} workloads: "
                                "profile each one (`Scenario.for_workload`)")
        wl, pr = workloads[0], self.scenario.profile
        shared = wl.shared_traffic(pr.num_requests, pr.seed)
        if shared is not None:
            if self.length_tokens is not None:
                raise ScenarioError(f"scenario {self.name!r}: length classes and "
                                    "workload.prefix do not combine yet; drop one")
            return shared
        model = wl.arrival_model
        if model in ("trace", "modulated"):
            stream = self._stream(wl)
            if wl.arrival == "auto" and stream.duration_s < MIN_BOOTSTRAP_S:
                # Too short to show minute-scale swings (a replanning window, a test file):
                # its own arrivals, time-scaled to each rate, as recorded.
                return ScaledTraffic(self._recorded(wl), "trace-head")
            return ThinnedTraffic(stream, model, pr.num_requests, pr.seed)
        return ScaledTraffic(self._renewal_base(wl), model)

    def _recorded(self, wl: NamedWorkload) -> Trace:
        """A short trace file's first `num_requests` (its class's) at 1 req/s, as recorded."""
        n = self.scenario.profile.num_requests
        trace = (self._file.head(n) if self.length_tokens is None else
                 self._class_of(self._file, limit=n))
        return trace.scaled_to(1.0) if trace.duration_s > 0 else trace

    def _stream(self, wl: NamedWorkload) -> Trace:
        """The workload at its own rate, real seconds (a length class's requests only).

        A trace file is scaled to ``rate_rps``; ``modulated`` arrivals are generated for
        `MODULATED_HORIZON_S` (at most `MAX_MODULATED_REQUESTS` requests).
        """
        if wl.trace is not None:
            stream = self._file
            stream = stream.scaled_to(wl.rate_rps) if stream.duration_s > 0 else stream
        else:
            assert wl.shape is not None
            n = int(min(MAX_MODULATED_REQUESTS, max(self.scenario.profile.num_requests,
                                                    wl.rate_rps * MODULATED_HORIZON_S)))
            stream = generate_trace(wl.shape, rate_rps=wl.rate_rps, num_requests=n,
                                    arrival="modulated", minute_cv=wl.minute_cv,
                                    seed=self.scenario.profile.seed)
        if self.length_tokens is None:
            return stream
        return self._class_of(stream)

    def _renewal_base(self, wl: NamedWorkload) -> Trace:
        pr = self.scenario.profile
        n = pr.num_requests * (1 if self.length_tokens is None else CLASS_OVERSAMPLE)
        arrival: Literal["poisson", "gamma"] = ("gamma" if wl.arrival_model == "gamma"
                                                else "poisson")
        if wl.trace is not None:
            # Renewal arrivals on the file's lengths, drawn evenly from the whole file.
            lengths = self._file
            idx = np.unique(np.linspace(0, len(lengths) - 1, min(len(lengths), n)
                                        ).astype(np.int64))
            arrivals = generate_trace("gsm8k", rate_rps=1.0, num_requests=len(idx),
                                      arrival=arrival, burstiness_cv=wl.burstiness_cv,
                                      seed=pr.seed).arrival_s
            trace = lengths.take(idx, arrivals)
        else:
            assert wl.shape is not None
            trace = generate_trace(wl.shape, rate_rps=1.0, num_requests=n, arrival=arrival,
                                   burstiness_cv=wl.burstiness_cv, seed=pr.seed)
            if self.length_tokens is None:
                return trace                    # generated at 1 req/s already
            found = int(trace.in_length_span(*self.length_tokens).sum())
            if found < pr.num_requests:         # a rare class: draw enough to measure it
                more = min(MAX_CLASS_DRAW, int(np.ceil(n * pr.num_requests * 1.2
                                                       / max(found, 1))))
                trace = generate_trace(wl.shape, rate_rps=1.0, num_requests=more,
                                       arrival=arrival, burstiness_cv=wl.burstiness_cv,
                                       seed=pr.seed)
        if self.length_tokens is not None:
            trace = self._class_of(trace, limit=pr.num_requests)
        return trace.scaled_to(1.0) if trace.duration_s > 0 else trace

    def _class_of(self, trace: Trace, limit: int | None = None) -> Trace:
        """The requests of `trace` in this spec's length class (the first `limit`).

        Raises:
            ScenarioError: fewer than `MIN_CLASS_REQUESTS` requests of the class.

        """
        assert self.length_tokens is not None
        lo, hi = self.length_tokens
        keep = np.flatnonzero(trace.in_length_span(lo, hi))[:limit]
        if len(keep) < MIN_CLASS_REQUESTS:
            raise ScenarioError(
                f"scenario {self.name!r}: only {len(keep)} request(s) of its workload "
                f"have {lo} < prompt + max_tokens <= {hi} tokens; a length class needs "
                f"{MIN_CLASS_REQUESTS} to be measured: move length_classes.threshold_tokens "
                "toward the median length")
        return trace.take(keep, name=f"{trace.name}-{lo}-{hi}")

    def traffic(self) -> Traffic:
        """What the sweep simulates at each rate (`profiling._arrivals`)."""
        return self._traffic

    def base_trace(self) -> Trace:
        """The requests the DB is measured on (their fingerprint identifies its input).

        The renewal (or short recorded) base trace at 1 req/s, or the modulated stream at
        the workload's rate.
        """
        t = self._traffic
        if isinstance(t, ScaledTraffic):
            return t.base
        if isinstance(t, SharedTraffic):
            return t.lengths()
        assert isinstance(t, ThinnedTraffic)
        return t.stream


MIN_BOOTSTRAP_S = 600.0
"""A trace file (at the workload's rate) shorter than this is replayed as recorded with
``arrival: auto``: ten minutes is the least that holds per-minute swings worth drawing
stretches from (``arrival: trace`` asks for the bootstrap anyway)."""
MODULATED_HORIZON_S = 3600.0
"""A generated `modulated` workload is drawn for one hour (60 per-minute rates)."""
MAX_MODULATED_REQUESTS = 1_000_000


CLASS_OVERSAMPLE = 4
MAX_CLASS_DRAW = 400_000
"""Most requests drawn to find a rare class's (its share may be below 1%)."""
MIN_CLASS_REQUESTS = 100


def request_tokens(scenario: Scenario) -> dict[str, IntArray]:
    """Prompt + max_tokens of each workload's profiled requests (its base trace), by name."""
    out = {}
    for name in scenario.workload_names:
        trace = scenario.for_workload(name).profile_spec().base_trace()
        out[name] = trace.input_tokens + trace.output_tokens
    return out


def length_thresholds(scenario: Scenario) -> tuple[int, ...]:
    """Candidate thresholds of the scenario's `LengthClasses` (empty: none).

    ``auto``: the `LENGTH_QUANTILES` of all workloads' requests pooled (each workload weighted
    by its rate), rounded to whole tokens, without repeats.
    """
    lc = scenario.length_classes
    if lc is None:
        return ()
    if isinstance(lc.threshold_tokens, int):
        return (lc.threshold_tokens,)
    if isinstance(lc.threshold_tokens, list):
        return tuple(sorted(set(lc.threshold_tokens)))
    tokens = request_tokens(scenario)
    values = np.concatenate(list(tokens.values())).astype(np.float64)
    weights = np.concatenate([np.full(len(v), w.rate_rps / len(v)) for v, w in
                              zip(tokens.values(), scenario.named_workloads, strict=True)])
    order = np.argsort(values, kind="stable")
    cdf = np.cumsum(weights[order]) / weights.sum()
    picks = [int(values[order][min(int(np.searchsorted(cdf, q)), len(cdf) - 1)])
             for q in LENGTH_QUANTILES]
    return tuple(sorted(set(picks)))


def list_presets() -> list[str]:
    """Names of the embedded scenario presets."""
    folder = resources.files("profiling") / "data" / "scenarios"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def _format_validation(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f"={value!r}"
    return f"scenario {source}: {loc}{shown}: {err['msg']}; fix it in the file"


def load_scenario(name_or_path: str | Path | None = None) -> Scenario:
    """Load a preset by name or a scenario YAML file.

    Raises:
        ScenarioError: unknown preset, unreadable file, or a field breaking its rule (the
            message names the field, the value and the rule).

    """
    name = str(name_or_path or DEFAULT_SCENARIO)
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ScenarioError(f"scenario file {name!r} does not exist")
        source = repr(name)
        text = read_utf8(path, f"scenario file {name!r}", ScenarioError)
    elif name in list_presets():
        text = (resources.files("profiling") / "data" / "scenarios" / f"{name}.yaml").read_text()
        source = f"preset {name!r}"
    else:
        raise ScenarioError(f"scenario={name!r} is neither a file nor a preset; presets: "
                            f"{', '.join(list_presets())}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {source}: not valid YAML ({exc.__class__.__name__})"
                            ) from None
    if not isinstance(data, dict):
        raise ScenarioError(f"scenario {source}: expected a YAML mapping")
    data.setdefault("name", path.stem if path.is_file() else name)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_format_validation(source, exc)) from None
    return _paths_from(scenario, path.parent) if path.is_file() else scenario


def _paths_from(scenario: Scenario, folder: Path) -> Scenario:
    """`scenario` with its workloads' relative file paths resolved against `folder`.

    A relative ``trace`` or ``quality_records`` names a file in the scenario file's folder;
    one that is only found relative to the working directory (how scenarios were read
    before) keeps that meaning.
    """
    def resolve(value: str | None) -> str | None:
        if value is None or Path(value).is_absolute():
            return value
        here = folder / value
        return str(here) if here.exists() or not Path(value).exists() else value

    def fixed(w: Workload) -> dict[str, str | None]:
        out = {"trace": resolve(w.trace)}
        if isinstance(w, NamedWorkload):
            out["quality_records"] = resolve(w.quality_records)
        return out

    if scenario.workloads is None:
        return scenario.model_copy(update={"workload": scenario.workload.model_copy(
            update=fixed(scenario.workload))})
    return scenario.model_copy(update={"workloads": [w.model_copy(update=fixed(w))
                                                     for w in scenario.workloads]})
