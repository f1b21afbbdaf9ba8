"""Selective Search-style region proposals (after Uijlings et al., IJCV 2013), written for karpalign in numpy.

R-CNN, whose detections the paper uses as image regions, took its proposals from Selective Search. This is a
small, model-free version of it, tuned for few (K = 19) proposals per image:

1. **Over-segmentation**: Felzenszwalb & Huttenlocher's graph segmentation (``skimage.segmentation.felzenszwalb``)
   on the image, shrunk first so its longer side is at most ``max_side`` (the segmentation is the slow part,
   1-1.5 µs per pixel on our machine; boxes are normalised, so the working size does not show in the output).
2. **Hierarchical grouping**: repeatedly merge the most similar pair of *adjacent* regions until one region is
   left. Similarity is the paper's sum of three terms, each in [0, 1]:

   - colour: intersection of the two regions' colour histograms (HSV, ``bins`` bins per channel, L1-normalised);
   - size: ``1 - (size_a + size_b) / size_image`` -- small regions merge first, so the hierarchy grows evenly;
   - fill: ``1 - (size(bbox_ab) - size_a - size_b) / size_image`` -- regions that fill each other's gaps merge
     first, so merged regions stay compact.

   Every region ever created (initial segment or merge) is a candidate box. (The paper's texture term and its
   diversification over colour spaces and starting segmentations were left out: on 400 synthetic scenes
   texture histograms lowered recall and cost time, and pooling two segmentations (scales 50 and 200) did no
   better than the one at scale 50 for twice the time. HSV beat RGB histograms: 95% vs 88% recall at K = 9.)
3. **Ranking**: a region scores ``1 - s``, where ``s`` is the colour similarity at which the grouping merged it
   into its parent -- how different the region looks from what it finally had to join. An object on a
   background stays a region of its own until it is absorbed by something of another colour, so it scores
   high; pieces of one surface (background texture, an object split in two by shading) are absorbed by
   similar-looking neighbours and score low. (Selective Search itself ranks by hierarchy position, largest
   regions first, times a random factor. With the same grouping of 400 synthetic scenes, that order without the
   random factor finds 93% of the objects at K = 19 and 86% at K = 9, this score 98% and 95%, and every region
   of the hierarchy together 99%.) Ties go to the region created first. Boxes smaller than ``min_area`` or
   larger than ``max_area`` (fractions of the image; the full image is always region 0 anyway) are dropped,
   then greedy non-maximum suppression at ``iou_threshold`` (:func:`karpalign.vision.boxes.nms`) keeps the best
   ``k``.

Everything is deterministic: the same image always gives the same boxes.
"""

from __future__ import annotations

import dataclasses
import heapq

import numpy as np
from PIL import Image
from scipy import ndimage

from karpalign.vision.boxes import nms


def check_image(image, where: str = "image") -> np.ndarray:
    """Returns ``image`` as a uint8 ``(H, W, 3)`` array or raises ValueError naming ``where`` and the problem."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"{where}: segments proposer needs a uint8 (H, W, 3) RGB image, got dtype {arr.dtype} "
                         f"with shape {arr.shape}")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{where}: segments proposer needs a uint8 (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{where}: image is empty ({arr.shape[0]} x {arr.shape[1]} pixels)")
    return arr


def working_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` shrunk (aspect ratio kept) so its longer side is <= ``max_side``, by nearest-neighbour sampling.

    Nearest, not an antialiasing filter: filters blend the colours of an object and its background into a rim
    one pixel wide, the rims became segments of their own, and objects merged with them got loose boxes
    (IoU 0.7 instead of 0.98 for solid rectangles shrunk 420 -> 192 px). Felzenszwalb's Gaussian (``sigma``)
    smooths the shrunk image anyway; recall on 256 px scenes was the same with either.
    """
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))  # PIL wants (width, height)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.NEAREST))


def oversegment(image: np.ndarray, scale: float, sigma: float, min_size: int) -> np.ndarray:
    """Felzenszwalb-Huttenlocher segmentation (scikit-image) -> ``(H, W)`` int labels ``0 .. n-1``.

    ``scale``: higher means larger segments; ``sigma``: Gaussian pre-smoothing; ``min_size``: pixels a
    segment must have (smaller ones are merged into a neighbour).
    """
    from skimage.segmentation import felzenszwalb

    return felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size).astype(np.intp)  # (H, W)


def hsv_bins(image: np.ndarray, bins: int) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> ``(H, W, 3)`` bin indices ``0 .. bins-1`` of hue, saturation and value.

    Hue keeps a saturated object apart from a neutral background whatever the lighting; grey pixels get hue 0.
    """
    rgb = image.astype(np.float32)  # (H, W, 3)
    hi = rgb.max(axis=2)  # (H, W)
    span = hi - rgb.min(axis=2)  # (H, W)
    safe = np.where(span > 0, span, 1.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.where(hi == r, (g - b) / safe, np.where(hi == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.where(span > 0, (hue / 6.0) % 1.0, 0.0)  # (H, W) in [0, 1)
    sat = span / np.where(hi > 0, hi, 1.0)  # (H, W) in [0, 1]
    out = np.stack([hue, sat, hi / 256.0], axis=2) * bins  # (H, W, 3)
    return np.minimum(out.astype(np.intp), bins - 1)


def adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """``(E, 2)`` unique pairs ``a < b`` of labels that touch (4-connectivity), sorted."""
    n = int(labels.max()) + 1
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])  # left / upper pixel
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])  # right / lower neighbour
    differ = a != b
    lo, hi = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
    keys = np.unique(lo * n + hi)  # (E,)
    return np.stack([keys // n, keys % n], axis=1)  # (E, 2)


@dataclasses.dataclass
class Hierarchy:
    """Every region of one grouping: ``num_initial`` segments, then one region per merge (the last is the root).

    Attributes (N regions):
      boxes: (N, 4) int pixel boxes ``[y0, x0, y1, x1)`` of the segmented (working) image, ends exclusive.
      sizes: (N,) pixels per region.
      parent: (N,) index of the region it was merged into (-1 for the root).
      exit_similarity: (N,) colour similarity of the merge into its parent (nan for the root).
      num_initial: segments of the over-segmentation (regions ``0 .. num_initial - 1``).
      image_shape: (H, W) of the segmented image.
    """

    boxes: np.ndarray
    sizes: np.ndarray
    parent: np.ndarray
    exit_similarity: np.ndarray
    num_initial: int
    image_shape: tuple[int, int]

    def normalised_boxes(self) -> np.ndarray:
        """(N, 4) float64 ``[ymin, xmin, ymax, xmax]`` in [0, 1] (pixel-edge coordinates)."""
        h, w = self.image_shape
        return self.boxes / np.array([h, w, h, w], np.float64)


def group_regions(labels: np.ndarray, image: np.ndarray, bins: int = 25) -> Hierarchy:
    """Selective Search's hierarchical grouping of a segmentation ``labels`` (H, W) of ``image`` (H, W, 3).

    ``labels`` are ints ``0 .. n-1``, each present (as :func:`oversegment` returns them).

    Greedy: the most similar adjacent pair (colour + size + fill, see the module docstring) merges into a new
    region, which takes over both parts' neighbours, until the regions stop touching (for a segmentation of
    one image: until one region is left). Pair similarities never change while both regions exist, so a heap
    with lazily dropped stale pairs finds each best pair in O(log E); ties go to the lowest region ids.
    """
    h, w = labels.shape
    n = int(labels.max()) + 1
    total = 2 * n - 1  # n segments + at most n - 1 merges
    flat = labels.ravel()  # (P,)
    image_size = float(h * w)

    sizes = np.zeros(total)  # (N,)
    sizes[:n] = np.bincount(flat, minlength=n)
    boxes = np.zeros((total, 4))  # (N, 4) [y0, x0, y1, x1)
    for i, found in enumerate(ndimage.find_objects(labels + 1)):
        if found is None:
            raise ValueError(f"group_regions: labels must be 0 .. n-1 with every label present; {i} is missing")
        boxes[i] = found[0].start, found[1].start, found[0].stop, found[1].stop
    hist = np.zeros((total, 3 * bins))  # (N, 3 * bins) L1-normalised colour histograms
    channel_keys = (flat[:, None] * 3 + np.arange(3)) * bins + hsv_bins(image, bins).reshape(-1, 3)  # (P, 3)
    hist[:n] = np.bincount(channel_keys.ravel(), minlength=n * 3 * bins).reshape(n, 3 * bins)
    hist[:n] /= 3.0 * sizes[:n, None]

    def similarity(a, b):  # a, b: region ids or equally long id arrays (or one of each) -> (colour, total)
        colour = np.minimum(hist[a], hist[b]).sum(axis=-1)
        size = 1.0 - (sizes[a] + sizes[b]) / image_size
        bbox = ((np.maximum(boxes[a, 2], boxes[b, 2]) - np.minimum(boxes[a, 0], boxes[b, 0]))
                * (np.maximum(boxes[a, 3], boxes[b, 3]) - np.minimum(boxes[a, 1], boxes[b, 1])))
        fill = 1.0 - (bbox - sizes[a] - sizes[b]) / image_size
        return colour, colour + size + fill

    pairs = adjacent_pairs(labels)  # (E, 2)
    neighbours: list[set[int]] = [set() for _ in range(total)]
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    colour, sim = similarity(pairs[:, 0], pairs[:, 1])  # (E,), (E,)
    # Heap entries (-similarity, a, b, colour similarity); (a, b) is unique, so colour is never compared.
    heap = list(zip((-sim).tolist(), pairs[:, 0].tolist(), pairs[:, 1].tolist(), colour.tolist()))
    heapq.heapify(heap)

    alive = [True] * n + [False] * (total - n)
    parent = np.full(total, -1, np.intp)
    exit_similarity = np.full(total, np.nan)
    r = n  # id of the next merged region
    while heap:
        _, a, b, colour = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue  # a pair of a region merged earlier
        alive[a] = alive[b] = False
        alive[r] = True
        parent[a] = parent[b] = r
        exit_similarity[a] = exit_similarity[b] = colour
        sizes[r] = sizes[a] + sizes[b]
        boxes[r, :2] = np.minimum(boxes[a, :2], boxes[b, :2])
        boxes[r, 2:] = np.maximum(boxes[a, 2:], boxes[b, 2:])
        hist[r] = (hist[a] * sizes[a] + hist[b] * sizes[b]) / sizes[r]
        merged = (neighbours[a] | neighbours[b]) - {a, b}
        for k in merged:
            neighbours[k] -= {a, b}
            neighbours[k].add(r)
        neighbours[r], neighbours[a], neighbours[b] = merged, set(), set()
        if merged:
            others = sorted(merged)
            colour, sim = similarity(r, np.array(others))
            for entry in zip((-sim).tolist(), others, [r] * len(others), colour.tolist()):
                heapq.heappush(heap, entry)
        r += 1
    return Hierarchy(boxes=boxes[:r].astype(np.intp), sizes=sizes[:r].astype(np.intp), parent=parent[:r],
                     exit_similarity=exit_similarity[:r], num_initial=n, image_shape=(h, w))


def selective_search(image: np.ndarray, k: int, *, scale: float, sigma: float, min_segment: float, max_side: int,
                     min_area: float, max_area: float, iou_threshold: float,
                     bins: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best region boxes of ``image`` -> (float32 ``(k', 4)`` normalised boxes, ``(k',)`` scores).

    ``image`` uint8 (H, W, 3) (check it with :func:`check_image`); best first, ``k' <= k``; the full image is
    *not* included. ``min_segment`` is Felzenszwalb's ``min_size`` as a fraction of the working image's
    pixels; ``min_area`` / ``max_area`` bound a box's area as a fraction of the image. See the module
    docstring for the method and :class:`karpalign.vision.proposers.SegmentsProposer` (which checks the
    arguments and holds the defaults) for the parameters.
    """
    work = working_image(image, max_side)  # (h, w, 3)
    min_size = max(1, round(min_segment * work.shape[0] * work.shape[1]))
    tree = group_regions(oversegment(work, scale, sigma, min_size), work, bins)
    boxes = tree.normalised_boxes()  # (N, 4)
    scores = 1.0 - tree.exit_similarity  # (N,) nan for the root
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ok = np.isfinite(scores) & (areas >= min_area) & (areas <= max_area)
    candidates = np.flatnonzero(ok)
    order = candidates[np.lexsort((candidates, -scores[candidates]))]  # best first; ties: created first
    keep = order[nms(boxes[order], iou_threshold, k)]
    return boxes[keep].astype(np.float32).reshape(-1, 4), scores[keep].astype(np.float32)
