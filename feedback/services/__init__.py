"""Every write to feedback, comparisons and satisfaction.

Locking: each write first locks the caller's ``UserSatisfaction`` row. That serialises one user's
writes (so two concurrent upserts of the same feedback leave one row and a consistent score) while
different users never wait on each other.
"""

from feedback.services.comparisons import comparison_record
from feedback.services.conversations import (
    ExternalTurn,
    conversation_create,
    external_answer_create,
    external_turn_record,
)
from feedback.services.ratings import UNSET, FeedbackResult, feedback_delete, feedback_upsert, satisfaction_lock

__all__ = [
    "UNSET",
    "ExternalTurn",
    "FeedbackResult",
    "comparison_record",
    "conversation_create",
    "external_answer_create",
    "external_turn_record",
    "feedback_delete",
    "feedback_upsert",
    "satisfaction_lock",
]
