"""The Record contract and the caption-dataset readers.

Every reader (Karpathy ``dataset.json``, COCO ``captions_*.json`` + image folder, JSONL) produces the same
:class:`Record`; nothing downstream knows the file format. Readers refuse image paths that escape the image
root, drop and count empty captions, and count (rather than fail on) missing image files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Iterator

from karpalign.data.text import normalize_caption, python_tokenize

SPLITS = ("train", "val", "test", "restval", "test_novel")


class DatasetError(ValueError):
    """Malformed dataset input; the message names the file, the record index and the field."""

    def __init__(self, path: str, index: int | None, field: str | None, problem: str):
        where = path if index is None else f"{path}: record {index}"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")
        self.path, self.index, self.field, self.problem = path, index, field, problem


@dataclasses.dataclass
class Phrase:
    """A half-open token span [start, end) of a sentence that refers to some of the image's boxes."""

    start: int
    end: int
    boxes: list[int]


@dataclasses.dataclass
class Sentence:
    raw: str
    tokens: list[str]
    sentid: int | None = None
    phrases: list[Phrase] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Record:
    """One image: id, split, resolved path, sentences and optional boxes (normalised [ymin, xmin, ymax, xmax])."""

    image_id: str
    split: str
    path: str
    sentences: list[Sentence]
    boxes: list[list[float]] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ReadReport:
    """What a reader skipped, so nothing is lost silently."""

    records: int = 0
    sentences: int = 0
    empty_captions: int = 0
    missing_images: int = 0
    missing_examples: list[str] = dataclasses.field(default_factory=list)

    def add_missing(self, path: str) -> None:
        self.missing_images += 1
        if len(self.missing_examples) < 5:
            self.missing_examples.append(path)

    def summary(self) -> str:
        s = f"{self.records} images, {self.sentences} sentences"
        if self.empty_captions:
            s += f"; dropped {self.empty_captions} empty captions"
        if self.missing_images:
            s += f"; {self.missing_images} image files missing (e.g. {', '.join(self.missing_examples)})"
        return s


def resolve_image_path(image_root: str, relpath: str, source: str, index: int, field: str) -> str:
    """Joins ``relpath`` under ``image_root``, refusing absolute paths and paths that escape the root."""
    if not isinstance(relpath, str) or not relpath:
        raise DatasetError(source, index, field, f"expected a non-empty relative path, got {relpath!r}")
    if os.path.isabs(relpath) or relpath.startswith(("/", "\\")) or (len(relpath) > 1 and relpath[1] == ":"):
        raise DatasetError(source, index, field, f"absolute path {relpath!r} is not allowed; paths are relative "
                                                 f"to the image root {image_root!r}")
    root = os.path.realpath(image_root)
    full = os.path.realpath(os.path.join(root, relpath))
    if os.path.commonpath([root, full]) != root:
        raise DatasetError(source, index, field, f"path {relpath!r} escapes the image root {image_root!r}")
    return full


def _load_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DatasetError(path, None, None, "file not found") from None
    except json.JSONDecodeError as e:
        raise DatasetError(path, None, None, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def _require(obj: dict, key: str, types, path: str, index: int, prefix: str = ""):
    if not isinstance(obj, dict):
        raise DatasetError(path, index, prefix or None, f"expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise DatasetError(path, index, prefix + key, "missing")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise DatasetError(path, index, prefix + key, f"expected {names}, got {type(value).__name__}")
    return value


def _make_sentence(raw: str, report: ReadReport, **kw) -> Sentence | None:
    raw = normalize_caption(raw)
    tokens = python_tokenize(raw)
    if not tokens:
        report.empty_captions += 1
        return None
    report.sentences += 1
    return Sentence(raw=raw, tokens=tokens, **kw)


def _validate_boxes(boxes, path: str, index: int) -> list[list[float]]:
    if not isinstance(boxes, list):
        raise DatasetError(path, index, "boxes", "expected a list of [ymin, xmin, ymax, xmax]")
    out = []
    for j, b in enumerate(boxes):
        if (not isinstance(b, list) or len(b) != 4 or not all(isinstance(x, (int, float)) for x in b)):
            raise DatasetError(path, index, f"boxes[{j}]", f"expected 4 numbers, got {b!r}")
        y0, x0, y1, x1 = (float(x) for x in b)
        if not (0.0 <= y0 < y1 <= 1.0 and 0.0 <= x0 < x1 <= 1.0):
            raise DatasetError(path, index, f"boxes[{j}]",
                               f"{b!r} is not a normalised [ymin, xmin, ymax, xmax] box inside [0, 1]")
        out.append([y0, x0, y1, x1])
    return out


def read_karpathy_json(path: str, image_root: str | None = None, *, fold_restval: bool = False,
                       check_images: bool = True, report: ReadReport | None = None) -> list[Record]:
    """Reads Karpathy's ``dataset.json`` (Flickr8k/30k, COCO; also the synthetic scenes' extra fields).

    ``image_root`` defaults to the folder holding the file. COCO's ``restval`` becomes ``train`` when
    ``fold_restval``. Sentence ``tokens`` are recomputed with our tokenizer from ``raw`` so every corpus is
    tokenized one way; the scenes' phrase spans are kept (they index our tokens).
    """
    report = report if report is not None else ReadReport()
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(path, None, "images", "expected a top-level object with an 'images' list")
    image_root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    records = []
    for i, img in enumerate(data["images"]):
        filename = _require(img, "filename", str, path, i)
        split = _require(img, "split", str, path, i)
        if split not in SPLITS:
            raise DatasetError(path, i, "split", f"unknown split {split!r}; expected one of {SPLITS}")
        if fold_restval and split == "restval":
            split = "train"
        rel = os.path.join(img["filepath"], filename) if img.get("filepath") else filename
        if "filepath" in img and not isinstance(img["filepath"], str):
            raise DatasetError(path, i, "filepath", f"expected str, got {type(img['filepath']).__name__}")
        full = resolve_image_path(image_root, rel, path, i, "filename")
        sents_in = _require(img, "sentences", list, path, i)
        boxes = _validate_boxes(img["boxes"], path, i) if "boxes" in img else None
        sentences = []
        for j, s in enumerate(sents_in):
            raw = _require(s, "raw", str, path, i, f"sentences[{j}].")
            phrases = []
            for k, p in enumerate(s.get("phrases", []) if isinstance(s, dict) else []):
                field = f"sentences[{j}].phrases[{k}]"
                try:
                    ph = Phrase(int(p["start"]), int(p["end"]), [int(b) for b in p["boxes"]])
                except (KeyError, TypeError, ValueError):
                    raise DatasetError(path, i, field, f"expected {{start, end, boxes}}, got {p!r}") from None
                if boxes is None or any(not 0 <= b < len(boxes) for b in ph.boxes):
                    raise DatasetError(path, i, field, f"box indices {ph.boxes} do not name boxes of this image")
                phrases.append(ph)
            sent = _make_sentence(raw, report, sentid=s.get("sentid"), phrases=phrases)
            if sent is None:
                continue
            for ph in sent.phrases:
                if not 0 <= ph.start < ph.end <= len(sent.tokens):
                    raise DatasetError(path, i, f"sentences[{j}].phrases",
                                       f"span [{ph.start}, {ph.end}) outside the {len(sent.tokens)} tokens")
            sentences.append(sent)
        if check_images and not os.path.isfile(full):
            report.add_missing(full)
            continue
        image_id = str(img.get("cocoid", img.get("imgid", i)))
        extra = {k: img[k] for k in ("imgid", "cocoid", "filepath", "filename", "objects", "width", "height")
                 if k in img}
        records.append(Record(image_id=image_id, split=split, path=full, sentences=sentences, boxes=boxes,
                              extra=extra))
        report.records += 1
    return records


def read_coco_captions(path: str, image_root: str, *, split: str = "train", check_images: bool = True,
                       report: ReadReport | None = None) -> list[Record]:
    """Reads COCO ``captions_*.json`` (``images`` + ``annotations``) with the images in ``image_root``."""
    report = report if report is not None else ReadReport()
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(path, None, None, "expected a top-level object")
    images = _require(data, "images", list, path, None)  # type: ignore[arg-type]
    anns = _require(data, "annotations", list, path, None)  # type: ignore[arg-type]
    by_image: dict[int, list[Sentence]] = {}
    for k, a in enumerate(anns):
        image_id = _require(a, "image_id", int, path, k, "annotations.")
        caption = _require(a, "caption", str, path, k, "annotations.")
        sent = _make_sentence(caption, report, sentid=a.get("id"))
        if sent is not None:
            by_image.setdefault(image_id, []).append(sent)
    records = []
    seen = set()
    for i, img in enumerate(images):
        image_id = _require(img, "id", int, path, i, "images.")
        file_name = _require(img, "file_name", str, path, i, "images.")
        if image_id in seen:
            raise DatasetError(path, i, "images.id", f"duplicate image id {image_id}")
        seen.add(image_id)
        full = resolve_image_path(image_root, file_name, path, i, "images.file_name")
        if check_images and not os.path.isfile(full):
            report.add_missing(full)
            continue
        records.append(Record(image_id=str(image_id), split=split, path=full,
                              sentences=by_image.get(image_id, []), extra={"cocoid": image_id}))
        report.records += 1
    unknown = set(by_image) - seen
    if unknown:
        raise DatasetError(path, None, "annotations.image_id",
                           f"{len(unknown)} captions name images not in 'images' (e.g. {sorted(unknown)[:3]})")
    return records


def read_jsonl(path: str, image_root: str | None = None, *, split: str = "train", check_images: bool = True,
               report: ReadReport | None = None) -> list[Record]:
    """Reads ``{"image": path, "caption": text}`` lines (optional ``"split"``); captions group by image."""
    report = report if report is not None else ReadReport()
    image_root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    by_path: dict[str, Record] = {}
    missing = set()
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(path, None, None, "file not found") from None
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(path, lineno, None, f"invalid JSON on line {lineno}: {e.msg}") from None
            rel = _require(obj, "image", str, path, lineno)
            caption = _require(obj, "caption", str, path, lineno)
            rec_split = obj.get("split", split)
            if rec_split not in SPLITS:
                raise DatasetError(path, lineno, "split", f"unknown split {rec_split!r}; expected one of {SPLITS}")
            full = resolve_image_path(image_root, rel, path, lineno, "image")
            if full in missing:
                continue
            if full not in by_path:
                if check_images and not os.path.isfile(full):
                    missing.add(full)
                    report.add_missing(full)
                    continue
                by_path[full] = Record(image_id=os.path.splitext(rel)[0], split=rec_split, path=full,
                                       sentences=[])
                report.records += 1
            sent = _make_sentence(caption, report)
            if sent is not None:
                by_path[full].sentences.append(sent)
    return list(by_path.values())


def read_dataset(spec: str, image_root: str | None = None, *, fold_restval: bool = False,
                 check_images: bool = True, report: ReadReport | None = None) -> list[Record]:
    """Reads any supported format, chosen by content: Karpathy json, COCO captions json or JSONL."""
    if spec.endswith(".jsonl"):
        return read_jsonl(spec, image_root, check_images=check_images, report=report)
    data_head = _load_json(spec)
    if isinstance(data_head, dict) and "annotations" in data_head:
        if image_root is None:
            raise DatasetError(spec, None, None, "COCO captions files need the image folder (image_root)")
        return read_coco_captions(spec, image_root, check_images=check_images, report=report)
    return read_karpathy_json(spec, image_root, fold_restval=fold_restval, check_images=check_images,
                              report=report)


def write_karpathy_json(records: Iterable[Record], path: str, image_root: str, dataset: str = "custom") -> None:
    """Writes records as Karpathy ``dataset.json`` with paths relative to ``image_root``."""
    root = os.path.realpath(image_root)
    images, sentid = [], 0
    for imgid, r in enumerate(records):
        rel = os.path.relpath(os.path.realpath(r.path), root)
        if rel.startswith(".."):
            raise ValueError(f"record {r.image_id}: image {r.path} is not under {image_root}")
        sents = []
        for s in r.sentences:
            entry = {"tokens": s.tokens, "raw": s.raw, "imgid": imgid, "sentid": sentid}
            if s.phrases:
                entry["phrases"] = [dataclasses.asdict(p) for p in s.phrases]
            sents.append(entry)
            sentid += 1
        img = {"filepath": os.path.dirname(rel), "filename": os.path.basename(rel), "imgid": imgid,
               "split": r.split, "sentids": [s["sentid"] for s in sents], "sentences": sents}
        if r.boxes is not None:
            img["boxes"] = r.boxes
        for k in ("cocoid", "objects", "width", "height"):
            if k in r.extra:
                img[k] = r.extra[k]
        images.append(img)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"dataset": dataset, "images": images}, f)
    os.replace(tmp, path)


def by_split(records: Iterable[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        out.setdefault(r.split, []).append(r)
    return out


def iter_train_tokens(records: Iterable[Record]) -> Iterator[list[str]]:
    """Tokens of training sentences only: the vocabulary never sees val/test captions."""
    for r in records:
        if r.split == "train":
            for s in r.sentences:
                yield s.tokens
