"""Synthetic captioned scenes, part 2: a small caption grammar that only says true things.

Captions are built from *referents*: sets of objects that a noun phrase names exactly. A phrase such as
"two blue circles" is only produced when the objects matching (shape=circle, colour=blue) are exactly two,
so every noun phrase has a well-defined set of boxes; those sets become the phrase links of the sentence
(half-open token spans into ``python_tokenize(raw)``). Size words are absolute (the object's size class).

Spatial relations between referents come from box centres (left of / right of / above / below / next to)
and from paint order (in front of / behind: the later object covers part of the earlier one); a relation
is used for two referents only if it holds for every pair of their members.

Variety comes from synonyms ("circle"/"disc", "large"/"big"), attribute order ("a small red triangle" /
"a red triangle that is small"), counts, sentence templates and background descriptions.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Sequence

import numpy as np

from karpalign.data.text import python_tokenize
from karpalign.datasets.scenes import SceneLayout, SceneSpec

SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
    "hexagon": ("hexagon",),
}
COLOUR_WORDS = {
    "red": ("red",), "orange": ("orange",), "yellow": ("yellow",), "green": ("green",), "blue": ("blue",),
    "purple": ("purple", "violet"), "pink": ("pink",), "brown": ("brown",),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "medium": ("medium sized", "mid sized"),
              "large": ("large", "big")}
GENERIC_NOUNS = ("shape", "object")
COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
RELATION_WORDS = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above",),
    "below": ("below", "beneath", "under"),
    "next to": ("next to", "beside"),
    "in front of": ("in front of",),
    "behind": ("behind",),
}
TEXTURE_WORDS = {
    "stripes": ("striped", "stripy"),
    "checker": ("checkered", "checkerboard"),
    "noise": ("noisy", "speckled"),
    "gradient": ("gradient", "shaded"),
}
PLAIN_BACKGROUND_WORDS = {"white": ("white",), "grey": ("grey", "gray"),
                          "dark grey": ("dark grey", "dark gray"), "beige": ("beige",)}

# Relation thresholds, in normalised image units.
_MARGIN = 0.08          # centres must differ by this much along the relation's axis
_DOMINANCE = 0.6        # ... and by at least this fraction of the offset along the other axis
_NEXT_TO_GAP = 0.08     # "next to": horizontal gap between the boxes at most this


@dataclasses.dataclass(frozen=True)
class Phrase:
    """Tokens [start, end) of a caption name exactly the objects ``boxes`` (indices into the scene)."""

    start: int
    end: int
    boxes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Caption:
    raw: str
    tokens: tuple[str, ...]
    phrases: tuple[Phrase, ...]


@dataclasses.dataclass(frozen=True)
class Referent:
    """A set of objects and every (shape, colour, size) filter (None: any) that selects exactly it."""

    members: tuple[int, ...]
    filters: tuple[tuple[str | None, str | None, str | None], ...]


# ----------------------------------------------------------------------------------------------------------
# What is true in a scene: referents and relations.

def referents(spec: SceneSpec) -> list[Referent]:
    """Every object set that some attribute filter selects exactly, in a fixed order."""
    objs = spec.objects
    shapes = [None] + sorted({o.shape for o in objs})
    colours = [None] + sorted({o.colour for o in objs})
    sizes = [None] + sorted({o.size for o in objs})
    by_members: dict[tuple[int, ...], list] = {}
    for f in itertools.product(shapes, colours, sizes):
        members = tuple(i for i, o in enumerate(objs)
                        if f[0] in (None, o.shape) and f[1] in (None, o.colour) and f[2] in (None, o.size))
        if members:
            by_members.setdefault(members, []).append(f)
    return [Referent(m, tuple(fs)) for m, fs in sorted(by_members.items())]


def pair_relations(box_a: Sequence[float], box_b: Sequence[float], a_covers_b: bool = False,
                   b_covers_a: bool = False) -> set[str]:
    """The relations "a REL b" that hold, from box centres (and paint-order occlusion flags)."""
    ay0, ax0, ay1, ax1 = box_a
    by0, bx0, by1, bx1 = box_b
    dx = (bx0 + bx1) / 2 - (ax0 + ax1) / 2  # > 0: a is left of b
    dy = (by0 + by1) / 2 - (ay0 + ay1) / 2  # > 0: a is above b (y grows downwards)
    rel = set()
    if dx > _MARGIN and dx >= _DOMINANCE * abs(dy):
        rel.add("left of")
    if -dx > _MARGIN and -dx >= _DOMINANCE * abs(dy):
        rel.add("right of")
    if dy > _MARGIN and dy >= _DOMINANCE * abs(dx):
        rel.add("above")
    if -dy > _MARGIN and -dy >= _DOMINANCE * abs(dx):
        rel.add("below")
    gap = max(bx0 - ax1, ax0 - bx1)  # horizontal gap between the boxes (negative when they overlap)
    overlap_limit = -0.3 * min(ax1 - ax0, bx1 - bx0)
    if abs(dy) <= 0.5 * max(ay1 - ay0, by1 - by0) and overlap_limit <= gap <= _NEXT_TO_GAP:
        rel.add("next to")
    if a_covers_b:
        rel.add("in front of")
    if b_covers_a:
        rel.add("behind")
    return rel


def relation_triples(spec: SceneSpec, layout: SceneLayout,
                     refs: Sequence[Referent]) -> list[tuple[Referent, str, Referent]]:
    """(subject, relation, object) for disjoint referents where the relation holds for all member pairs."""
    n = len(spec.objects)
    boxes, occ = layout.boxes, layout.occludes
    pairwise = [[pair_relations(boxes[i], boxes[j], occ[i][j], occ[j][i]) if i != j else set()
                 for j in range(n)] for i in range(n)]
    triples = []
    for a, b in itertools.permutations(refs, 2):
        if set(a.members) & set(b.members):
            continue
        common = set.intersection(*(pairwise[i][j] for i in a.members for j in b.members))
        triples.extend((a, r, b) for r in sorted(common))
    return triples


# ----------------------------------------------------------------------------------------------------------
# Words.

def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _pick_weighted(rng: np.random.Generator, options: Sequence, weights: Sequence[float]):
    """One option with probability proportional to its weight (plain Python: called thousands of times)."""
    u = rng.random() * sum(weights)
    for option, w in zip(options, weights):
        u -= w
        if u < 0.0 and w > 0.0:
            return option
    return next(o for o, w in zip(reversed(options), reversed(weights)) if w > 0.0)


def plural(noun: str) -> str:
    """English plural of the last word: circle -> circles, cross -> crosses, plus sign -> plus signs."""
    head, _, last = noun.rpartition(" ")
    last = last + "es" if last.endswith(("s", "x", "ch", "sh")) else last + "s"
    return f"{head} {last}" if head else last


def article(next_word: str) -> str:
    return "an" if next_word[:1] in "aeiou" else "a"


def noun_phrase(filt: tuple[str | None, str | None, str | None], count: int, rng: np.random.Generator) -> str:
    """Words for a referent selected by ``filt`` with ``count`` members, in a random attribute order."""
    shape, colour, size = filt
    noun = _pick(rng, SHAPE_WORDS[shape] if shape else GENERIC_NOUNS)
    noun = plural(noun) if count > 1 else noun
    adjectives = [w for w in (_pick(rng, SIZE_WORDS[size]) if size else None,
                              _pick(rng, COLOUR_WORDS[colour]) if colour else None) if w]
    copula = "are" if count > 1 else "is"
    forms = [(adjectives, [])]  # (before the noun, in a relative clause after it)
    if len(adjectives) == 1:
        forms.append(([], adjectives))
    elif len(adjectives) == 2:
        forms += [([adjectives[0]], [adjectives[1]]), ([adjectives[1]], [adjectives[0]]),
                  ([], adjectives), ([], adjectives[::-1])]
    before, after = _pick_weighted(rng, forms, [6.0] + [1.0] * (len(forms) - 1))
    words = before + [noun]
    if after:
        words += ["that", copula, " and ".join(after)]
    det = article(words[0]) if count == 1 else COUNT_WORDS[count]
    return " ".join([det] + words)


def _filter_weight(filt) -> float:
    shape, colour, size = filt
    named = (1.0 + 4.0 * (shape is not None)) * (1.0 + 4.0 * (colour is not None))
    return named * (1.0 + 0.5 * (size is not None))


def describe_referent(ref: Referent, rng: np.random.Generator) -> str:
    """A noun phrase for ``ref``, favouring filters that name shape and colour."""
    filt = _pick_weighted(rng, ref.filters, [_filter_weight(f) for f in ref.filters])
    return noun_phrase(filt, len(ref.members), rng)


def background_phrase(spec: SceneSpec, rng: np.random.Generator) -> str:
    bg = spec.background
    if bg.kind == "plain":
        word = _pick(rng, PLAIN_BACKGROUND_WORDS[bg.name])
        word = f"plain {word}" if rng.random() < 0.3 else word
    else:
        word = _pick(rng, TEXTURE_WORDS[bg.kind])
    return f"{article(word)} {word} background"


# ----------------------------------------------------------------------------------------------------------
# Sentence templates. Each returns segments: (text, member boxes or None); segments are joined by spaces.

Segment = tuple[str, tuple[int, ...] | None]


def _np(ref: Referent, rng) -> Segment:
    return (describe_referent(ref, rng), ref.members)


def _be(ref: Referent) -> str:
    return "are" if len(ref.members) > 1 else "is"


def _list_segments(units: Sequence[Referent], rng) -> list[Segment]:
    """ "A, B and C" over the colour-shape groups in random order."""
    order = [units[k] for k in rng.permutation(len(units))]
    segs = [_np(u, rng) for u in order]
    if len(segs) > 1:
        segs = [(t + ",", b) for t, b in segs[:-2]] + [segs[-2], ("and", None), segs[-1]]
    return segs


def template_list(ctx, rng) -> list[Segment]:
    """Every object, grouped by colour and shape: "There is a red star and two blue circles."."""
    segs = _list_segments(ctx["units"], rng)
    prefix = _pick(rng, ["", "there is", "a picture of", "an image of"])
    if prefix == "there is":  # agrees with the first listed noun phrase
        prefix = "there are" if len(segs[0][1]) > 1 else "there is"
    suffix = [("on " + background_phrase(ctx["spec"], rng), None)] if rng.random() < 0.4 else []
    return ([(prefix, None)] if prefix else []) + segs + suffix


def template_count(ctx, rng) -> list[Segment]:
    """ "Three shapes: a red star and two blue circles." or "Two objects on a striped background."."""
    everything = ctx["everything"]
    n = len(everything.members)
    noun = _pick(rng, GENERIC_NOUNS)
    head = f"{_pick(rng, ['a single', 'one'])} {noun}" if n == 1 else f"{COUNT_WORDS[n]} {plural(noun)}"
    if rng.random() < 0.5:
        return [(head + ":", everything.members)] + _list_segments(ctx["units"], rng)
    return [(head, everything.members), ("on " + background_phrase(ctx["spec"], rng), None)]


def template_describe(ctx, rng) -> list[Segment]:
    """One referent: "There is a tiny violet hexagon on a checkered background."."""
    ref = _pick(rng, ctx["refs"])
    prefix = _pick(rng, ["", "there " + _be(ref), "a picture of", "an image showing"])
    suffix = [("on " + background_phrase(ctx["spec"], rng), None)] if rng.random() < 0.5 else []
    return ([(prefix, None)] if prefix else []) + [_np(ref, rng)] + suffix


def template_relation(ctx, rng) -> list[Segment]:
    """ "A small red triangle left of two blue circles." and reorderings of it."""
    subj, rel, obj = _pick(rng, ctx["triples"])
    words = _pick(rng, RELATION_WORDS[rel])
    a, b = _np(subj, rng), _np(obj, rng)
    form = int(rng.integers(4))
    if form == 0:
        return [a, (words, None), b]
    if form == 1:
        return [a, (f"{_be(subj)} {words}", None), b]
    if form == 2:
        return [(f"there {_be(subj)}", None), a, (words, None), b]
    return [(words, None), b, (f"there {_be(subj)}", None), a]


# ----------------------------------------------------------------------------------------------------------
# Assembly.

@functools.lru_cache(maxsize=8192)
def _segment_tokens(text: str) -> tuple[str, ...]:
    return tuple(python_tokenize(text))


def assemble(segments: Sequence[Segment]) -> Caption:
    """Joins segments into a capitalised sentence and records each referring segment's token span."""
    tokens: list[str] = []
    phrases = []
    for text, boxes in segments:
        seg_tokens = _segment_tokens(text)
        if boxes is not None:
            phrases.append(Phrase(len(tokens), len(tokens) + len(seg_tokens), tuple(boxes)))
        tokens.extend(seg_tokens)
    text = " ".join(t for t, _ in segments)
    raw = text[:1].upper() + text[1:] + "."
    if python_tokenize(raw) != tokens:  # a grammar bug, never bad input
        raise RuntimeError(f"caption {raw!r} tokenizes differently from its segments {tokens}")
    return Caption(raw=raw, tokens=tuple(tokens), phrases=tuple(phrases))


def describe_scene(spec: SceneSpec, layout: SceneLayout, rng: np.random.Generator,
                   num_captions: int = 5, max_attempts: int = 400) -> list[Caption]:
    """``num_captions`` different true captions (different token sequences) of the scene.

    The first caption always names every object (grouped by colour and shape); the rest are drawn from
    the relation, single-referent, list and count templates.
    """
    refs = referents(spec)
    units = [r for r in refs if any(f[0] and f[1] and not f[2] for f in r.filters)]
    ctx = {"spec": spec, "refs": refs, "triples": relation_triples(spec, layout, refs),
           "everything": next(r for r in refs if len(r.members) == len(spec.objects)),
           "units": [Referent(u.members, tuple(f for f in u.filters if f[0])) for u in units]}
    templates = [template_relation, template_describe, template_list, template_count]
    weights = [0.55 if ctx["triples"] else 0.0, 0.2, 0.15, 0.1]
    captions, seen = [], set()
    for attempt in range(max_attempts):
        template = template_list if attempt == 0 else _pick_weighted(rng, templates, weights)
        cap = assemble(template(ctx, rng))
        if cap.tokens not in seen:
            seen.add(cap.tokens)
            captions.append(cap)
            if len(captions) == num_captions:
                return captions
    raise RuntimeError(f"describe_scene: only {len(captions)} distinct captions in {max_attempts} attempts")

