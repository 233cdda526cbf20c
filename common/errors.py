"""One exception hierarchy for every BOute package.

Each error is raised for bad user input and its message names the field, the value and the
fix. The CLI turns any `BouteError` into a one-line message and a non-zero exit code, never a
traceback. Internal invariants use `assert` instead.
"""

from __future__ import annotations

__all__ = [
    "BenchError",
    "BouteError",
    "CatalogError",
    "InfeasibleConfigError",
    "MeasurementTimeoutError",
    "PerfDBError",
    "ProfilerError",
    "ScenarioError",
    "StaleDBError",
    "TraceError",
]


class BouteError(Exception):
    """Base class of every error BOute raises for bad input or an impossible request."""


class CatalogError(BouteError, ValueError):
    """A GPU or model catalog entry is missing, malformed or fails a validation rule."""


class BenchError(BouteError, ValueError):
    """A load test cannot run as asked (a rate or a request count beyond the generator's)."""


class TraceError(BouteError, ValueError):
    """A workload trace is malformed (missing columns, negative lengths, unsorted arrivals)."""


class InfeasibleConfigError(BouteError, ValueError):
    """A replica config cannot run: the model does not fit in memory, or TP/PP is invalid.

    Attributes:
        reason: a one-line explanation with the numbers and how to fix it.

    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PerfDBError(BouteError, ValueError):
    """A performance DB file is unreadable, corrupt, or lacks the rows a lookup needs."""


class StaleDBError(PerfDBError):
    """A performance DB was built from other catalogs or another trace than the ones in use."""


class ScenarioError(BouteError, ValueError):
    """A scenario file is missing, malformed, or breaks a rule."""


class ProfilerError(BouteError, ValueError):
    """A profiler input is invalid, or a measurement failed.

    Examples: an unknown device, a model directory without a config.json. Results measured
    before a failure stay on disk.
    """


class MeasurementTimeoutError(ProfilerError):
    """One measurement ran past its time limit.

    Attributes:
        what: the measurement (e.g. ``"gemm llama-3.1-8b down_proj tp=1 m=4096"``).
        seconds: how long it ran.
        partial_path: where the results measured before it are kept.

    """

    def __init__(self, message: str, *, what: str, seconds: float, partial_path: str) -> None:
        super().__init__(message)
        self.what = what
        self.seconds = seconds
        self.partial_path = partial_path
