"""The BoTorch MOBO loop: Sobol start, then qLogNEHVI batches with an outcome constraint.

One step (`propose`): fit a GP per outcome (two objectives and one constraint slack, see
`tuning._search._outcomes`) to at most `gp_points` of the points so far — the leading
non-dominated layers of the feasible ones plus a random rest, since the acquisition only needs
the model to be right near the front — and maximize qLogNEHVI — the log noisy
expected hypervolume improvement, reference point at the origin of the normalized objectives,
the constraint entering as a smoothed feasibility weight — for a batch of q new points. The
same `MoboState` drives the in-process loop (`run_mobo`) and the Ray Tune searcher
(`tuning.tune.BouteSearcher`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from ._front import pareto_mask
from ._problem import Problem
from ._search import Callback, Goal, SearchResult, _outcomes, _Run, make_encoding

__all__ = ["MoboSettings", "MoboState", "run_mobo"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MoboSettings:
    """Loop sizes; the defaults are tuned for second-scale searches on 2 CPU cores."""

    n_init: int = 256
    q: int = 4
    mc_samples: int = 32
    fit_maxiter: int = 40
    gp_points: int = 96
    n_candidates: int = 512
    n_local: int = 256
    local_scale: float = 0.02
    batch_limit: int = 256


@dataclass
class MoboState:
    """Observed points (unit cube) and outcomes; proposes the next batch."""

    dim: int
    seed: int
    settings: MoboSettings = field(default_factory=MoboSettings)
    x: list[FloatArray] = field(default_factory=list)
    y: list[FloatArray] = field(default_factory=list)
    _sobol_drawn: int = 0

    def observe(self, x: FloatArray, y: FloatArray) -> None:
        """Add evaluated points ``(N, dim)`` with outcomes ``(N, 3)``."""
        self.x.append(np.atleast_2d(x))
        self.y.append(np.atleast_2d(y))

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
        """Maximize qLogNEHVI for a batch of q points (Sobol while too few observations)."""
        q = q or self.settings.q
        if self.num_observed < self.settings.n_init:
            return self.sobol(q)
        import torch
        from botorch.acquisition.multi_objective.logei import (
            qLogNoisyExpectedHypervolumeImprovement,
        )
        from botorch.acquisition.multi_objective.objective import (
            IdentityMCMultiOutputObjective,
        )
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from botorch.optim.optimize import optimize_acqf_discrete
        from botorch.sampling.normal import SobolQMCNormalSampler
        from gpytorch.mlls import ExactMarginalLogLikelihood

        _skip_fused_kernel_compile()
        torch.manual_seed(self.seed + self.num_observed)
        x_all, y_all = np.concatenate(self.x), np.concatenate(self.y)
        keep = training_subset(y_all, self.settings.gp_points, self.seed)
        train_x = torch.as_tensor(x_all[keep], dtype=torch.float64)
        train_y = torch.as_tensor(y_all[keep], dtype=torch.float64)
        # Tiny jitter keeps duplicated decodes from making the GP singular.
        train_y = train_y + 1e-6 * torch.randn_like(train_y)
        model = SingleTaskGP(train_x, train_y, outcome_transform=Standardize(m=3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                             optimizer_kwargs={"options": {
                                 "maxiter": self.settings.fit_maxiter}})
            acq = qLogNoisyExpectedHypervolumeImprovement(
                model=model, ref_point=[0.0, 0.0], X_baseline=train_x,
                objective=IdentityMCMultiOutputObjective(outcomes=[0, 1]),
                constraints=[lambda z: -z[..., 2]],
                sampler=SobolQMCNormalSampler(torch.Size([self.settings.mc_samples])),
                prune_baseline=True)
            choices = torch.as_tensor(self._candidates(x_all, y_all), dtype=torch.float64)
            cand, _ = optimize_acqf_discrete(acq, q=q, choices=choices,
                                             max_batch_size=self.settings.batch_limit,
                                             X_avoid=train_x)
        return np.asarray(cand.detach().numpy())

    def _candidates(self, x: FloatArray, y: FloatArray) -> FloatArray:
        """Points the acquisition is evaluated on.

        Fresh Sobol points over the cube plus Gaussian perturbations (std `local_scale`) of
        the best feasible points (leading non-dominated layers), so narrow feasible slivers
        next to the front are resolved.
        """
        rng = np.random.default_rng(self.seed + len(x))
        glob = self.sobol(self.settings.n_candidates)
        lead = leading_layers(y, 16)
        if lead.size == 0:
            return glob
        centers = x[rng.choice(lead, size=self.settings.n_local)]
        local = np.clip(centers + rng.normal(0.0, self.settings.local_scale, centers.shape),
                        0.0, 1.0)
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
    max_evals: int = 256,
    encoding: str = "structured",
    callback: Callback | None = None,
    progress: bool = False,
    settings: MoboSettings | None = None,
) -> SearchResult:
    """The in-process MOBO loop (evaluations are vectorized per batch)."""
    enc = make_encoding(problem, goal, encoding)
    st = MoboState(enc.dim, seed, settings or MoboSettings())
    run = _Run(problem, goal, "mobo" if encoding == "structured" else "mobo-raw", callback)
    bar = tqdm(total=max_evals, desc="mobo", unit="plan", disable=not progress, leave=False)
    first = True
    while not run.stop and st.num_observed < max_evals:
        z = st.sobol(st.settings.n_init) if first else st.propose()
        first = False
        z = z[: max_evals - st.num_observed]
        plans = enc.decode(z)
        metrics = run.add(plans)
        st.observe(z, _outcomes(problem, goal, metrics))
        bar.update(len(z))
    bar.close()
    return run.done()
