"""Personal data out of text before it reaches a dataset file.

One combined regular expression finds candidates in a single pass; a few candidates are checked
further in Python (a long token must look random to be a secret; a digit run must look like a phone
number, not a date or a list of quantities). What is replaced:

- ``[EMAIL]``: ``name@domain.tld``.
- ``[SECRET]``: JWTs (``eyJ...``), provider keys (``sk-...``, ``sk_live_...``, ``ghp_...``,
  ``github_pat_...``, ``AKIA...``/``ASIA...``, ``xox?-...``, ``AIza...``), hex runs of 32+ characters,
  and base64-like tokens of 32+ characters that mix digits, upper and lower case and look random
  (Shannon entropy of at least 4 bits a character; at most one ``-``, ``_`` or ``/`` in 8
  characters, so URL paths and slugs survive).
- ``[PHONE]``: 7 to 15 digits in phone shape: an optional ``+country`` and ``(area)``, then groups of
  2-5 digits split by spaces, dots or dashes, or one unbroken run of 10-15 digits. Dates
  (``2024-01-15``) are kept, and so are space-only groups that start or end with fewer than 3 digits
  (``10 20 30 40`` reads as quantities) and space-separated thousands (``100 000 000``). Single
  numbers ("9 minutes", "1. Boil water.") never match.
"""

from __future__ import annotations

import math
import re
from collections import Counter

PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "secret": "[SECRET]"}

_PATTERN = re.compile(
    r"(?P<email>(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b)"
    r"|(?P<jwt>\beyJ[A-Za-z0-9_-]{12,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
    r"|(?P<key>\b(?:(?:sk|pk|rk)[-_](?:live[-_]|test[-_]|proj[-_]|ant[-_])?[A-Za-z0-9_-]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}))"
    r"|(?P<hex>\b[0-9a-fA-F]{32,}\b)"
    r"|(?P<b64>(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2})"
    r"|(?P<phone>(?<![\w+.,-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,4}(?![\w])"
    r"|(?<![\w+.,-])\+?\d{10,15}(?![\w]))"
)
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")
_SPACE_GROUPS = re.compile(r"\d+(?: \d+)+")
# Quick rejection (most texts): an e-mail needs an "@", a secret a run of 15+ token characters, a
# phone 8+ characters of digits and separators starting with a digit. Two simple scans cost a
# tenth of the combined pattern.
_TOKEN_RUN = re.compile(r"[A-Za-z0-9+/_-]{15}")
_DIGIT_RUN = re.compile(r"\d[\d .()-]{7}")


def _entropy(token: str) -> float:
    counts = Counter(token)
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _looks_random(token: str) -> bool:
    body = token.rstrip("=")
    if not (any(c.isdigit() for c in body) and any(c.isupper() for c in body) and any(c.islower() for c in body)):
        return False
    if sum(body.count(c) for c in "-_/") * 8 > len(body):  # a path or a slug, not a key
        return False
    return _entropy(body) >= 4.0


def _looks_like_phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    if not 7 <= digits <= 15 or _DATE.fullmatch(text):
        return False
    if _SPACE_GROUPS.fullmatch(text):
        groups = text.split(" ")
        if len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]):
            return False  # "100 000 000": thousands separated by spaces
        return len(groups[0]) >= 3 and len(groups[-1]) >= 3
    return True


class Scrubber:
    """Replaces personal data with placeholders and counts what it replaced, by kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def _replace(self, match: re.Match[str]) -> str:
        kind = match.lastgroup
        text = match.group()
        if kind == "b64" and not _looks_random(text):
            return text
        if kind == "phone" and not _looks_like_phone(text):
            return text
        label = kind if kind in ("email", "phone") else "secret"
        self.counts[label] += 1
        return PLACEHOLDERS[label]

    def __call__(self, text: str) -> str:
        if not text or not ("@" in text or _TOKEN_RUN.search(text) or _DIGIT_RUN.search(text)):
            return text
        return _PATTERN.sub(self._replace, text)


def scrub(text: str) -> str:
    """``text`` with personal data replaced (no counting)."""
    return Scrubber()(text)
