"""The processor's options and the split rule."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Protocol

DATASETS = ("preference", "unpaired", "steps", "prompts", "supervised")
SPLITS = ("train", "test")


class _HasBuildSettings(Protocol):
    @property
    def seed(self) -> int: ...
    @property
    def test_fraction(self) -> float: ...
    @property
    def good_rating(self) -> int: ...
    @property
    def bad_rating(self) -> int: ...


@dataclass(frozen=True)
class ProcessorOptions:
    seed: int = 0
    test_fraction: float = 0.1
    good_rating: int = 4  # rating >= this: a good answer (label true)
    bad_rating: int = 2  # rating <= this: a bad answer (label false); in between: neutral, dropped
    chunk_size: int = 2000  # conversations read per batch of queries

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction <= 1.0:
            raise ValueError(f"test_fraction must be between 0 and 1; got {self.test_fraction}.")
        if not 1 <= self.bad_rating < self.good_rating <= 5:
            raise ValueError(
                f"Need 1 <= bad_rating < good_rating <= 5; got bad_rating={self.bad_rating}, "
                f"good_rating={self.good_rating}."
            )
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1; got {self.chunk_size}.")

    @classmethod
    def from_config(cls, config: _HasBuildSettings) -> ProcessorOptions:
        """The dataset-build settings of a ``training.ml.config.TrainConfig``."""
        return cls(
            seed=config.seed,
            test_fraction=config.test_fraction,
            good_rating=config.good_rating,
            bad_rating=config.bad_rating,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_of(conversation_id: object, *, seed: int, test_fraction: float) -> str:
    """``test`` iff sha256("<seed>:<conversation id>"), read as a fraction of 2**256, is below
    ``test_fraction``. The id is the canonical hyphenated UUID string."""
    digest = hashlib.sha256(f"{seed}:{conversation_id}".encode()).digest()
    return "test" if int.from_bytes(digest, "big") / 2**256 < test_fraction else "train"
