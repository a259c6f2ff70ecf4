"""Cutting an answer into steps: numbered steps when the answer has them, paragraphs otherwise."""

from __future__ import annotations

import re
from itertools import pairwise

_NUMBERED = re.compile(r"^[ \t]*\d{1,3}[.)][ \t]+", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def split_steps(text: str) -> list[str]:
    """The steps of ``text``, stripped and non-empty, in order.

    A line starting "1. " or "2) " begins a step that runs to the next such line. Text before the
    first numbered line, or a whole answer without one, is cut into paragraphs at blank lines. The
    rule is stable under streaming: appending text never changes any step but the last, so while an
    answer streams, all steps but the last are final.
    """
    starts = [m.start() for m in _NUMBERED.finditer(text)]
    head_end = starts[0] if starts else len(text)
    pieces = _PARAGRAPH_BREAK.split(text[:head_end])
    pieces += [text[a:b] for a, b in pairwise([*starts, len(text)])]
    return [piece.strip() for piece in pieces if piece.strip()]
