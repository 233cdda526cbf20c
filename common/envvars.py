"""Environment variables set for a while (while Ray or vLLM starts from this process)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

__all__ = ["scoped_env"]


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str], *, keep_set: bool = False) -> Iterator[None]:
    """Set `values` in ``os.environ`` inside the block, then restore what was there.

    With `keep_set`, a variable that is already set keeps its value (the user's setting wins).
    Restored on error too; a variable that was unset is removed again.
    """
    saved = {k: os.environ.get(k) for k in values}
    for key, value in values.items():
        if not (keep_set and key in os.environ):
            os.environ[key] = value
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
