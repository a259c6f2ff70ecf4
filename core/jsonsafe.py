"""Decoding untrusted JSON into values every later layer can handle.

``json.loads`` accepts things that break later, far from the input: ``NaN`` and ``Infinity`` (and
``1e999``, which is infinity) that PostgreSQL's ``jsonb`` and every strict JSON reader refuse; lone
surrogates (``"\\ud800"``) that cannot be encoded as UTF-8, so neither stored nor echoed back in an
error message; and nesting deep enough to exhaust the interpreter's recursion limit in the parser,
the serializers or the encoder. ``loads`` refuses all of them at the edge with ``UnsafeJSON``, whose
message never repeats the offending text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

# Deeper than any request of the API needs (a cycle's config is three levels), far below the
# recursion limit of anything that walks the value afterwards.
MAX_DEPTH = 32

_SURROGATE = re.compile("[\ud800-\udfff]")


class UnsafeJSON(ValueError):
    """Not JSON that this platform accepts. The message says why without repeating the input, as a
    predicate to follow a subject: ``f"The request body {exc}."``."""


def _constant(name: str) -> Any:
    raise UnsafeJSON(f"holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UnsafeJSON(f"holds a number out of range ({text[:20]})")
    return value


def has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def without_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD, so it can always be encoded."""
    return _SURROGATE.sub("\ufffd", text)


def check(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``UnsafeJSON`` if ``value`` (decoded JSON) nests deeper than ``max_depth`` or holds a
    lone surrogate in any key or string, or a non-finite number. Iterative: safe on any depth."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if has_surrogate(item):
                raise UnsafeJSON("holds a lone surrogate (an escape in \\ud800-\\udfff), which is not Unicode text")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise UnsafeJSON("holds NaN or Infinity, which are not JSON numbers")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise UnsafeJSON(f"nests deeper than {max_depth} levels")
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


def strings(value: Any) -> Iterator[str]:
    """Every key and string inside decoded JSON ``value``, at any depth (iterative)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def holds_nul(value: Any) -> bool:
    """Whether a key or string in ``value`` holds NUL (\\u0000), which PostgreSQL cannot store in
    text or jsonb. Not refused by ``loads``: a text field says so itself, with its name."""
    return any("\x00" in text for text in strings(value))


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises ``UnsafeJSON`` (a ``ValueError``) for anything ``check`` refuses,
    for invalid JSON, and for nesting too deep for the parser itself."""
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_finite_float)
    except UnsafeJSON:
        raise
    except RecursionError:
        raise UnsafeJSON(f"nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError from bytes
        raise UnsafeJSON(f"is not valid JSON: {without_surrogates(str(exc))[:200]}") from None
    check(value, max_depth=max_depth)
    return value
