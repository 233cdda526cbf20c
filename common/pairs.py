"""``NAME=VALUE`` items, as command-line flags and ``serve run`` builder arguments give them."""

from __future__ import annotations

from collections.abc import Iterable

from common.errors import BouteError

__all__ = ["PairError", "parse_pairs"]


class PairError(BouteError, ValueError):
    """An item is not ``NAME=VALUE``."""


def parse_pairs(items: Iterable[str], what: str) -> dict[str, str]:
    """``["a=1", "b=2"]`` -> ``{"a": "1", "b": "2"}`` (blank items skipped, sides stripped).

    Raises:
        PairError: an item without ``=``, or with an empty name or value; the message names
            `what` (the flag or argument) and the item.

    """
    out = {}
    for item in filter(None, (i.strip() for i in items)):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise PairError(f"{what} {item!r} must look like NAME=VALUE")
        out[key.strip()] = value.strip()
    return out
