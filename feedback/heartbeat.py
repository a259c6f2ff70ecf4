"""Answers whose server process died while they streamed.

An answer is stored ``streaming`` before the model is asked, and stored as it ended (complete,
stopped, failed) by the same process. A process killed or restarted mid-answer (a deploy, the OOM
killer, a crash) never does the second write: the answer would stay ``streaming`` for ever, shown as an
empty bubble with no Regenerate button and counted as served. So while an answer streams, its process
writes ``heartbeat_at`` every ``CHAT_HEARTBEAT_SECONDS`` (``beating``), and the reaper (beat, every
``CHAT_REAP_EVERY_SECONDS``) stores an answer silent for ``CHAT_STALE_AFTER_SECONDS`` as ``failed``,
with the steps that were stored before (``stale_answers_reap``). Only the database is involved, so it
holds across server processes and machines, and behind a transaction pooler; and only the database's
clock: an answer is stamped when its row is inserted (``heartbeat_at``'s ``db_default``) and at each
beat, and the silence is measured, with the database's ``now()``, so servers and workers whose
clocks disagree do not reap live answers."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.db.models.functions import Now

from core.asyncdb import db_async
from core.dbclock import db_ago
from feedback.models import Message, MessageStep

logger = logging.getLogger(__name__)

REAPED_ERROR = (
    "The server stopped while writing this answer (it was restarted or shut down); the steps written"
    " before are kept. Regenerate it for a whole answer."
)


def answer_beat(*, answer_id: uuid.UUID) -> bool:
    """Mark a streaming answer alive; False if it is no longer streaming (ended, or reaped)."""
    streaming = Message.objects.filter(pk=answer_id, status=Message.Status.STREAMING)
    return bool(streaming.update(heartbeat_at=Now()))


async def beating(answer_id: uuid.UUID) -> None:
    """Every ``CHAT_HEARTBEAT_SECONDS``, mark the answer alive, until cancelled (the stream ends) or the
    answer is no longer streaming. A failed write is logged and tried again at the next beat: a short
    database outage must not end the stream."""
    while True:
        await asyncio.sleep(settings.CHAT_HEARTBEAT_SECONDS)
        try:
            if not await db_async(answer_beat)(answer_id=answer_id):
                return
        except Exception:
            logger.warning("could not mark answer %s alive", answer_id, exc_info=True)


def _stale(cutoff: object) -> Q:
    """Still streaming, and no sign of life since ``cutoff`` (a row from before ``heartbeat_at`` was
    stamped at insert, with none: its creation)."""
    silent = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    return Q(status=Message.Status.STREAMING) & silent


def stale_answers_reap(*, stale_after: timedelta | None = None) -> list[uuid.UUID]:
    """Store answers streaming with no sign of life for ``stale_after`` (CHAT_STALE_AFTER_SECONDS) as
    ``failed``: their text is the steps stored before the process died (the tokens after the last
    stored step were only in its memory). Returns the ids reaped. Each answer is written only if it is
    still stale, so a heartbeat or the stream's own last write that lands meanwhile wins; and should
    the stream's process come back to life after all, its last write stores the answer as it ended."""
    stale_after = stale_after or timedelta(seconds=settings.CHAT_STALE_AFTER_SECONDS)
    seconds = int(stale_after.total_seconds())
    cutoff = db_ago(stale_after)
    reaped = []
    for answer_id in Message.objects.filter(_stale(cutoff)).values_list("id", flat=True):
        steps = MessageStep.objects.filter(message_id=answer_id).order_by("index").values_list("content", flat=True)
        text = "\n\n".join(steps)
        if Message.objects.filter(_stale(cutoff), pk=answer_id).update(
            status=Message.Status.FAILED, error=REAPED_ERROR, content=text
        ):
            logger.warning("Reaped answer %s: streaming with no sign of life for %s s", answer_id, seconds)
            reaped.append(answer_id)
    return reaped
