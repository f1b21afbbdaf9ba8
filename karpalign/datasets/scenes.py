"""Synthetic captioned scenes, part 1: the world's vocabulary, scene specs, sampling and rendering.

A scene is a plain, picklable description (:class:`SceneSpec`): a background and 1-4 coloured shapes with
centre, size and exact RGB. All randomness lives in :func:`sample_scene`, which draws from a NumPy
``Generator`` the caller seeds; :func:`render_scene` is a pure function of the spec, so the same spec always
gives the same pixels (and, through libjpeg, the same JPEG bytes).

Objects are painted in list order, so later objects cover earlier ones (partial occlusion). Sampling keeps
at least ``min_visible`` of every object's pixels uncovered, so every caption stays true to what is visible.
:func:`scene_layout` returns the per-object masks and the boxes: each box is tight around the object's
*visible* pixels, normalised ``[ymin, xmin, ymax, xmax]`` with pixel-edge coordinates (a box covering
columns 10..19 of a 100-pixel image has ``xmin = 0.10`` and ``xmax = 0.20``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# The world. Colours are saturated and backgrounds neutral, so an object's colour word is never ambiguous
# against its background. Size is the circumradius as a fraction of the image side.
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon")
COLOURS = {
    "red": (205, 40, 40),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 35),
    "green": (45, 160, 65),
    "blue": (40, 85, 215),
    "purple": (135, 55, 185),
    "pink": (245, 125, 190),
    "brown": (120, 75, 35),
}
SIZES = {"small": 0.065, "medium": 0.10, "large": 0.15}
BACKGROUND_KINDS = ("plain", "stripes", "checker", "noise", "gradient")

# Plain backgrounds are named in captions ("on a beige background"); textured ones use two close tones of
# one neutral family and are named by texture only.
PLAIN_BACKGROUNDS = {
    "white": (242, 242, 242),
    "grey": (172, 172, 172),
    "dark grey": (66, 66, 66),
    "beige": (224, 208, 176),
}
TEXTURE_TONES = (
    ((236, 236, 236), (198, 198, 198)),
    ((98, 98, 98), (62, 62, 62)),
    ((228, 214, 186), (194, 178, 148)),
)

_COLOUR_JITTER = 12       # +- per channel, so pixels of one colour name are not all identical
_RADIUS_JITTER = 0.10     # +- fraction of the nominal radius
_NOISE_AMPLITUDE = 28     # +- grey levels of the noise texture


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """One shape: its names (what captions say) and its geometry in pixels (what gets drawn)."""

    shape: str
    colour: str
    size: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    radius: float


@dataclasses.dataclass(frozen=True)
class BackgroundSpec:
    """``kind`` is one of BACKGROUND_KINDS; ``name`` is the colour word of a plain background (else None).

    ``tones`` holds one RGB colour (plain, noise base) or two (stripes, checker, gradient ends).
    ``period`` is the stripe / checker cell width in pixels, ``orientation`` the stripe or gradient
    direction ("horizontal", "vertical", "diagonal"), ``noise_seed`` seeds the noise texture.
    """

    kind: str
    tones: tuple[tuple[int, int, int], ...]
    name: str | None = None
    period: int = 0
    orientation: str = "horizontal"
    noise_seed: int = 0


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """A square ``image_size`` x ``image_size`` scene; objects are painted in order (later on top)."""

    image_size: int
    background: BackgroundSpec
    objects: tuple[ObjectSpec, ...]


@dataclasses.dataclass
class SceneLayout:
    """What the renderer produced, per object i (all masks are (S, S) bool).

    ``full[i]``: the whole shape; ``visible[i]``: the part not covered by later objects;
    ``boxes[i]``: normalised [ymin, xmin, ymax, xmax] tight around ``visible[i]``;
    ``visible_fraction[i]``: visible / full pixel count; ``occludes[i][j]``: object i is painted after j and
    covers some of j's pixels (i is "in front of" j).
    """

    full: list[np.ndarray]
    visible: list[np.ndarray]
    boxes: list[list[float]]
    visible_fraction: list[float]
    occludes: list[list[bool]]


# ----------------------------------------------------------------------------------------------------------
# Geometry: every shape is a polygon (or a circle) around a centre with circumradius r.

def _regular_polygon(cx: float, cy: float, r: float, n: int, start_deg: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(math.radians(start_deg + 360.0 * k / n)),
             cy + r * math.sin(math.radians(start_deg + 360.0 * k / n))) for k in range(n)]


def shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices (x, y) in pixels for ``shape``; circles return their bounding square's corners."""
    if shape == "circle":
        return [(cx - r, cy - r), (cx + r, cy + r)]
    if shape == "square":
        h = 0.78 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # upright, shifted down so its bounding box is centred on (cx, cy)
        return _regular_polygon(cx, cy + 0.25 * r, r, 3, -90.0)
    if shape == "star":  # five points, inner radius 0.45 r
        outer = _regular_polygon(cx, cy, r, 5, -90.0)
        inner = _regular_polygon(cx, cy, 0.45 * r, 5, -54.0)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "diamond":  # taller than wide, so it never looks like a tilted square
        return [(cx, cy - r), (cx + 0.68 * r, cy), (cx, cy + r), (cx - 0.68 * r, cy)]
    if shape == "cross":  # a plus sign with arms 0.6 r wide
        a, w = r * 0.85, r * 0.3
        return [(cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w), (cx + a, cy + w),
                (cx + w, cy + w), (cx + w, cy + a), (cx - w, cy + a), (cx - w, cy + w), (cx - a, cy + w),
                (cx - a, cy - w), (cx - w, cy - w)]
    if shape == "hexagon":  # flat top and bottom
        return _regular_polygon(cx, cy, r, 6, 0.0)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _extent(obj: ObjectSpec, image_size: int) -> tuple[slice, slice]:
    """Row and column slices that contain every pixel of the object (its circumscribed square)."""
    lo_x, hi_x = max(0, int(obj.cx - obj.radius) - 1), min(image_size, int(obj.cx + obj.radius) + 2)
    lo_y, hi_y = max(0, int(obj.cy - obj.radius) - 1), min(image_size, int(obj.cy + obj.radius) + 2)
    return slice(lo_y, hi_y), slice(lo_x, hi_x)


def object_mask(obj: ObjectSpec, image_size: int) -> np.ndarray:
    """(S, S) bool mask of the pixels the object paints (before occlusion)."""
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    outline = shape_outline(obj.shape, obj.cx, obj.cy, obj.radius)
    if obj.shape == "circle":
        draw.ellipse(outline, fill=255)
    else:
        draw.polygon(outline, fill=255)
    return np.asarray(canvas) > 0


# ----------------------------------------------------------------------------------------------------------
# Rendering: background array, then objects painted in order through their masks.

def _tones_u8(bg: BackgroundSpec) -> np.ndarray:
    return np.asarray(bg.tones, dtype=np.uint8)  # (T, 3)


def _diagonal(line: np.ndarray, s: int) -> np.ndarray:
    """(S, S, 3) image whose row r is ``line[r : r + S]``: a pattern constant along anti-diagonals."""
    windows = np.lib.stride_tricks.sliding_window_view(line, s, axis=0)  # (len - S + 1, 3, S)
    return np.ascontiguousarray(windows[:s].transpose(0, 2, 1))  # (S, S, 3)


def _oriented(line: np.ndarray, s: int, orientation: str) -> np.ndarray:
    """Spreads a colour line (>= 2S - 1, 3) over the image: constant along rows, columns or diagonals."""
    if orientation == "horizontal":  # horizontal bands: colour changes down the rows
        return np.ascontiguousarray(np.broadcast_to(line[:s, None, :], (s, s, 3)))
    if orientation == "vertical":
        return np.ascontiguousarray(np.broadcast_to(line[None, :s, :], (s, s, 3)))
    if orientation == "diagonal":
        return _diagonal(line, s)
    raise ValueError(f"unknown background orientation {orientation!r}")


def render_background(bg: BackgroundSpec, image_size: int) -> np.ndarray:
    """(S, S, 3) uint8 background pixels, spread from 1-D colour lines (cheap: a few image copies)."""
    s = image_size
    tones = _tones_u8(bg)
    if bg.kind == "plain":
        return np.ascontiguousarray(np.broadcast_to(tones[0], (s, s, 3)))
    if bg.kind in ("stripes", "checker") and bg.period < 1:
        raise ValueError(f"background {bg.kind} needs period >= 1, got {bg.period}")
    band = (np.arange(2 * s) // max(bg.period, 1)) % 2  # (2S,) 0/1 per pixel along a line
    if bg.kind == "stripes":
        return _oriented(tones[band], s, bg.orientation)
    if bg.kind == "checker":
        pixels = np.empty((s, s, 3), dtype=np.uint8)
        odd_rows = band[:s] == 1  # (S,)
        pixels[~odd_rows] = tones[band[:s]]  # (S, 3) row pattern, broadcast over the even bands of rows
        pixels[odd_rows] = tones[1 - band[:s]]
        return pixels
    if bg.kind == "gradient":
        n = 2 * s - 1 if bg.orientation == "diagonal" else s
        t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]  # (n, 1)
        line = np.rint(tones[0] * (1.0 - t) + tones[1] * t).astype(np.uint8)  # (n, 3)
        return _oriented(line, s, bg.orientation)
    if bg.kind == "noise":
        rng = np.random.default_rng(bg.noise_seed)
        grain = rng.integers(-_NOISE_AMPLITUDE, _NOISE_AMPLITUDE + 1, size=(s, s, 1), dtype=np.int16)
        return np.clip(tones[0].astype(np.int16) + grain, 0, 255).astype(np.uint8)  # (S, S, 3)
    raise ValueError(f"unknown background kind {bg.kind!r}; expected one of {BACKGROUND_KINDS}")


def _box_of(mask: np.ndarray) -> list[float]:
    s_y, s_x = mask.shape
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [float(rows[0]) / s_y, float(cols[0]) / s_x, float(rows[-1] + 1) / s_y, float(cols[-1] + 1) / s_x]


def scene_layout(spec: SceneSpec) -> SceneLayout:
    """Masks, visible masks, tight visible boxes and the occlusion relation of a scene."""
    full = [object_mask(o, spec.image_size) for o in spec.objects]
    visible, occludes = [], [[False] * len(full) for _ in full]
    for i, mask in enumerate(full):
        vis = mask.copy()
        for j in range(i + 1, len(full)):
            if (full[j] & mask).any():
                occludes[j][i] = True
                vis &= ~full[j]
        visible.append(vis)
    fractions = [np.count_nonzero(v) / max(1, np.count_nonzero(m)) for v, m in zip(visible, full)]
    for i, v in enumerate(visible):
        if not v.any():
            raise ValueError(f"object {i} ({spec.objects[i].colour} {spec.objects[i].shape}) is not visible")
    return SceneLayout(full=full, visible=visible, boxes=[_box_of(v) for v in visible],
                       visible_fraction=fractions, occludes=occludes)


def render_scene_array(spec: SceneSpec, layout: SceneLayout | None = None) -> np.ndarray:
    """(S, S, 3) uint8 pixels of the scene; pass ``layout`` to reuse masks already computed."""
    pixels = render_background(spec.background, spec.image_size)
    masks = layout.full if layout is not None else [object_mask(o, spec.image_size) for o in spec.objects]
    for obj, mask in zip(spec.objects, masks):
        rows, cols = _extent(obj, spec.image_size)
        pixels[rows, cols][mask[rows, cols]] = obj.rgb  # later objects overwrite earlier ones: occlusion
    return pixels


def render_scene(spec: SceneSpec) -> Image.Image:
    """The scene as an RGB PIL image."""
    return Image.fromarray(render_scene_array(spec), mode="RGB")


# ----------------------------------------------------------------------------------------------------------
# Sampling: attributes first, then positions by rejection so that every object stays mostly visible.

def all_pairs() -> list[tuple[str, str]]:
    """Every (colour, shape) pair of the world, in a fixed order."""
    return [(c, s) for c in COLOURS for s in SHAPES]


def sample_background(rng: np.random.Generator, image_size: int) -> BackgroundSpec:
    """Plain backgrounds 40% of the time, each texture 15%."""
    kind = BACKGROUND_KINDS[rng.choice(len(BACKGROUND_KINDS), p=[0.4, 0.15, 0.15, 0.15, 0.15])]
    if kind == "plain":
        name = list(PLAIN_BACKGROUNDS)[rng.integers(len(PLAIN_BACKGROUNDS))]
        return BackgroundSpec(kind="plain", tones=(PLAIN_BACKGROUNDS[name],), name=name)
    tones = TEXTURE_TONES[rng.integers(len(TEXTURE_TONES))]
    if rng.integers(2):
        tones = (tones[1], tones[0])
    orientation = ("horizontal", "vertical", "diagonal")[rng.integers(3)]
    period = max(2, int(round(image_size * rng.uniform(0.03, 0.09))))
    if kind == "noise":
        mid = tuple(int((a + b) // 2) for a, b in zip(*tones))
        return BackgroundSpec(kind="noise", tones=(mid,), noise_seed=int(rng.integers(2**31)))
    return BackgroundSpec(kind=kind, tones=tones, period=period, orientation=orientation)


def _sample_attributes(rng: np.random.Generator, n: int, pairs: Sequence[tuple[str, str]],
                       required_pair: tuple[str, str] | None,
                       duplicate_prob: float) -> list[tuple[str, str, str]]:
    """n (colour, shape, size) triples; some repeat an earlier colour-shape so counted plurals occur."""
    size_names = list(SIZES)
    attrs: list[tuple[str, str, str]] = []
    for k in range(n):
        if k > 0 and rng.random() < duplicate_prob:
            colour, shape, size = attrs[rng.integers(k)]
            if rng.random() < 0.5:
                size = size_names[rng.integers(len(size_names))]
        else:
            colour, shape = pairs[rng.integers(len(pairs))]
            size = size_names[rng.integers(len(size_names))]
        attrs.append((colour, shape, size))
    if required_pair is not None:
        slot = int(rng.integers(n))
        attrs[slot] = (required_pair[0], required_pair[1], size_names[rng.integers(len(size_names))])
    return attrs


def _jittered_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    jitter = rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, size=3).tolist()
    return tuple(min(255, max(0, c + j)) for c, j in zip(COLOURS[colour], jitter))


def _place(rng: np.random.Generator, image_size: int, attrs: list[tuple[str, str, str]],
           required_slot: int | None, min_visible: float, tries: int) -> list[ObjectSpec] | None:
    """Places objects in order; an object that cannot be placed is dropped (None if it was required)."""
    placed: list[ObjectSpec] = []
    areas: list[int] = []
    visible: list[np.ndarray] = []
    for k, (colour, shape, size) in enumerate(attrs):
        radius = SIZES[size] * image_size * rng.uniform(1.0 - _RADIUS_JITTER, 1.0 + _RADIUS_JITTER)
        rgb = _jittered_rgb(rng, colour)
        lo, hi = radius + 1.0, image_size - radius - 1.0
        for _ in range(tries):
            cx, cy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
            obj = ObjectSpec(shape, colour, size, rgb, cx, cy, float(radius))
            mask = object_mask(obj, image_size)
            uncovered = [v & ~mask for v in visible]
            if mask.any() and all(np.count_nonzero(u) >= min_visible * a for u, a in zip(uncovered, areas)):
                placed.append(obj)
                areas.append(np.count_nonzero(mask))
                visible = uncovered + [mask]
                break
        else:
            if k == required_slot:
                return None
    return placed


def sample_scene(rng: np.random.Generator, image_size: int = 256, *,
                 pairs: Sequence[tuple[str, str]] | None = None,
                 required_pair: tuple[str, str] | None = None,
                 min_objects: int = 1, max_objects: int = 4, duplicate_prob: float = 0.3,
                 min_visible: float = 0.6) -> SceneSpec:
    """Draws a random scene.

    ``pairs`` are the (colour, shape) pairs objects may take (default: all); ``required_pair`` (which may be
    outside ``pairs``) is given to one object, used for held-out compositions. ``duplicate_prob`` is the
    chance that an object repeats an earlier object's colour and shape. Every object keeps at least
    ``min_visible`` of its pixels uncovered by later objects.
    """
    pairs = list(pairs) if pairs is not None else all_pairs()
    if not pairs:
        raise ValueError("sample_scene: no (colour, shape) pairs to draw from")
    for colour, shape in pairs + ([required_pair] if required_pair else []):
        if colour not in COLOURS or shape not in SHAPES:
            raise ValueError(f"sample_scene: unknown (colour, shape) pair {(colour, shape)!r}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"sample_scene: need 1 <= min_objects <= max_objects, "
                         f"got {min_objects}, {max_objects}")
    if not 0.0 < min_visible <= 1.0:
        raise ValueError(f"sample_scene: min_visible must be in (0, 1], got {min_visible}")
    background = sample_background(rng, image_size)
    for _ in range(100):
        n = int(rng.integers(min_objects, max_objects + 1))
        attrs = _sample_attributes(rng, n, pairs, required_pair, duplicate_prob)
        slot = next((k for k, a in enumerate(attrs) if required_pair and a[:2] == tuple(required_pair)), None)
        objects = _place(rng, image_size, attrs, slot, min_visible, tries=60)
        if objects is not None and len(objects) >= min_objects:
            return SceneSpec(image_size=image_size, background=background, objects=tuple(objects))
    raise RuntimeError(f"sample_scene: could not place {min_objects}+ objects in a {image_size}px image")
