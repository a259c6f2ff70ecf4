"""URL helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.urls import URLPattern, path


def slash_optional(routes: Iterable[tuple[str, Any, str]]) -> list[URLPattern]:
    """``path()`` for each ``(route, APIView class, name)``, and the same route with a trailing slash.

    The seed's paths have no trailing slash; accepting both means neither form ever redirects a POST.
    The schema lists only the first (``rlhf_site.schema`` drops the twins)."""
    routes = list(routes)
    views: list[tuple[str, Callable[..., Any], str]] = [(route, view.as_view(), name) for route, view, name in routes]
    return [path(route, view, name=name) for route, view, name in views] + [
        path(f"{route}/", view) for route, view, _ in views
    ]
