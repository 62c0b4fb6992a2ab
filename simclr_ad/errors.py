"""User-facing errors: one clear line instead of a traceback."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

from PIL import Image, UnidentifiedImageError

F = TypeVar("F", bound=Callable[..., object])

# what PIL raises on a file it cannot decode (truncated, not an image, a decompression bomb)
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class UserError(Exception):
    """A problem the user can fix (bad path, bad config, bad checkpoint).

    Stage entry points print it as a single ``error: ...`` line and exit 2.
    """


def friendly_errors(fn: F) -> F:
    """Decorate a ``main(argv)`` so UserError ends the process with one line, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if args or kwargs.get("argv") is not None:
                raise  # called from Python (tests, sweeps): let the caller see the exception
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted; re-run the same command to resume", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper  # type: ignore[return-value]
