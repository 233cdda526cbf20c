"""The BoTorch MOBO loop: Sobol start, then qLogNEHVI batches with an outcome constraint.

One step (`propose`): fit a GP per outcome (two objectives and one constraint slack, see
`tuning._search._outcomes`) to the points so far, and maximize qLogNEHVI — the log noisy
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

from ._problem import Problem
from ._search import Callback, Goal, SearchResult, _outcomes, _Run, make_encoding

__all__ = ["MoboSettings", "MoboState", "run_mobo"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MoboSettings:
    """Loop sizes; the defaults are tuned for second-scale searches on 2 CPU cores."""

    n_init: int = 256
    q: int = 8
    num_restarts: int = 2
    raw_samples: int = 128
    mc_samples: int = 32
    maxiter: int = 40


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
        from botorch.optim.optimize import optimize_acqf
        from botorch.sampling.normal import SobolQMCNormalSampler
        from gpytorch.mlls import ExactMarginalLogLikelihood

        torch.manual_seed(self.seed + self.num_observed)
        train_x = torch.as_tensor(np.concatenate(self.x), dtype=torch.float64)
        train_y = torch.as_tensor(np.concatenate(self.y), dtype=torch.float64)
        # Tiny jitter keeps duplicated decodes from making the GP singular.
        train_y = train_y + 1e-6 * torch.randn_like(train_y)
        model = SingleTaskGP(train_x, train_y, outcome_transform=Standardize(m=3))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model),
                             optimizer_kwargs={"options": {"maxiter": 75}})
            acq = qLogNoisyExpectedHypervolumeImprovement(
                model=model, ref_point=[0.0, 0.0], X_baseline=train_x,
                objective=IdentityMCMultiOutputObjective(outcomes=[0, 1]),
                constraints=[lambda z: -z[..., 2]],
                sampler=SobolQMCNormalSampler(torch.Size([self.settings.mc_samples])),
                prune_baseline=True)
            bounds = torch.stack([torch.zeros(self.dim), torch.ones(self.dim)]).double()
            cand, _ = optimize_acqf(acq, bounds=bounds, q=q,
                                    num_restarts=self.settings.num_restarts,
                                    raw_samples=self.settings.raw_samples,
                                    sequential=True,
                                    options={"maxiter": self.settings.maxiter,
                                             "batch_limit": 8})
        return np.asarray(cand.detach().numpy())


def run_mobo(
    problem: Problem,
    goal: Goal,
    *,
    seed: int = 0,
    max_evals: int = 160,
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
