"""Query parameters of list endpoints: a value that is given but invalid is a 400 naming the
parameter, never silently ignored (an ignored filter returns everything, which looks like an answer)."""

from __future__ import annotations

from collections.abc import Iterable

from rest_framework.exceptions import ValidationError
from rest_framework.request import Request


def is_whole_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` is also true for '²' and '٣', which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def choice_param(request: Request, name: str, allowed: Iterable[str]) -> str | None:
    value = request.query_params.get(name) or None
    allowed = list(allowed)
    if value is not None and value not in allowed:
        raise ValidationError({name: [f"Must be one of {', '.join(allowed)}."]})
    return value


def integer_param(request: Request, name: str, *, minimum: int = 0, maximum: int | None = None) -> int | None:
    value = request.query_params.get(name) or None
    if value is None:
        return None
    if not is_whole_number(value) or int(value) < minimum or (maximum is not None and int(value) > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        raise ValidationError({name: [f"Must be a whole number {bounds}."]})
    return int(value)
