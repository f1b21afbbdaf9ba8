"""The values that flow through the extraction pipeline.

One :class:`ImageItem` per image travels from the reader to the writer; each step fills in its part (bytes,
pixels, boxes, features) and drops what later steps no longer need, so a worker never holds an image's
bytes, pixels and features at once for longer than one step. Anything that goes wrong becomes a
:class:`DeadLetter` -- written to ``dead_letters.jsonl`` and counted, never dropped.

Each step's output is one PCollection holding both kinds, a union told apart by type (``ImageItem`` or
``(split, example)`` versus ``DeadLetter``), which two plain filters split (:func:`is_dead_letter`). Tagged side
outputs would say the same, but Beam's DaskRunner (2.77) hands every tagged output of a ParDo to every consumer,
so the job does not rely on them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np

# Failure stages, in pipeline order. "path" is an image path the dataset reader refused (absolute, escaping the
# image root, a URL scheme); "bomb" is a decode refused by the pixel limit.
STAGE_PATH, STAGE_READ, STAGE_DECODE, STAGE_BOMB = "path", "read", "decode", "bomb"
STAGE_PROPOSE, STAGE_FEATURES, STAGE_ENCODE = "propose", "features", "encode"
STAGES = (STAGE_PATH, STAGE_READ, STAGE_DECODE, STAGE_BOMB, STAGE_PROPOSE, STAGE_FEATURES, STAGE_ENCODE)


@dataclasses.dataclass
class ImageItem:
    """One image on its way through the pipeline.

    Set by the launcher: ``image_id``, ``split``, ``path``, ``sentences`` (raw captions), ``boxes`` (the
    dataset's own normalised boxes, or None), ``seq`` (its line in the launcher's item file: runners that need it
    batch by it) and ``path_error`` (why the reader refused the path, or ''; the item becomes a "path" dead
    letter). Filled in by the steps: ``data`` (file bytes), ``image`` uint8 (H, W, 3), ``regions`` (R, 4)
    boxes with the full image first, ``features`` (R, D), ``tokens`` (one list per sentence).
    """

    image_id: str
    split: str
    path: str
    sentences: list[str]
    boxes: Optional[list[list[float]]] = None
    seq: int = 0
    path_error: str = ""
    data: Optional[bytes] = None
    image: Optional[np.ndarray] = None
    regions: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = None
    tokens: Optional[list[list[str]]] = None

    @classmethod
    def from_record(cls, record, seq: int = 0) -> "ImageItem":
        """A :class:`karpalign.data.records.Record` -> the launcher's item (raw captions and boxes only)."""
        from karpalign.data.records import PATH_ERROR

        return cls(image_id=record.image_id, split=record.split, path=record.path,
                   sentences=[s.raw for s in record.sentences],
                   boxes=[list(map(float, b)) for b in record.boxes] if record.boxes is not None else None,
                   seq=seq, path_error=record.extra.get(PATH_ERROR, ""))


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


def is_dead_letter(element) -> bool:
    """True for a :class:`DeadLetter` (the failure half of a step's output)."""
    return isinstance(element, DeadLetter)


def is_result(element) -> bool:
    """True for anything but a :class:`DeadLetter` (the success half of a step's output)."""
    return not isinstance(element, DeadLetter)
