"""The feedback processor: feedback and comparisons -> five datasets in TRL's formats, split into
train and test, scrubbed of personal data, written as a ``DatasetSnapshot``.

Datasets (rows are exactly TRL's conversational formats, no other columns):

- ``preference``: ``{"prompt", "chosen", "rejected"}`` (reward model, DPO).
- ``unpaired``: ``{"prompt", "completion", "label"}`` (KTO).
- ``steps``: ``{"prompt", "completions", "labels"}`` (stepwise supervision / PRM).
- ``prompts``: ``{"prompt"}``, one per distinct user turn, rated or not (PPO).
- ``supervised``: ``{"prompt", "completion"}``, one per corrected answer (SFT).

A prompt is the conversation up to and including the user turn an answer replies to, built by
``core.prompts`` exactly as serving builds what the model is sent: a leading system message if the
conversation has one, then each user turn followed by the latest of its answers that did not fail
and is not empty.

Rules:

- **Usable answers.** Only ``complete`` or ``stopped`` answers with content become completions;
  feedback on failed or streaming answers is skipped (and counted).
- **Score** of an answer: the mean of its message-level feedback values (``Feedback.value``: thumbs
  1/0, rating (r - 1)/4, both: their mean). Step feedback does not count towards it.
- **Preference pairs** come from (a) comparisons (``is_tie`` rows dropped and counted), (b) answers
  to the same user turn (regenerations) whose scores differ, (c) answers in *different*
  conversations to an identical conversation-so-far (same raw text, e.g. the same first question)
  whose scores differ, (d) corrections: a user's corrected text of an answer ("what it should have
  said", ``Feedback.correction``) chosen over the answer. A pair whose two answers read the same
  after scrubbing is dropped. ``stats.pairs_by_source`` counts the pairs written by source
  (``comparison``, ``regeneration``, ``cross_conversation``, ``correction``; a pair of (a)/(b) is a
  ``comparison`` when a side-by-side vote took part in it).
- **Corrections** also make a ``supervised`` row: the prompt and the corrected text as the
  completion (even when the answer itself failed). Each distinct correction of an answer counts once.
- **Conflicts** (within one user turn, where (a) and (b) meet): each comparison is one vote for its
  chosen answer, a score difference is one vote for the better-scored answer. Per pair of answers
  the majority direction wins (``conflicts_settled`` when there were votes both ways); as many
  votes each way drops the pair (``conflicts_dropped``). Rule (c) pairs have exactly one vote.
- **Rule (c), flat memory.** Pass 1 records every scored answer with a sha256 of its raw
  conversation-so-far in an on-disk SQLite table; pass 2 reads it back sorted by that key (SQLite
  sorts on disk) and pairs within each key, linearly: answers sorted best first, the i-th of the
  better half against the i-th of the worse half (when the scores differ and the conversations
  do), so a question asked thousands of times does not make millions of pairs. At most
  ``SAME_PROMPT_CAP`` (256) answers per key are considered (the first in conversation-id order, a
  pseudo-random choice); the rest are counted as ``same_prompt_capped``.
- **Unpaired labels**, per message-level feedback row: a rating >= ``good_rating`` is true, <=
  ``bad_rating`` false, in between neutral (dropped, ``neutral_dropped``); a rating, when given,
  decides whatever the thumbs say (so thumbs up with a neutral rating is dropped); with thumbs
  only, up is true and down false. Several users: the majority label, a tie drops the answer
  (``unpaired_conflicts_dropped``).
- **Step labels**: each step's label is the majority of its step feedback labels (same thresholds;
  a tie or no label leaves it unlabelled). The row is the longest prefix of the answer's steps in
  which every step is labelled, so each completion has a real label and the chain of steps is
  contiguous from the first; an answer whose first step is unlabelled gives no row, and one whose
  labelled steps had a gap is truncated at the gap (``steps_truncated``).
- **Scrubbing**: every text (prompts, answers, steps) goes through ``scrub.Scrubber`` before it is
  written: e-mail addresses, phone numbers, key-like secrets and what follows "password:" (or "is",
  "pwd=", ...), Luhn-valid card numbers and mod-97-valid IBANs become ``[EMAIL]``, ``[PHONE]``,
  ``[SECRET]``, ``[CARD]``, ``[IBAN]`` (counts by kind in ``stats.scrubbed``).
- **Duplicates**: identical rows (after scrubbing) are written once per dataset and split. The
  16-byte digests of the rows written are kept in the on-disk SQLite table, O(distinct rows) of
  disk, not memory.
- **Split**, by conversation: a conversation is in ``test`` iff sha256("<seed>:<conversation
  uuid>") / 2**256 < ``test_fraction``. A rule (c) pair whose two conversations fall on different
  sides is dropped (``cross_split_pairs_dropped``), so no conversation is on both sides.
- **Consistency**: only feedback and comparisons with ids up to the highest id at the start, and
  messages created before the start, are read; ``source`` records the id ranges read.
- **Memory** is flat in the number of rows: conversations are read in keyset-paginated batches of
  ``chunk_size``, five queries a batch (see ``read``), and whatever spans conversations is on disk.
"""

from training.processor.export import EXPORT_FORMATS, feedback_export, snapshot_build
from training.processor.options import DATASETS, SPLITS, ProcessorOptions, split_of
from training.processor.scrub import Scrubber, scrub

__all__ = [
    "DATASETS",
    "EXPORT_FORMATS",
    "SPLITS",
    "ProcessorOptions",
    "Scrubber",
    "feedback_export",
    "scrub",
    "snapshot_build",
    "split_of",
]
