"""Personal data out of text before it reaches a dataset file.

One combined regular expression finds candidates in a single pass; a few candidates are checked
further in Python (a long token must look random to be a secret; a digit run must look like a phone
number, not a date or a list of quantities; a card number must pass the Luhn check, an IBAN the
ISO 7064 mod-97 check). What is replaced:

- ``[EMAIL]``: ``name@domain.tld``.
- ``[SECRET]``: JWTs (``eyJ...``), provider keys (``sk-...``, ``sk_live_...``, ``ghp_...``,
  ``github_pat_...``, ``AKIA...``/``ASIA...``, ``xox?-...``, ``AIza...``), hex runs of 32+ characters,
  and base64-like tokens of 32+ characters that mix digits, upper and lower case and look random
  (Shannon entropy of at least 4 bits a character; at most one ``-``, ``_`` or ``/`` in 8
  characters, so URL paths and slugs survive). Also what follows ``password``, ``passwd``,
  ``passphrase``, ``passcode`` or ``pwd`` and ``:``, ``=`` or ``is``/``was`` (a quoted string or one
  word; the keyword stays): ``password: [SECRET]``, ``pwd=[SECRET]``. After ``:`` or ``is`` a plain
  word of prose (``A strong password is long``, ``Password: required``) is kept.
- ``[CARD]``: payment card numbers: 13 to 19 digits, unbroken or in groups of 3 to 6 split by single
  spaces or dashes, that pass the Luhn check. A number that fails it (an order number) is kept, or
  replaced as a phone number if it is one.
- ``[IBAN]``: a country code, two check digits and the account (BBAN), unbroken or in groups of four,
  whose length fits the country (ISO 13616; 15 to 34 characters for a country not in the table) and
  that passes the ISO 7064 mod-97 check. One that fails it is kept.
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

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "secret": "[SECRET]",
    "password": "[SECRET]",
    "card": "[CARD]",
    "iban": "[IBAN]",
}

_PHONE = (
    r"(?<![\w+.,-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,5}){1,4}(?![\w])"
    r"|(?<![\w+.,-])\+?\d{10,15}(?![\w])"
)
_B64 = r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}"
_PATTERN = re.compile(
    r"(?P<email>(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b)"
    r"|(?P<jwt>\beyJ[A-Za-z0-9_-]{12,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
    r"|(?P<key>\b(?:(?:sk|pk|rk)[-_](?:live[-_]|test[-_]|proj[-_]|ant[-_])?[A-Za-z0-9_-]{16,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}))"
    r"|(?P<iban>(?<![A-Za-z0-9+/_-])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?"
    r"(?![A-Za-z0-9+/_=-]))"
    r"|(?P<hex>\b[0-9a-fA-F]{32,}\b)"
    rf"|(?P<b64>{_B64})"
    r"|(?P<card>(?<![\w+.,-])(?:\d{13,19}|\d{3,6}(?:[ -]\d{3,6}){1,5})(?![\w]|[.,]\d))"
    rf"|(?P<phone>{_PHONE})"
)
# A pass of its own, run only on texts that hold a keyword: case-insensitive at every position, it
# would cost more than the rest of the pattern together.
_PASSWORD = re.compile(
    r"\b(?:password|passwd|passphrase|passcode|pwd)(?P<separator>\s*[:=]\s*|\s+(?:is|was)\b\s*:?\s*)"
    r"(?P<secret>\"[^\"\n]{1,200}\"|'[^'\n]{1,200}'|\S+)",
    re.IGNORECASE,
)
_PHONE_SHAPE = re.compile(_PHONE)
_B64_SHAPE = re.compile(_B64)
_HEX_SHAPE = re.compile(r"[0-9a-fA-F]{32,}")
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{4}")
_SPACE_GROUPS = re.compile(r"\d+(?: \d+)+")
_SEPARATORS = re.compile(r"[ -]")
# Quick rejection (most texts): an e-mail needs an "@", a secret or an unbroken IBAN a run of 15+
# token characters, a phone or card 8+ characters of digits and separators starting with a digit,
# an IBAN in groups its check digits and two groups of four (which may be all letters: "AZ58 XWJU
# STY4 ..."), a password phrase its keyword. Simple scans cost a fraction of the combined pattern.
_TOKEN_RUN = re.compile(r"[A-Za-z0-9+/_-]{15}")
_DIGIT_RUN = re.compile(r"\d(?:[\d .()-]{7}|\d [A-Za-z0-9]{4} [A-Za-z0-9]{4})")

# Length of an IBAN by country (ISO 13616 registry, territories with their own code included; checked
# against the registry as schwifty ships it by tests/test_processor.py).
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AX": 18, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BL": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27, "GB": 22,
    "GE": 22, "GF": 27, "GG": 22, "GI": 23, "GL": 18, "GP": 27, "GR": 27, "GT": 28, "HN": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IM": 22, "IQ": 23, "IS": 26, "IT": 27, "JE": 22, "JO": 30, "KW": 30,
    "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24,
    "ME": 22, "MF": 27, "MK": 19, "MN": 20, "MQ": 27, "MR": 27, "MT": 31, "MU": 30, "NC": 27, "NI": 28,
    "NL": 18, "NO": 15, "OM": 23, "PF": 27, "PK": 24, "PL": 28, "PM": 27, "PS": 29, "PT": 25, "QA": 29,
    "RE": 27, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TF": 27, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22,
    "VG": 24, "WF": 27, "XK": 20, "YE": 30, "YT": 27,
}  # fmt: skip

# Words that follow "password:" or "password is" in prose, not a password.
_PROSE = frozenset(
    """
    a an the is are be not no too very so now still also and or but must should will can may at of for to in on
    with by from that this which it its you your my our their what how one required incorrect wrong correct
    invalid valid weak strong long short case stored set being usually always never only just changed reset
    expired hashed encrypted saved sent needed optional empty blank missing enter type secure insecure safe
    unsafe good bad easy hard hidden visible sensitive different same important field hint policy length none
    unknown forgotten lost protected generated random ok fine more less longer shorter stronger weaker used
    shown displayed masked change update updated new old current something anything nothing simple complex
    """.split()  # noqa: SIM905 (a word list reads better as text)
)
_TRAILING = ".,;:!?)]}"


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of digits, as on payment cards."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """``text`` (spaces allowed, any case) is an IBAN: a country code, two check digits, a BBAN of
    the country's length, and the ISO 7064 mod-97 check (the country code and check digits moved to
    the end, letters as 10..35, the number mod 97 is 1)."""
    compact = text.replace(" ", "").upper()
    if not (compact[:2].isalpha() and compact[2:4].isdigit() and compact.isalnum() and compact.isascii()):
        return False
    length = IBAN_LENGTHS.get(compact[:2])
    if (length is not None and len(compact) != length) or not 15 <= len(compact) <= 34:
        return False
    number = "".join(str(int(char, 36)) for char in compact[4:] + compact[:4])
    return int(number) % 97 == 1


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


def _card_span(text: str) -> int | None:
    """How much of ``text`` (a card-shaped candidate) is a card number: the whole, or the longest
    prefix of its groups with 13+ digits that passes the Luhn check (so "4111 1111 1111 1111 123"
    gives the card and keeps the 123); None if no prefix does."""
    groups = _SEPARATORS.split(text)
    if len(groups) > 1 and len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]):
        return None  # "100 000 000 000 000": thousands
    ends = [m.start() for m in _SEPARATORS.finditer(text)] + [len(text)]
    for end in reversed(ends):
        digits = text[:end].replace(" ", "").replace("-", "")
        if len(digits) < 13:
            return None
        if len(digits) <= 19 and luhn_valid(digits):
            return end
    return None


def _iban_span(text: str) -> int | None:
    """How much of ``text`` (an IBAN-shaped candidate) is a valid IBAN: the whole, or the longest
    prefix of its space-separated groups (so a word read on after it stays); None if none is."""
    ends = [i for i, char in enumerate(text) if char == " "] + [len(text)]
    for end in reversed(ends):
        if iban_valid(text[:end]):
            return end
    return None


class Scrubber:
    """Replaces personal data with placeholders and counts what it replaced, by kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def _count(self, label: str) -> str:
        self.counts[label] += 1
        return PLACEHOLDERS[label]

    def _password(self, match: re.Match[str]) -> str:
        text, secret = match.group(), match.group("secret")
        lead = text[: match.start("secret") - match.start()]
        tail = ""
        if not (len(secret) > 1 and secret[0] in "\"'" and secret[-1] == secret[0]):
            stripped = secret.rstrip(_TRAILING)
            if not stripped:
                return text
            secret, tail = stripped, secret[len(stripped) :]
            if "=" not in match.group("separator") and secret.isalpha() and secret.lower() in _PROSE:
                return text
        return lead + self._count("password") + tail

    def _replace(self, match: re.Match[str]) -> str:
        kind = match.lastgroup
        text = match.group()
        if kind == "card":
            end = _card_span(text)
            if end is not None:
                return self._count("card") + text[end:]
            if _PHONE_SHAPE.fullmatch(text) and _looks_like_phone(text):
                return self._count("phone")
            return text
        if kind == "iban":
            end = _iban_span(text)
            if end is not None:
                return self._count("iban") + text[end:]
            # A key that starts like an IBAN (perhaps with a short word after it): the checks its
            # own alternative would have made.
            head, space, rest = text.partition(" ")
            if _HEX_SHAPE.fullmatch(head) or (_B64_SHAPE.fullmatch(head) and _looks_random(head)):
                return self._count("secret") + space + rest
            return text
        if kind == "b64" and not _looks_random(text):
            return text
        if kind == "phone" and not _looks_like_phone(text):
            return text
        return self._count(kind if kind in ("email", "phone") else "secret")

    def __call__(self, text: str) -> str:
        if not text:
            return text
        lowered = text.lower()  # cheaper than a case-insensitive scan
        if "pass" in lowered or "pwd" in lowered:
            text = _PASSWORD.sub(self._password, text)
        if not ("@" in text or _TOKEN_RUN.search(text) or _DIGIT_RUN.search(text)):
            return text
        return _PATTERN.sub(self._replace, text)


def scrub(text: str) -> str:
    """``text`` with personal data replaced (no counting)."""
    return Scrubber()(text)
