"""A grounded caption metric for datasets that know their objects (the synthetic scenes): are the colour–shape
pairs a caption names really in the image, and are the image's objects named?

BLEU, METEOR, ROUGE-L and CIDEr reward n-grams shared with the reference captions, so "a red circle" for an image
of a red square still earns most of its n-grams. This metric reads what a caption *claims* about the objects and
checks it against the image's ground truth (the scenes' ``objects``: shape, colour and size of each):

* **Mentions.** A mention is a noun phrase that names a colour and a shape ("two big blue discs", "a plus sign
  that is red"), parsed with the scenes' own word lists (:mod:`karpalign.datasets.captions`: shape, colour and
  size synonyms, plural forms, count words, the generic nouns "shape"/"object", the relative-clause form
  "... that is red and small"), so every way the dataset's grammar names an object is understood.
* **Object precision** = mentions whose (colour, shape) pair is some object of the image / all mentions.
* **Object recall** = objects whose (colour, shape) pair a true mention names / all objects.
* **Count accuracy.** A phrase that states how many ("a", "one", "a single", "two" ... "six"), including generic
  ones ("three shapes", "two red objects"), is right when exactly that many objects match every attribute it names
  (colour, shape, size) — the rule by which the dataset's grammar writes counts.
* **Novel pairs** (``test_novel``): colour–shape pairs that no training image contains. Reported: the share of
  images holding a novel pair whose caption names it (``novel_pair_named``), and how many mentions of novel pairs
  the captions make and how many of those are true.

Aggregates are micro-averages over all captions (sums of counts, then the ratio), like CHAIR (Rohrbach et al.
2018). Mentions that name only a colour or only a shape are not scored for precision: the dataset's pairs are
what the compositional split is about.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Hashable, Iterable, Mapping, Sequence

from karpalign.data.text import python_tokenize

NOT_SCENES = ("has no 'objects' for its images: the grounded caption metric needs a dataset that lists every "
              "image's objects (shape, colour, size), such as the synthetic scenes (karpalign-make-scenes)")


@dataclasses.dataclass(frozen=True)
class Mention:
    """A noun phrase of a caption: the attributes it names (None: not named) and the count it states.

    ``count`` is the stated number of objects (1 for "a", "an", "one", "a single"), None when the phrase states
    none (a bare plural). ``start``/``end`` are its token span; ``text`` its words.
    """

    colour: str | None
    shape: str | None
    size: str | None
    count: int | None
    start: int
    end: int
    text: str

    @property
    def pair(self) -> tuple[str, str] | None:
        """(colour, shape) when the phrase names both, else None."""
        return (self.colour, self.shape) if self.colour and self.shape else None


class SceneLexicon:
    """Words of the scenes' caption grammar: token sequence -> (kind, value), longest match first.

    Kinds: ``shape`` (value: the shape), ``generic`` (value None: "shape", "object"), ``colour``, ``size`` and
    ``count`` (value: the number). Built from :mod:`karpalign.datasets.captions` by default, so a synonym added
    to the dataset is understood here too.
    """

    def __init__(self, shape_words: Mapping[str, Sequence[str]] | None = None,
                 colour_words: Mapping[str, Sequence[str]] | None = None,
                 size_words: Mapping[str, Sequence[str]] | None = None,
                 generic_nouns: Sequence[str] | None = None, count_words: Mapping[int, str] | None = None):
        from karpalign.datasets import captions as C

        shape_words = C.SHAPE_WORDS if shape_words is None else shape_words
        colour_words = C.COLOUR_WORDS if colour_words is None else colour_words
        size_words = C.SIZE_WORDS if size_words is None else size_words
        generic_nouns = C.GENERIC_NOUNS if generic_nouns is None else generic_nouns
        count_words = C.COUNT_WORDS if count_words is None else count_words
        self.shapes = tuple(shape_words)
        self.colours = tuple(colour_words)
        self.sizes = tuple(size_words)
        self.entries: dict[tuple[str, ...], tuple[str, object]] = {}
        for shape, words in shape_words.items():
            for w in words:
                self._add(w, ("shape", shape))
                self._add(C.plural(w), ("shape", shape))
        for noun in generic_nouns:
            self._add(noun, ("generic", None))
            self._add(C.plural(noun), ("generic", None))
        for kind, table in (("colour", colour_words), ("size", size_words)):
            for value, words in table.items():
                for w in words:
                    self._add(w, (kind, value))
        for n, w in count_words.items():
            self._add(w, ("count", int(n)))
        for w in ("a", "an", "one", "a single", "one single"):
            self._add(w, ("count", 1))
        self.longest = max(len(k) for k in self.entries)

    def _add(self, words: str, entry: tuple[str, object]) -> None:
        key = tuple(python_tokenize(words))
        if key in self.entries and self.entries[key] != entry:
            raise ValueError(f"SceneLexicon: {' '.join(key)!r} is both {self.entries[key]} and {entry}")
        self.entries[key] = entry

    def units(self, tokens: Sequence[str]) -> list[tuple[str, object, int, int]]:
        """The caption as (kind, value, start, end) units; a token outside the lexicon is ('word', token)."""
        out, i = [], 0
        while i < len(tokens):
            for n in range(min(self.longest, len(tokens) - i), 0, -1):
                entry = self.entries.get(tuple(tokens[i:i + n]))
                if entry is not None:
                    out.append((entry[0], entry[1], i, i + n))
                    i += n
                    break
            else:
                out.append(("word", tokens[i], i, i + 1))
                i += 1
        return out


_ADJECTIVES = ("colour", "size")
_NOUNS = ("shape", "generic")
DEFAULT_LEXICON: SceneLexicon | None = None


def default_lexicon() -> SceneLexicon:
    global DEFAULT_LEXICON
    if DEFAULT_LEXICON is None:
        DEFAULT_LEXICON = SceneLexicon()
    return DEFAULT_LEXICON


def parse_mentions(caption: str, lexicon: SceneLexicon | None = None) -> list[Mention]:
    """The noun phrases of ``caption`` (raw text; tokenized as the dataset is) in order.

    A phrase is ``[count] adjective* noun [that is|are adjective (and adjective)*]`` where the noun is a shape
    or a generic noun and the adjectives are colours and sizes. With two different colours the first is kept.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a string, got {type(caption).__name__}")
    lexicon = lexicon or default_lexicon()
    tokens = python_tokenize(caption)
    units = lexicon.units(tokens)
    mentions = []
    for j, (kind, value, start, end) in enumerate(units):
        if kind not in _NOUNS:
            continue
        attrs: dict[str, str] = {}
        first = j
        while first > 0 and units[first - 1][0] in _ADJECTIVES:
            first -= 1
        before = [(units[k][0], units[k][1]) for k in range(first, j)]
        count = None
        if first > 0 and units[first - 1][0] == "count":
            first -= 1
            count = int(units[first][1])
        last = j
        after = []
        if (j + 3 < len(units) and units[j + 1][:2] == ("word", "that") and units[j + 2][0] == "word"
                and units[j + 2][1] in ("is", "are") and units[j + 3][0] in _ADJECTIVES):
            last = j + 3
            after.append((units[last][0], units[last][1]))
            while (last + 2 < len(units) and units[last + 1][:2] == ("word", "and")
                   and units[last + 2][0] in _ADJECTIVES and not _starts_noun_phrase(units, last + 2)):
                last += 2
                after.append((units[last][0], units[last][1]))
        for attr_kind, attr_value in before + after:
            attrs.setdefault(attr_kind, attr_value)
        shape = value if kind == "shape" else None
        s, e = units[first][2], units[last][3]
        mentions.append(Mention(colour=attrs.get("colour"), shape=shape, size=attrs.get("size"), count=count,
                                start=s, end=e, text=" ".join(tokens[s:e])))
    return mentions


def _starts_noun_phrase(units, k: int) -> bool:
    """Units k, k+1, ... are adjectives followed by a noun (a new bare noun phrase, not a clause's adjective)."""
    while k < len(units) and units[k][0] in _ADJECTIVES:
        k += 1
    return k < len(units) and units[k][0] in _NOUNS


# ---- ground truth -------------------------------------------------------------------------------------------


def check_objects(objects, where: str, lexicon: SceneLexicon | None = None) -> list[dict]:
    """One image's objects as ``[{"colour", "shape", "size"}]``; errors name ``where``, the index and field."""
    lexicon = lexicon or default_lexicon()
    if isinstance(objects, (str, bytes)) or not isinstance(objects, Sequence):
        raise ValueError(f"{where}: expected a list of objects, got {type(objects).__name__}")
    out = []
    for n, obj in enumerate(objects):
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where}[{n}]: expected an object with colour, shape and size, got {obj!r}")
        for field, known in (("colour", lexicon.colours), ("shape", lexicon.shapes), ("size", lexicon.sizes)):
            if field == "size" and obj.get("size") is None:  # a dataset may not know sizes
                continue
            if obj.get(field) not in known:
                raise ValueError(f"{where}[{n}]: field {field!r} is {obj.get(field)!r}; expected one of "
                                 f"{list(known)}")
        out.append({"colour": obj["colour"], "shape": obj["shape"], "size": obj.get("size")})
    return out


def _matching(objects: Sequence[dict], mention: Mention) -> int:
    """How many objects have every attribute the mention names."""
    return sum(all(getattr(mention, f) in (None, o[f]) for f in ("colour", "shape", "size")) for o in objects)


def ground_caption(caption: str, objects: Sequence[dict], novel_pairs: Iterable[tuple[str, str]] = (),
                   lexicon: SceneLexicon | None = None) -> dict:
    """One caption against its image's objects (already checked by :func:`check_objects`).

    Returns counts: ``mentions`` / ``true_mentions`` (colour–shape phrases, and those naming a pair the image
    has), ``objects`` / ``objects_named``, ``counts_stated`` / ``counts_right``, ``novel_in_image`` (the image
    holds a novel pair), ``novel_named`` (a true mention names one), ``novel_mentions`` / ``novel_true``
    (mentions of any novel pair, and the true ones), and ``false`` (the wrong mentions' words).
    """
    novel = set(map(tuple, novel_pairs))
    mentions = parse_mentions(caption, lexicon)
    pairs_present = {(o["colour"], o["shape"]) for o in objects}
    true_pairs, false = set(), []
    n_mentions = n_true = stated = right = novel_mentions = novel_true = 0
    for m in mentions:
        if m.count is not None:
            stated += 1
            right += _matching(objects, m) == m.count
        if m.pair is None:
            continue
        n_mentions += 1
        if m.pair in pairs_present:
            n_true += 1
            true_pairs.add(m.pair)
        else:
            false.append(m.text)
        if m.pair in novel:
            novel_mentions += 1
            novel_true += m.pair in pairs_present
    named = sum((o["colour"], o["shape"]) in true_pairs for o in objects)
    novel_here = pairs_present & novel
    return {"mentions": n_mentions, "true_mentions": n_true, "objects": len(objects), "objects_named": named,
            "counts_stated": stated, "counts_right": right, "novel_in_image": bool(novel_here),
            "novel_named": bool(novel_here & true_pairs), "novel_mentions": novel_mentions,
            "novel_true": novel_true, "false": false}


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def grounded_metrics(captions: Mapping[Hashable, str], objects: Mapping[Hashable, Sequence],
                     novel_pairs: Iterable[tuple[str, str]] = (), *, lexicon: SceneLexicon | None = None,
                     per_image: bool = False) -> dict:
    """Object precision / recall, count accuracy and novel-pair figures of one caption per image.

    Args:
        captions: image id -> generated caption.
        objects: image id -> that image's objects (``{"colour", "shape", "size"}`` each); every caption id needs
            an entry.
        novel_pairs: (colour, shape) pairs never seen in training (:func:`novel_pairs`), for the novel figures.
        per_image: also return ``per_image``: image id -> :func:`ground_caption`'s counts.

    Returns ``object_precision``, ``object_recall``, ``count_accuracy``, ``novel_pair_named`` (None when no
    image holds a novel pair), ``novel_mention_precision``, the summed counts, ``captions_without_mentions``,
    ``frequent_false`` (the 10 most frequent wrong mentions) and ``n_images``.
    """
    if not isinstance(captions, Mapping) or not isinstance(objects, Mapping):
        raise TypeError("captions and objects must be dicts keyed by image id")
    if not captions:
        raise ValueError("captions is empty: nothing to evaluate")
    missing = [k for k in captions if k not in objects]
    if missing:
        raise ValueError(f"{len(missing)} captioned images have no objects, e.g. {missing[:5]}")
    lexicon = lexicon or default_lexicon()
    novel = sorted({tuple(p) for p in novel_pairs})
    for p in novel:
        if len(p) != 2 or p[0] not in lexicon.colours or p[1] not in lexicon.shapes:
            raise ValueError(f"novel_pairs: {p!r} is not a (colour, shape) pair of the dataset")
    totals = dict.fromkeys(("mentions", "true_mentions", "objects", "objects_named", "counts_stated",
                            "counts_right", "novel_images", "novel_named", "novel_mentions", "novel_true",
                            "captions_without_mentions"), 0)
    false_counts: dict[str, int] = {}
    rows = {}
    for image_id, caption in captions.items():
        if not isinstance(caption, str):
            raise TypeError(f"captions[{image_id!r}] must be a string, got {type(caption).__name__}")
        objs = check_objects(objects[image_id], f"objects[{image_id!r}]", lexicon)
        g = ground_caption(caption, objs, novel, lexicon)
        for key in ("mentions", "true_mentions", "objects", "objects_named", "counts_stated", "counts_right",
                    "novel_mentions", "novel_true"):
            totals[key] += g[key]
        totals["novel_images"] += g["novel_in_image"]
        totals["novel_named"] += g["novel_named"]
        totals["captions_without_mentions"] += g["mentions"] == 0
        for text in g["false"]:
            false_counts[text] = false_counts.get(text, 0) + 1
        if per_image:
            rows[image_id] = g
    result = {
        "object_precision": _ratio(totals["true_mentions"], totals["mentions"]),
        "object_recall": _ratio(totals["objects_named"], totals["objects"]),
        "count_accuracy": _ratio(totals["counts_right"], totals["counts_stated"]),
        "novel_pair_named": _ratio(totals["novel_named"], totals["novel_images"]),
        "novel_mention_precision": _ratio(totals["novel_true"], totals["novel_mentions"]),
        **totals,
        "novel_pairs": [list(p) for p in novel],
        "frequent_false": sorted(false_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10],
        "n_images": len(captions),
    }
    if per_image:
        result["per_image"] = rows
    return result


# ---- the dataset's objects ----------------------------------------------------------------------------------


@dataclasses.dataclass
class SceneObjects:
    """Every image's objects and split, from a dataset file that lists them (the scenes' ``dataset.json``)."""

    path: str
    objects: dict[str, list[dict]]  # image id (as in the records) -> objects
    splits: dict[str, str]  # image id -> split
    boxes: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)  # image id -> object boxes

    def novel_pairs(self, train_split: str = "train") -> list[tuple[str, str]]:
        """(colour, shape) pairs of some image that no ``train_split`` image contains, sorted."""
        seen = {(o["colour"], o["shape"]) for i, objs in self.objects.items() if self.splits[i] == train_split
                for o in objs}
        if not seen:
            raise ValueError(f"{self.path}: no {train_split!r} images with objects: cannot tell which pairs are novel")
        every = {(o["colour"], o["shape"]) for objs in self.objects.values() for o in objs}
        return sorted(every - seen)


def read_scene_objects(dataset_path: str) -> SceneObjects:
    """The objects of every image of a Karpathy-format dataset file (read by
    :func:`karpalign.data.records.read_karpathy_json`); images without an ``objects`` list make it an error."""
    from karpalign.data.records import read_karpathy_json

    if not os.path.isfile(dataset_path):
        raise FileNotFoundError(f"dataset {dataset_path}: file not found")
    records = read_karpathy_json(dataset_path, check_images=False)
    lexicon = default_lexicon()
    objects, splits, boxes = {}, {}, {}
    for n, r in enumerate(records):
        if "objects" not in r.extra:
            raise ValueError(f"{dataset_path}: images[{n}] {NOT_SCENES}")
        objects[r.image_id] = check_objects(r.extra["objects"], f"{dataset_path}: images[{n}].objects", lexicon)
        splits[r.image_id] = r.split
        if r.boxes is not None and len(r.boxes) == len(objects[r.image_id]):  # box i frames object i
            boxes[r.image_id] = r.boxes
    if not objects:
        raise ValueError(f"{dataset_path}: no images")
    return SceneObjects(dataset_path, objects, splits, boxes)


def scene_objects_of_records(manifest, dataset: str | None = None) -> tuple[SceneObjects | None, str]:
    """(the objects, a note) for grounding captions of a records folder.

    ``dataset`` given: that file, which must list objects (else an error naming it). Not given: the dataset file
    the records were extracted from (the manifest's ``dataset``) when it still exists and lists objects;
    otherwise (None, a note saying why the metric was skipped).
    """
    if dataset:
        return read_scene_objects(dataset), f"objects from {dataset}"
    path = (manifest.extra or {}).get("dataset")
    if not path:
        return None, "grounded metric skipped: the records manifest names no dataset file (pass --dataset)"
    if not os.path.isfile(path):
        return None, f"grounded metric skipped: the records' dataset {path} no longer exists (pass --dataset)"
    try:
        return read_scene_objects(path), f"objects from {path} (the records' dataset)"
    except ValueError as exc:
        return None, f"grounded metric skipped: {exc}"
