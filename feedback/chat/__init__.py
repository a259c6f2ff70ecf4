"""The chat turn: store the user's turn, stream the live policy's answer, cut it into steps as they
complete, and store the answer with the version that produced it.

The consumer calls these and renders the events; nothing here knows about sockets or HTML. No
transaction is held open while the model streams: each write is its own short transaction.

``turns``: the reads and short writes (sync, one trip to a database thread each); ``stream``: the
streamed answer; ``events``: its events and their batching. Everything public is named here.

The names here are the package's copies: code in ``stream`` and ``turns`` calls its own module's, so a
test that replaces a function patches the module that calls it (``chat.stream.get_policy``,
``chat.turns.generation_begin`` on a send, ``chat.stream.generation_begin`` in ``answer_stream``).
"""

from feedback.chat import events, stream, turns
from feedback.chat.events import ChatEvent, EventKind, OnEvent, tokens_batched
from feedback.chat.stream import (
    Generation,
    answer_generate,
    answer_stopped,
    answer_stream,
    begun_or_stopped,
    live_version_id,
    regeneration_begun,
    send_begun,
)
from feedback.chat.turns import (
    Begun,
    answer_get,
    answer_siblings,
    answer_with_siblings,
    conversation_for_user,
    conversation_turns,
    generation_allow,
    generation_begin,
    generation_plan,
    history_for,
    regeneration_begin,
    regeneration_of,
    send_begin,
    socket_frame_allow,
    turns_for_page,
    user_turn_clean,
    user_turn_create,
)

__all__ = [
    "Begun",
    "ChatEvent",
    "EventKind",
    "Generation",
    "OnEvent",
    "answer_generate",
    "answer_get",
    "answer_siblings",
    "answer_stopped",
    "answer_stream",
    "answer_with_siblings",
    "begun_or_stopped",
    "conversation_for_user",
    "conversation_turns",
    "events",
    "generation_allow",
    "generation_begin",
    "generation_plan",
    "history_for",
    "live_version_id",
    "regeneration_begin",
    "regeneration_begun",
    "regeneration_of",
    "send_begin",
    "send_begun",
    "socket_frame_allow",
    "stream",
    "tokens_batched",
    "turns",
    "turns_for_page",
    "user_turn_clean",
    "user_turn_create",
]
