"""Sections that apps above the registry add to a version's page and to its API detail.

The registry knows nothing of feedback or training, yet a version's page should show how its answers
were received (feedback's analytics) and what the monitor decided about it (training). Those apps
register a ``VersionSection`` when they start (their ``AppConfig.ready``); the registry's admin and API
show every registered section, by name, without importing the app.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest

from models_registry.models import ModelVersion


@dataclass(frozen=True)
class VersionSection:
    name: str  # the key in the API's version detail
    title: str  # the heading of its panel on the admin page
    data: Callable[[ModelVersion], Any]  # JSON-able, for the API
    html: Callable[[HttpRequest, ModelVersion], str] | None = None  # a panel for the admin page
    kinds: tuple[str, ...] = (ModelVersion.Kind.POLICY, ModelVersion.Kind.REWARD)


_sections: dict[str, VersionSection] = {}


def register_version_section(section: VersionSection) -> None:
    _sections[section.name] = section


def version_sections(version: ModelVersion) -> list[VersionSection]:
    """The sections that apply to ``version``'s kind, in the order they were registered."""
    return [section for section in _sections.values() if version.kind in section.kinds]
