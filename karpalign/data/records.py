"""The Record contract and the caption-dataset readers.

Every reader (Karpathy ``dataset.json``, COCO ``captions_*.json`` + image folder, JSONL; COCO ``instances_*.json``
boxes for the region proposer, :func:`read_box_dataset`) produces the same :class:`Record`; nothing downstream knows
the file format. Readers refuse image paths that escape the image
root, drop and count empty captions, and count (rather than fail on) missing image files.

A refused image path (absolute, escaping the root, a URL scheme) is an :class:`ImagePathError` naming the file,
record and field. A job that must not stop for one bad record (the extraction job) reads with
``keep_bad_paths=True``: such a record is kept with its path as written and the reason in
``record.extra[PATH_ERROR]``, and counted in :attr:`ReadReport.bad_paths`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Iterable, Iterator

from karpalign.data.text import normalize_caption, python_tokenize

SPLITS = ("train", "val", "test", "restval", "test_novel")
PATH_ERROR = "path_error"  # Record.extra key: why the image path was refused (readers with keep_bad_paths)
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


class DatasetError(ValueError):
    """Malformed dataset input; the message names the file, the record index and the field."""

    def __init__(self, path: str, index: int | None, field: str | None, problem: str):
        where = path if index is None else f"{path}: record {index}"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")
        self.path, self.index, self.field, self.problem = path, index, field, problem


class ImagePathError(DatasetError):
    """An image path a reader refuses: absolute, escaping the image root, or carrying a URL scheme."""


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
    bad_paths: int = 0  # records kept with a refused image path (keep_bad_paths=True)
    skipped_boxes: int = 0  # COCO instances: crowd or empty boxes left out (read_coco_instances)

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
        if self.bad_paths:
            s += f"; {self.bad_paths} image paths refused"
        if self.skipped_boxes:
            s += f"; {self.skipped_boxes} crowd or empty boxes skipped"
        return s


def resolve_image_path(image_root: str, relpath: str, source: str, index: int, field: str) -> str:
    """Joins ``relpath`` under ``image_root``; raises :class:`ImagePathError` for a path with a URL scheme, an
    absolute path and a path that escapes the root (a URL image root is given as the root, never per image)."""
    if not isinstance(relpath, str) or not relpath:
        raise DatasetError(source, index, field, f"expected a non-empty relative path, got {relpath!r}")
    scheme = _URL_SCHEME.match(relpath)
    if scheme:
        raise ImagePathError(source, index, field, f"URL scheme {scheme.group(1)!r} is not allowed in image path "
                                                   f"{relpath!r}; paths are relative to the image root "
                                                   f"{image_root!r} (a remote root goes in the image root)")
    if os.path.isabs(relpath) or relpath.startswith(("/", "\\")) or (len(relpath) > 1 and relpath[1] == ":"):
        raise ImagePathError(source, index, field, f"absolute path {relpath!r} is not allowed; paths are relative "
                                                   f"to the image root {image_root!r}")
    root = os.path.realpath(image_root)
    full = os.path.realpath(os.path.join(root, relpath))
    if os.path.commonpath([root, full]) != root:
        raise ImagePathError(source, index, field, f"path {relpath!r} escapes the image root {image_root!r}")
    return full


def _resolve_or_keep(image_root: str, relpath, source: str, index: int, field: str,
                     keep_bad_paths: bool) -> tuple[str, str]:
    """(resolved path, '') or, with ``keep_bad_paths``, (the path as written, why it was refused)."""
    try:
        return resolve_image_path(image_root, relpath, source, index, field), ""
    except ImagePathError as exc:
        if not keep_bad_paths:
            raise
        return relpath, str(exc)


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
                       check_images: bool = True, report: ReadReport | None = None,
                       keep_bad_paths: bool = False) -> list[Record]:
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
        full, path_error = _resolve_or_keep(image_root, rel, path, i, "filename", keep_bad_paths)
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
        if check_images and not path_error and not os.path.isfile(full):
            report.add_missing(full)
            continue
        image_id = str(img.get("cocoid", img.get("imgid", i)))
        extra = {k: img[k] for k in ("imgid", "cocoid", "filepath", "filename", "objects", "width", "height")
                 if k in img}
        if path_error:
            extra[PATH_ERROR] = path_error
            report.bad_paths += 1
        records.append(Record(image_id=image_id, split=split, path=full, sentences=sentences, boxes=boxes,
                              extra=extra))
        report.records += 1
    return records


def read_coco_captions(path: str, image_root: str, *, split: str = "train", check_images: bool = True,
                       report: ReadReport | None = None, keep_bad_paths: bool = False) -> list[Record]:
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
        full, path_error = _resolve_or_keep(image_root, file_name, path, i, "images.file_name",
                                            keep_bad_paths)
        if check_images and not path_error and not os.path.isfile(full):
            report.add_missing(full)
            continue
        extra = {"cocoid": image_id, **({PATH_ERROR: path_error} if path_error else {})}
        report.bad_paths += bool(path_error)
        records.append(Record(image_id=str(image_id), split=split, path=full,
                              sentences=by_image.get(image_id, []), extra=extra))
        report.records += 1
    unknown = set(by_image) - seen
    if unknown:
        raise DatasetError(path, None, "annotations.image_id",
                           f"{len(unknown)} captions name images not in 'images' (e.g. {sorted(unknown)[:3]})")
    return records


def read_jsonl(path: str, image_root: str | None = None, *, split: str = "train", check_images: bool = True,
               report: ReadReport | None = None, keep_bad_paths: bool = False) -> list[Record]:
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
            full, path_error = _resolve_or_keep(image_root, rel, path, lineno, "image", keep_bad_paths)
            if full in missing:
                continue
            if full not in by_path:
                if check_images and not path_error and not os.path.isfile(full):
                    missing.add(full)
                    report.add_missing(full)
                    continue
                by_path[full] = Record(image_id=os.path.splitext(rel)[0], split=rec_split, path=full,
                                       sentences=[], extra={PATH_ERROR: path_error} if path_error else {})
                report.records += 1
                report.bad_paths += bool(path_error)
            sent = _make_sentence(caption, report)
            if sent is not None:
                by_path[full].sentences.append(sent)
    return list(by_path.values())


def read_dataset(spec: str, image_root: str | None = None, *, fold_restval: bool = False,
                 check_images: bool = True, report: ReadReport | None = None,
                 keep_bad_paths: bool = False) -> list[Record]:
    """Reads any supported format, chosen by content: Karpathy json, COCO captions json or JSONL."""
    if spec.endswith(".jsonl"):
        return read_jsonl(spec, image_root, check_images=check_images, report=report,
                          keep_bad_paths=keep_bad_paths)
    data_head = _load_json(spec)
    if isinstance(data_head, dict) and "annotations" in data_head:
        if image_root is None:
            raise DatasetError(spec, None, None, "COCO captions files need the image folder (image_root)")
        return read_coco_captions(spec, image_root, check_images=check_images, report=report,
                                  keep_bad_paths=keep_bad_paths)
    return read_karpathy_json(spec, image_root, fold_restval=fold_restval, check_images=check_images,
                              report=report, keep_bad_paths=keep_bad_paths)


def _coco_split(path: str, split: str | None) -> str:
    """``split`` if given, else the split in a COCO file name (``instances_val2017.json`` -> val), else train."""
    if split is not None:
        if split not in SPLITS:
            raise DatasetError(path, None, None, f"unknown split {split!r}; expected one of {SPLITS}")
        return split
    name = os.path.basename(path).lower()
    for candidate in ("train", "val", "test"):
        if re.search(rf"(^|[_\-.]){candidate}(\d|[_\-.]|$)", name):
            return candidate
    return "train"


def read_coco_instances(path: str, image_root: str, *, split: str | None = None, check_images: bool = True,
                        report: ReadReport | None = None, keep_crowd: bool = False) -> list[Record]:
    """Reads COCO ``instances_*.json`` (object detection annotations) -> records with boxes and no sentences.

    Each ``bbox`` ``[x, y, width, height]`` in pixels becomes a normalised ``[ymin, xmin, ymax, xmax]`` box
    (the image's ``width`` and ``height`` are required), clipped to the image; boxes that are empty after
    clipping, and crowd regions (``iscrowd: 1``) unless ``keep_crowd``, are skipped and counted
    (:attr:`ReadReport.skipped_boxes`). The category id of every kept box is in ``record.extra["classes"]``.
    An image without annotations is kept with no boxes (a negative for a region proposer). ``split`` defaults to
    the one in the file name (``instances_val2017.json`` -> ``val``), else ``train``.
    """
    report = report if report is not None else ReadReport()
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(path, None, None, "expected a top-level object")
    images = _require(data, "images", list, path, None)  # type: ignore[arg-type]
    anns = _require(data, "annotations", list, path, None)  # type: ignore[arg-type]
    split = _coco_split(path, split)
    sizes: dict[int, tuple[float, float]] = {}
    for i, img in enumerate(images):
        image_id = _require(img, "id", int, path, i, "images.")
        if image_id in sizes:
            raise DatasetError(path, i, "images.id", f"duplicate image id {image_id}")
        width = _require(img, "width", (int, float), path, i, "images.")
        height = _require(img, "height", (int, float), path, i, "images.")
        if width <= 0 or height <= 0:
            raise DatasetError(path, i, "images.width", f"image size {width} x {height} is not positive")
        sizes[image_id] = (float(width), float(height))
    boxes: dict[int, list[list[float]]] = {}
    classes: dict[int, list[int]] = {}
    for k, a in enumerate(anns):
        image_id = _require(a, "image_id", int, path, k, "annotations.")
        if image_id not in sizes:
            raise DatasetError(path, k, "annotations.image_id", f"image {image_id} is not in 'images'")
        bbox = _require(a, "bbox", list, path, k, "annotations.")
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise DatasetError(path, k, "annotations.bbox", f"expected [x, y, width, height], got {bbox!r}")
        if a.get("iscrowd") and not keep_crowd:
            report.skipped_boxes += 1
            continue
        width, height = sizes[image_id]
        x, y, w, h = (float(v) for v in bbox)
        x0, y0 = min(max(x / width, 0.0), 1.0), min(max(y / height, 0.0), 1.0)
        x1, y1 = min(max((x + w) / width, 0.0), 1.0), min(max((y + h) / height, 0.0), 1.0)
        if not (x1 > x0 and y1 > y0):
            report.skipped_boxes += 1
            continue
        boxes.setdefault(image_id, []).append([y0, x0, y1, x1])
        classes.setdefault(image_id, []).append(int(_require(a, "category_id", int, path, k, "annotations.")))
    records = []
    for i, img in enumerate(images):
        image_id = img["id"]
        full = resolve_image_path(image_root, _require(img, "file_name", str, path, i, "images."), path, i,
                                  "images.file_name")
        if check_images and not os.path.isfile(full):
            report.add_missing(full)
            continue
        width, height = sizes[image_id]
        records.append(Record(image_id=str(image_id), split=split, path=full, sentences=[],
                              boxes=boxes.get(image_id, []),
                              extra={"cocoid": image_id, "classes": classes.get(image_id, []),
                                     "width": width, "height": height}))
        report.records += 1
    return records


def _is_coco_instances(data) -> bool:
    anns = data.get("annotations") if isinstance(data, dict) else None
    return (isinstance(anns, list) and bool(anns) and isinstance(anns[0], dict) and "bbox" in anns[0]
            and "caption" not in anns[0])


def read_box_dataset(spec: str, image_root: str | None = None, *, split: str | None = None,
                     fold_restval: bool = False, check_images: bool = True,
                     report: ReadReport | None = None) -> list[Record]:
    """Records that carry boxes, for training a region proposer: a COCO ``instances_*.json`` (with
    ``image_root``; see :func:`read_coco_instances`) or any :func:`read_dataset` format whose records have boxes
    (the synthetic scenes' ``dataset.json``). Records without boxes are left out; a dataset where no record
    has any raises :class:`DatasetError` naming the file."""
    if not spec.endswith(".jsonl"):
        data = _load_json(spec)
        if _is_coco_instances(data):
            if image_root is None:
                raise DatasetError(spec, None, None, "COCO instances files need the image folder (image_root)")
            return read_coco_instances(spec, image_root, split=split, check_images=check_images, report=report)
    records = [r for r in read_dataset(spec, image_root, fold_restval=fold_restval, check_images=check_images,
                                       report=report) if r.boxes is not None]
    if not records:
        raise DatasetError(spec, None, "boxes", "no record has boxes: a region proposer trains on datasets whose "
                                                "records carry them (the scenes' dataset.json, COCO instances_*.json)")
    return records


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
