"""Reading a user's text file: one error naming the file and the fix, never a traceback."""

from __future__ import annotations

from pathlib import Path

from common.errors import BouteError

__all__ = ["read_utf8"]


def read_utf8(path: str | Path, what: str, error: type[BouteError],
              fix: str = "save it as UTF-8") -> str:
    """The text of `path` (UTF-8).

    Args:
        path: the file.
        what: how messages name it, e.g. ``"scenario file 'x.yaml'"``.
        error: the `BouteError` subclass to raise.
        fix: what to do about a file that is not UTF-8.

    Raises:
        error: the file cannot be read (the OS's reason) or is not UTF-8 (the first bad
            byte and its offset).

    """
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{what}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                    f"{exc.start}); {fix}") from None
