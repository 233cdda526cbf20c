"""The BoTorch MOBO loop: Sobol start, then qLogNEHVI batches with an outcome constraint.

One step (`MoboState.propose`): fit a GP per outcome (two objectives and one constraint slack,
see `tuning._run._outcomes`) to at most `gp_points` of the points so far — the leading
non-dominated layers of the feasible ones plus a random rest, since the acquisition only needs
the model to be right near the front — and maximize qLogNEHVI — the log noisy expected
hypervolume improvement, reference point at the origin of the normalized objectives, the
constraint entering as a smoothed feasibility weight — over a discrete candidate set, for a
batch of q new points. The same `MoboState` drives the in-process loop (`run_mobo`) and the
Ray Tune searcher (`tuning.tune.BouteSearcher`).

What keeps a step under a second on 2 cores (`benchmarks/search.py` times fit, acquisition
and decode per step):

* **one torch thread** during the step: the matrices are at most 96 x 96, so a second thread
  gains nothing, and on a machine with another busy process the oversubscribed thread pool
  turned 8 s steps into 45 s;
* **warm-started hyper-parameters**: the GP's kernel and noise parameters are fitted by
  L-BFGS every `refit_every` steps, starting from the last fit; the steps in between reuse
  them (the model is re-conditioned on all the data, only the optimizer is skipped);
* **the baseline of NEHVI is the leading layers** (`nehvi_baseline` points, the current
  front and the layers behind it) instead of every training point with pruning: the box
  decompositions NEHVI keeps per MC sample are built on it;
* **sizes follow the dimension d**: ``mc_samples`` base samples, and ``candidates_per_dim * d``
  fresh Sobol plus as many local candidates (capped by `n_candidates` / `n_local`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from ._front import pareto_mask
from ._problem import Problem
from ._run import (
    Callback,
    Goal,
    SearchResult,
    StopRule,
    _outcomes,
    _Run,
    make_encoding,
    plan_keys,
)

__all__ = ["MoboSettings", "MoboState", "run_mobo", "torch_threads"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MoboSettings:
    """Loop sizes; the defaults are tuned for sub-second steps on 2 CPU cores.

    Attributes:
        n_init: Sobol points before the first BO step.
        q: points per BO step.
        mc_samples: quasi-MC base samples of qLogNEHVI.
        fit_maxiter: L-BFGS iterations of a hyper-parameter fit.
        refit_every: fit the hyper-parameters on every k-th step (1: every step); the steps
            in between reuse the last fit.
        gp_points: most training points of the GP (`training_subset`).
        nehvi_baseline: most points in NEHVI's baseline (`leading_layers`).
        candidates_per_dim: fresh Sobol candidates (and local ones) per dimension.
        n_candidates, n_local: caps of the two candidate sets.
        local_scale: std of the local perturbations (unit cube).
        batch_limit: candidates evaluated per acquisition call.
        threads: torch intra-op threads during a step.

    """

    n_init: int = 256
    q: int = 4
    mc_samples: int = 16
    fit_maxiter: int = 40
    refit_every: int = 4
    gp_points: int = 96
    nehvi_baseline: int = 16
    candidates_per_dim: int = 64
    n_candidates: int = 512
    n_local: int = 256
    local_scale: float = 0.02
    batch_limit: int = 256
    threads: int = 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class MoboState:
    """Observed points (unit cube) and outcomes; proposes the next batch.

    ``ehvi`` holds, per BO step, the best acquisition value as an expected hypervolume
    improvement: exp(qLogNEHVI) of the step's first greedy pick, the best single candidate
    (`tuning._run.StopRule`'s EHVI_t).

    ``plan_keys`` (optional) maps points to the keys of the plans they decode to
    (`tuning._run.plan_keys`). Given, candidates that decode to a plan already observed are
    dropped before the acquisition: the evaluator is deterministic, so their true improvement
    is exactly zero, while the GP (which models the decode's steps partly as noise) would
    still expect some, which kept EHVI_t at 2-8% of the hypervolume on fronts that had
    stopped moving. A step with no new plan among its candidates proposes Sobol points and
    records EHVI_t = 0.
    """

    dim: int
    seed: int
    settings: MoboSettings = field(default_factory=MoboSettings)
    x: list[FloatArray] = field(default_factory=list)
    y: list[FloatArray] = field(default_factory=list)
    step_seconds: list[dict[str, float]] = field(default_factory=list)
    ehvi: list[float] = field(default_factory=list)
    plan_keys: Callable[[FloatArray], list[bytes]] | None = None
    _seen: set[bytes] = field(default_factory=set)
    _sobol_drawn: int = 0
    _hyper: dict[str, Any] | None = None
    _steps: int = 0

    def observe(self, x: FloatArray, y: FloatArray) -> None:
        """Add evaluated points ``(N, dim)`` with outcomes ``(N, 3)``."""
        self.x.append(np.atleast_2d(x))
        self.y.append(np.atleast_2d(y))
        if self.plan_keys is not None:
            self._seen.update(self.plan_keys(np.atleast_2d(x)))

    @property
    def num_observed(self) -> int:
        """Points observed so far."""
        return sum(len(a) for a in self.x)

    def sobol(self, n: int) -> FloatArray:
        """The next n points of a scrambled Sobol sequence."""
        from torch.quasirandom import SobolEngine

        eng = SobolEngine(self.dim, scramble=True,  # type: ignore[no-untyped-call]
                          seed=self.seed)
        pts = eng.draw(self._sobol_drawn + n).double().numpy()[self._sobol_drawn:]
        self._sobol_drawn += n
        return np.asarray(pts)

    def propose(self, q: int | None = None) -> FloatArray:
        """Maximize qLogNEHVI for a batch of q points (Sobol while too few observations).

        Appends the step's ``{"fit_s", "acq_s"}`` to `step_seconds` and its expected
        hypervolume improvement to `ehvi`.
        """
        q = q or self.settings.q
        if self.num_observed < self.settings.n_init:
            return self.sobol(q)
        with torch_threads(self.settings.threads):
            return self._bo_step(q)

    def _bo_step(self, q: int) -> FloatArray:
        import torch
        from botorch.acquisition.multi_objective.logei import (
            qLogNoisyExpectedHypervolumeImprovement,
        )
        from botorch.acquisition.multi_objective.objective import (
            IdentityMCMultiOutputObjective,
        )
        from botorch.optim.optimize import optimize_acqf_discrete
        from botorch.sampling.normal import SobolQMCNormalSampler

        _skip_fused_kernel_compile()
        t0 = time.perf_counter()
        torch.manual_seed(self.seed + self.num_observed)
        x_all, y_all = np.concatenate(self.x), np.concatenate(self.y)
        keep = training_subset(y_all, self.settings.gp_points, self.seed)
        train_x = torch.as_tensor(x_all[keep], dtype=torch.float64)
        train_y = torch.as_tensor(y_all[keep], dtype=torch.float64)
        # Tiny jitter keeps duplicated decodes from making the GP singular.
        train_y = train_y + 1e-6 * torch.randn_like(train_y)
        model = self._model(train_x, train_y)
        t1 = time.perf_counter()
        lead = leading_layers(y_all[keep], self.settings.nehvi_baseline)
        baseline = train_x[torch.as_tensor(lead)] if lead.size else train_x
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            acq = qLogNoisyExpectedHypervolumeImprovement(
                model=model, ref_point=[0.0, 0.0], X_baseline=baseline,
                objective=IdentityMCMultiOutputObjective(outcomes=[0, 1]),
                constraints=[lambda z: -z[..., 2]],
                sampler=SobolQMCNormalSampler(torch.Size([self.settings.mc_samples])),
                prune_baseline=lead.size == 0)
            pool = self._new_plans(self._candidates(x_all, y_all))
            if len(pool) == 0:          # every candidate decodes to a known plan
                self.ehvi.append(0.0)
                self.step_seconds.append({"fit_s": t1 - t0, "acq_s": time.perf_counter() - t1})
                self._steps += 1
                return self.sobol(q)
            choices = torch.as_tensor(pool, dtype=torch.float64)
            cand, log_values = optimize_acqf_discrete(acq, q=min(q, len(pool)),
                                                      choices=choices,
                                                      max_batch_size=self.settings.batch_limit,
                                                      X_avoid=train_x)
        # qLogNEHVI is log(EHVI): back to the hypervolume's units. The first greedy pick is
        # the best single candidate (no pending points yet).
        self.ehvi.append(float(log_values.detach().reshape(-1)[0].exp()))
        self.step_seconds.append({"fit_s": t1 - t0, "acq_s": time.perf_counter() - t1})
        self._steps += 1
        return np.asarray(cand.detach().numpy())

    def _new_plans(self, z: FloatArray) -> FloatArray:
        """The points of `z` that decode to plans not observed yet, one per plan."""
        if self.plan_keys is None:
            return z
        keep, fresh = [], set()
        for i, k in enumerate(self.plan_keys(z)):
            if k not in self._seen and k not in fresh:
                fresh.add(k)
                keep.append(i)
        return z[keep]

    def _model(self, train_x: Any, train_y: Any) -> Any:
        """The GP on the training points, hyper-parameters fitted or reused (`refit_every`)."""
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        model = SingleTaskGP(train_x, train_y, outcome_transform=Standardize(m=3))
        if self._hyper is not None:
            model.load_state_dict(self._hyper, strict=False)
        if self._hyper is None or self._steps % max(1, self.settings.refit_every) == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                                 optimizer_kwargs={"options": {
                                     "maxiter": self.settings.fit_maxiter}})
            # Kernel and likelihood parameters only: the outcome transform's statistics
            # belong to the training data and are recomputed for each step's model.
            self._hyper = {k: v.detach().clone() for k, v in model.state_dict().items()
                           if not k.startswith("outcome_transform")}
        model.eval()
        return model

    def _candidates(self, x: FloatArray, y: FloatArray) -> FloatArray:
        """Points the acquisition is evaluated on.

        ``candidates_per_dim * dim`` fresh Sobol points over the cube (at most
        `n_candidates`) plus as many Gaussian perturbations (std `local_scale`, at most
        `n_local`) of the best feasible points (leading non-dominated layers), so narrow
        feasible slivers next to the front are resolved.
        """
        st = self.settings
        n = st.candidates_per_dim * self.dim
        rng = np.random.default_rng(self.seed + len(x))
        glob = self.sobol(min(st.n_candidates, n))
        lead = leading_layers(y, 16)
        if lead.size == 0:
            return glob
        centers = x[rng.choice(lead, size=min(st.n_local, n))]
        local = np.clip(centers + rng.normal(0.0, st.local_scale, centers.shape), 0.0, 1.0)
        return np.concatenate([glob, local])


def leading_layers(y: FloatArray, n_max: int) -> npt.NDArray[np.int64]:
    """Best feasible rows of outcomes ``y`` (N, 3), at most n_max.

    Feasible: ``y[:, 2] >= 0``; rows are taken layer by layer of non-domination in the
    objectives ``y[:, 0]``, ``y[:, 1]`` (both maximized), the best layer first.
    """
    keep: list[int] = []
    rest = np.flatnonzero(y[:, 2] >= 0)
    while rest.size and len(keep) < n_max:
        layer = pareto_mask(-y[rest, 1], y[rest, 0])
        keep.extend(rest[layer].tolist())
        rest = rest[~layer]
    return np.asarray(keep[:n_max], dtype=np.int64)


def training_subset(y: FloatArray, n_max: int, seed: int) -> npt.NDArray[np.int64]:
    """Rows of outcomes ``y`` (N, 3) to fit the GP on.

    All rows when N <= n_max, else the leading layers (`leading_layers`) up to half of n_max
    and a seeded random sample of the rest.
    """
    n = len(y)
    if n <= n_max:
        return np.arange(n)
    keep = leading_layers(y, n_max // 2)
    others = np.setdiff1d(np.arange(n), keep)
    rng = np.random.default_rng(seed)
    extra = rng.choice(others, size=min(others.size, n_max - keep.size), replace=False)
    return np.sort(np.concatenate([keep, extra]))


def _skip_fused_kernel_compile() -> None:
    """Keep BoTorch from JIT-compiling its optional fused qLogNEHVI kernel.

    BoTorch >= 0.17 compiles it with ninja on first use (about 50 s on 2 cores, once per
    machine); the pure-PyTorch path gives the same values. We mark the load as attempted so a
    planning run never stalls on a compiler. A kernel that is already importable
    (``logei_fused_ext``) is still used.
    """
    from botorch.acquisition.multi_objective import logei

    if getattr(logei, "_C", None) is None and hasattr(logei, "_load_attempted"):
        try:
            import logei_fused_ext  # noqa: F401
        except ImportError:
            logei._load_attempted = True


def run_mobo(
    problem: Problem,
    goal: Goal,
    *,
    seed: int = 0,
    stop: StopRule | None = None,
    encoding: str = "structured",
    callback: Callback | None = None,
    progress: bool = False,
    settings: MoboSettings | None = None,
) -> SearchResult:
    """The in-process MOBO loop (evaluations are vectorized per batch) until `stop`.

    The Sobol start is one batch of ``min(n_init, max_evals)`` points; each BO step is one
    batch of q. ``SearchResult.step_seconds`` gets the step's fit, acquisition and decode
    (decode + evaluate) times.
    """
    rule = stop or StopRule()
    enc = make_encoding(problem, goal, encoding)
    st = MoboState(enc.dim, seed, settings or MoboSettings(),
                   plan_keys=lambda z: plan_keys(enc.decode(z)))
    run = _Run(problem, goal, "mobo" if encoding == "structured" else "mobo-raw", callback,
               rule, warmup_evals=st.settings.n_init)
    bar = tqdm(total=rule.max_evals, desc="mobo", unit="plan", disable=not progress,
               leave=False)
    steps: list[dict[str, float]] = []
    while not run.stop:
        left = rule.max_evals - st.num_observed
        bo = st.num_observed >= st.settings.n_init
        z = st.propose() if bo else st.sobol(min(st.settings.n_init, left))
        z = z[:left]
        t0 = time.perf_counter()
        metrics = run.add(enc.decode(z), st.ehvi[-1] if bo else None)
        st.observe(z, _outcomes(problem, goal, metrics))
        if bo:
            steps.append({**st.step_seconds[-1], "decode_s": time.perf_counter() - t0})
        bar.update(len(z))
    bar.close()
    result = run.done()
    result.step_seconds = steps
    return result
