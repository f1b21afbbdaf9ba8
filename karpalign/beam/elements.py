"""The values that flow through the extraction pipeline.

One :class:`ImageItem` per image travels from the reader to the writer; each step fills in its part (bytes,
pixels, boxes, features) and drops what later steps no longer need, so a worker never holds an image's
bytes, pixels and features at once for longer than one step. Anything that goes wrong becomes a
:class:`DeadLetter` on a tagged side output -- written to ``dead_letters.jsonl`` and counted, never dropped.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np

# Failure stages, in pipeline order. "bomb" is a decode refused by the pixel limit.
STAGE_READ, STAGE_DECODE, STAGE_BOMB = "read", "decode", "bomb"
STAGE_PROPOSE, STAGE_FEATURES, STAGE_ENCODE = "propose", "features", "encode"
STAGES = (STAGE_READ, STAGE_DECODE, STAGE_BOMB, STAGE_PROPOSE, STAGE_FEATURES, STAGE_ENCODE)

DEAD_LETTER_TAG = "dead_letters"


@dataclasses.dataclass
class ImageItem:
    """One image on its way through the pipeline.

    Set by the launcher: ``image_id``, ``split``, ``path``, ``sentences`` (raw captions) and ``boxes`` (the
    dataset's own normalised boxes, or None). Filled in by the steps: ``data`` (file bytes), ``image`` uint8
    (H, W, 3), ``regions`` (R, 4) boxes with the full image first, ``features`` (R, D), ``tokens`` (one list
    per sentence).
    """

    image_id: str
    split: str
    path: str
    sentences: list[str]
    boxes: Optional[list[list[float]]] = None
    data: Optional[bytes] = None
    image: Optional[np.ndarray] = None
    regions: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = None
    tokens: Optional[list[list[str]]] = None

    @classmethod
    def from_record(cls, record) -> "ImageItem":
        """A :class:`karpalign.data.records.Record` -> the launcher's item (raw captions and boxes only)."""
        return cls(image_id=record.image_id, split=record.split, path=record.path,
                   sentences=[s.raw for s in record.sentences],
                   boxes=[list(map(float, b)) for b in record.boxes] if record.boxes is not None else None)


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An image the job could not use: where it came from, the stage that failed, and why."""

    path: str
    image_id: str
    stage: str
    reason: str

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"dead letter for {self.path}: unknown stage {self.stage!r}; expected one of {STAGES}")

    @classmethod
    def of(cls, item: ImageItem, stage: str, reason: str) -> "DeadLetter":
        return cls(path=item.path, image_id=item.image_id, stage=stage, reason=reason)

    def to_json(self) -> str:
        """One line of ``dead_letters.jsonl``."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)
