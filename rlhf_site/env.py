"""Typed readers for environment variables.

Each helper refuses a bad value with ``ImproperlyConfigured`` naming the variable, so a typo stops
start-up instead of turning into a surprising default. ``NAME_FILE`` is read for secrets (Docker and
Kubernetes mount them as files).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _raw(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def envstr(name: str, default: str | None = None, *, environ: Mapping[str, str] | None = None) -> str | None:
    value = _raw(name, environ)
    return default if value is None else value


def envbool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, environ)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off.")


def _number(
    name: str,
    cast: type[int] | type[float],
    minimum: float | None,
    maximum: float | None,
    environ: Mapping[str, str] | None,
) -> float | None:
    value = _raw(name, environ)
    if value is None:
        return None
    try:
        number = cast(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not {'an integer' if cast is int else 'a number'}.") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} is below the minimum of {minimum}.")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} is above the maximum of {maximum}.")
    return number


def envint(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    number = _number(name, int, minimum, maximum, environ)
    return default if number is None else int(number)


def envfloat(
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> float:
    number = _number(name, float, minimum, maximum, environ)
    return default if number is None else number


def envlist(name: str, default: list[str], *, environ: Mapping[str, str] | None = None) -> list[str]:
    value = _raw(name, environ)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


def envsecret(name: str, *, environ: Mapping[str, str] | None = None) -> str | None:
    """``NAME`` itself, or the contents of the file that ``NAME_FILE`` points to."""
    value = _raw(name, environ)
    if value is not None:
        return value
    path = _raw(f"{name}_FILE", environ)
    if path is None:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise ImproperlyConfigured(f"{name}_FILE={path!r} cannot be read: {exc.strerror}.") from None


def envrate(name: str, default: str | None, *, environ: Mapping[str, str] | None = None) -> str | None:
    """A DRF throttle rate such as ``120/min``; ``off`` disables the throttle."""
    value = _raw(name, environ)
    if value is None:
        return default
    if value.lower() in {"off", "none", "0"}:
        return None
    count, _, period = value.partition("/")
    if not count.isdigit() or int(count) < 1 or not period or period[0] not in "smhd":
        raise ImproperlyConfigured(f"{name}={value!r} is not a rate: use e.g. 120/min, 10/s, 1000/hour or off.")
    return value


def envheader(name: str, *, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """A request header and the value that marks a request secure, as Django's
    ``SECURE_PROXY_SSL_HEADER`` takes it: ``X-Forwarded-Proto:https`` (or ``HTTP_X_FORWARDED_PROTO,https``)
    becomes ``("HTTP_X_FORWARDED_PROTO", "https")``."""
    value = _raw(name, environ)
    if value is None:
        return None
    separator = ":" if ":" in value else ","
    header, _, expected = (part.strip() for part in value.partition(separator))
    if not header or not expected:
        raise ImproperlyConfigured(f"{name}={value!r} is not 'Header:value', e.g. X-Forwarded-Proto:https.")
    meta = header.upper().replace("-", "_")
    return (meta if meta.startswith("HTTP_") else f"HTTP_{meta}"), expected


def generated_secret(path: Path) -> str:
    """The secret in ``path``, created once (mode 0600) when missing. Concurrent first starts agree:
    the file is created exclusively and the loser reads the winner's."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # the creator may not have written it yet
            value = path.read_text().strip()
            if value:
                return value
            time.sleep(0.02)
        raise ImproperlyConfigured(f"{path} is empty; delete it or set SECRET_KEY.") from None
    except OSError as exc:
        raise ImproperlyConfigured(
            f"Cannot create {path} for a generated SECRET_KEY ({exc.strerror}); set SECRET_KEY."
        ) from None
    value = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def envchoice(name: str, default: str, choices: list[str], *, environ: Mapping[str, str] | None = None) -> str:
    value = _raw(name, environ)
    if value is None:
        return default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(choices)}.")
    return value


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def envjson(name: str, default: Any, *, environ: Mapping[str, str] | None = None) -> Any:
    value = _raw(name, environ)
    if value is None:
        return default
    try:
        return json.loads(value, parse_constant=_no_constants)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from None


def envcrontab(name: str, *, environ: Mapping[str, str] | None = None) -> Any:
    """A cron line, "minute hour day-of-month month day-of-week" (UTC), as a Celery ``crontab``; None if unset."""
    value = _raw(name, environ)
    if value is None:
        return None
    parts = value.split()
    if len(parts) != 5:
        raise ImproperlyConfigured(f"{name}={value!r} is not a cron line: five fields, e.g. '0 3 * * 1'.")
    from celery.schedules import crontab  # only when a schedule is set

    try:
        schedule = crontab(
            minute=parts[0], hour=parts[1], day_of_month=parts[2], month_of_year=parts[3], day_of_week=parts[4]
        )
    except (ValueError, IndexError) as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not a cron line: {exc}") from None
    return schedule
