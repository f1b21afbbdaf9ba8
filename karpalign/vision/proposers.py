"""Region proposers, region crops and region features.

The paper describes each image by R = 20 regions: the full image plus the top K = 19 detections of an R-CNN.
Every proposer here returns a float32 array ``(R', 4)`` of normalised ``[ymin, xmin, ymax, xmax]`` boxes with
the full image ``[0, 0, 1, 1]`` FIRST and ``R' <= K + 1``; :func:`pad_boxes` pads to a fixed R with a mask.

- :class:`BoxesProposer`    boxes given with the record (e.g. the synthetic scenes' ground truth)
- :class:`GridProposer`     a fixed multi-scale grid, no model needed
- :class:`SegmentsProposer` Selective Search-style grouping of image segments, no model needed
  (:mod:`karpalign.vision.selective_search`)
- :class:`DetectorProposer` any SavedModel / TF Hub detector with TF Object Detection API outputs
- :class:`LearnedRegionProposer` the learned class-agnostic proposer of a ``karpalign-train --task propose`` run
  (:mod:`karpalign.vision.learned_proposer`)

Each proposer has ``name`` (identity string for manifests) and ``propose(image, boxes=None)``.

**In the serving graph.** ``grid`` is a constant; ``learned:`` and ``detector:`` proposers are TensorFlow code that
the export puts into the SavedModel (:data:`IN_GRAPH_KINDS`). They have ``num_regions`` (1 + K) and
``propose_encoded_tf(images)``: encoded images (B,) string -> ``boxes`` (B, 1 + K, 4) zero-padded, ``region_mask``
(B, 1 + K) float, ``box_scores`` (B, 1 + K) (1 for the full image) and ``box_classes`` (B, 1 + K) int32 (a
detector's class ids; 0 for the full image, padding and the class-agnostic learned proposer). It decodes with
:func:`karpalign.vision.region_features.decode_image_tf` and runs the same TensorFlow functions as ``propose`` on
the pixels the extraction job decodes, so serving proposes what extraction proposed. ``segments`` (NumPy /
scikit-image) and ``boxes`` (needs the dataset's annotations) cannot run in the graph.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from karpalign.vision.boxes import box_iou
from karpalign.vision.region_features import crop_regions_tf, decode_image_tf

FULL_IMAGE = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
DEFAULT_K = 19
_DETECTOR_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes")
_MAX_BOX_COORDINATE = 2.0  # a detector box coordinate beyond this is in pixels, not normalised (refused)
IN_GRAPH_KINDS = ("grid", "learned", "detector")  # proposer kinds the export can put into the serving graph


def check_boxes(boxes, where: str = "boxes") -> np.ndarray:
    """Validates normalised boxes -> float32 ``(N, 4)``; errors name ``where`` and the bad row."""
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, 4), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{where}: expected (N, 4) [ymin, xmin, ymax, xmax] boxes, got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1) | (arr < 0).any(axis=1) | (arr > 1).any(axis=1)
    bad |= (arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1])
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{where}: box {i} = {arr[i].tolist()} is not a normalised "
                         "[ymin, xmin, ymax, xmax] box "
                         "inside [0, 1] with ymin < ymax and xmin < xmax")
    return arr


def _with_full_image(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([FULL_IMAGE[None], boxes.reshape(-1, 4)], axis=0).astype(np.float32)  # (1 + N, 4)


def _check_k(k) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0:
        raise ValueError(f"K (boxes per image besides the full image) must be an int >= 0, got {k!r}")
    return int(k)


def pad_boxes(boxes, num_regions: int) -> tuple[np.ndarray, np.ndarray]:
    """``(R', 4)`` -> (``(R, 4)`` boxes padded with zeros, ``(R,)`` bool mask). Raises if R' > R."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if len(boxes) > num_regions:
        raise ValueError(f"{len(boxes)} boxes do not fit in {num_regions} regions")
    out = np.zeros((num_regions, 4), np.float32)
    out[:len(boxes)] = boxes
    mask = np.arange(num_regions) < len(boxes)
    return out, mask


class BoxesProposer:
    """Uses the boxes that come with the record (first K of them, in the record's order)."""

    def __init__(self, k: int = DEFAULT_K):
        self.k = _check_k(k)
        self.name = f"boxes|k={self.k}"

    def propose(self, image=None, boxes=None, source: str = "") -> np.ndarray:
        """``boxes`` from the record (N, 4) -> ``(1 + min(N, K), 4)``; ``image`` is not needed."""
        if boxes is None:
            raise ValueError(f"{source or 'record'}: BoxesProposer needs the record's boxes, but it has none")
        return _with_full_image(check_boxes(boxes, f"{source or 'record'} boxes")[:self.k])


def _grid_levels():
    """Yields the grid's levels, coarse to fine, each a list of (ymin, xmin, ymax, xmax) tuples."""
    yield [(0, 0, .5, 1), (.5, 0, 1, 1), (0, 0, 1, .5), (0, .5, 1, 1)]  # halves
    yield [(0, 0, .5, .5), (0, .5, .5, 1), (.5, 0, 1, .5), (.5, .5, 1, 1)]  # quadrants
    yield [(1 / 6, 1 / 6, 5 / 6, 5 / 6), (.25, .25, .75, .75)]  # centred 2/3 and 1/2
    n = 3
    while True:
        yield [(i / n, j / n, (i + 1) / n, (j + 1) / n) for i in range(n) for j in range(n)]
        n += 1


def grid_boxes(k: int = DEFAULT_K) -> np.ndarray:
    """The first ``k`` boxes of a coarse-to-fine multi-scale grid, as float32 ``(k, 4)``.

    Order: 4 halves (top, bottom, left, right), 4 quadrants, 2 centred boxes (2/3 and 1/2 of each side),
    then n x n grids for n = 3, 4, 5, ... For K = 19 that is halves + quadrants + centres + the 3 x 3 grid.
    Within a level that does not fit completely, cells nearest the image centre come first, so a cut keeps
    the layout symmetric-ish and centred (where photographers put the subject).
    """
    k = _check_k(k)
    out: list[tuple[float, ...]] = []
    levels = _grid_levels()
    while len(out) < k:
        level = next(levels)
        if len(out) + len(level) > k:
            level = sorted(level, key=lambda b: ((b[0] + b[2]) / 2 - .5) ** 2 + ((b[1] + b[3]) / 2 - .5) ** 2)
        out.extend(level[:k - len(out)])
    return np.array(out, np.float32).reshape(-1, 4)


class GridProposer:
    """A fixed multi-scale grid of K boxes (see :func:`grid_boxes`); the same for every image."""

    def __init__(self, k: int = DEFAULT_K):
        self.k = _check_k(k)
        self.name = f"grid|k={self.k}"
        self._boxes = _with_full_image(grid_boxes(self.k))  # (1 + K, 4)

    def propose(self, image=None, boxes=None, source: str = "") -> np.ndarray:
        return self._boxes.copy()


SEGMENTS_OPTIONS = ("scale", "sigma", "min_segment", "max_side", "min_area", "max_area")


def parse_segments_spec(spec: str) -> dict:
    """``"segments"`` or ``"segments|scale=80|max_side=256"`` -> the options given, as a dict of numbers.

    Options (see :class:`SegmentsProposer`): ``scale``, ``sigma``, ``min_segment``, ``max_side``, ``min_area``,
    ``max_area``. Raises ValueError naming an unknown option or a value that is not a number.
    """
    name, *parts = spec.split("|")
    if name != "segments":
        raise ValueError(f"proposer spec {spec!r} does not start with 'segments'")
    options: dict = {}
    for part in parts:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in SEGMENTS_OPTIONS:
            raise ValueError(f"proposer {spec!r}: unknown option {part!r}; use key=value with keys "
                             f"{', '.join(SEGMENTS_OPTIONS)}")
        if key in options:
            raise ValueError(f"proposer {spec!r}: option {key!r} is given twice")
        try:
            options[key] = int(value) if key == "max_side" else float(value)
        except ValueError:
            kind = "an integer" if key == "max_side" else "a number"
            raise ValueError(f"proposer {spec!r}: {key}={value!r} is not {kind}") from None
    return options


class SegmentsProposer:
    """The top K regions of a Selective Search-style grouping of Felzenszwalb segments (no model needed).

    See :mod:`karpalign.vision.selective_search` for the method. The defaults were chosen on synthetic scenes
    (``benchmarks/proposers.py``): at 128 px they find about 98% of the objects at K = 19 and 95% at K = 9
    (IoU >= 0.5), in about 35 ms per image on one busy core.

    Args:
      k: boxes per image besides the full image.
      scale / sigma: Felzenszwalb's scale (higher: larger segments) and Gaussian pre-smoothing.
      min_segment: smallest segment, as a fraction of the segmented image's pixels.
      max_side: images are shrunk for segmentation so their longer side is at most this many pixels
        (segmentation costs 1-1.5 µs per pixel; boxes are normalised, so the output does not change form).
      min_area / max_area: a box's area as a fraction of the image must lie in this range (drops specks and
        near-full-image boxes, which repeat region 0).
      iou_threshold: NMS drops a box whose IoU with a better kept box exceeds this.
    """

    def __init__(self, k: int = DEFAULT_K, scale: float = 50.0, sigma: float = 0.8, min_segment: float = 0.00125,
                 max_side: int = 192, min_area: float = 0.004, max_area: float = 0.9, iou_threshold: float = 0.5):
        self.k = _check_k(k)
        for key, value in (("scale", scale), ("sigma", sigma), ("min_segment", min_segment),
                           ("min_area", min_area), ("max_area", max_area), ("iou_threshold", iou_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"segments proposer: {key} must be a number, got {value!r}")
        checks = [("scale", scale, 0.0 < scale < np.inf, "a number > 0"),
                  ("sigma", sigma, 0.0 <= sigma < np.inf, "a number >= 0"),
                  ("min_segment", min_segment, 0.0 <= min_segment < 1.0, "in [0, 1)"),
                  ("min_area", min_area, 0.0 <= min_area < 1.0, "in [0, 1)"),
                  ("max_area", max_area, min_area < max_area <= 1.0, f"in (min_area={min_area:g}, 1]"),
                  ("iou_threshold", iou_threshold, 0.0 < iou_threshold <= 1.0, "in (0, 1]")]
        for key, value, ok, rule in checks:
            if not ok:
                raise ValueError(f"segments proposer: {key} must be {rule}, got {value!r}")
        if not isinstance(max_side, (int, np.integer)) or isinstance(max_side, bool) or max_side < 16:
            raise ValueError(f"segments proposer: max_side must be an int >= 16, got {max_side!r}")
        self.scale, self.sigma, self.min_segment = float(scale), float(sigma), float(min_segment)
        self.max_side, self.min_area, self.max_area = int(max_side), float(min_area), float(max_area)
        self.iou_threshold = float(iou_threshold)
        self.name = (f"segments|k={self.k}|scale={self.scale:g}|sigma={self.sigma:g}"
                     f"|min_segment={self.min_segment:g}|max_side={self.max_side}|min_area={self.min_area:g}"
                     f"|max_area={self.max_area:g}|iou={self.iou_threshold:g}")

    @classmethod
    def from_spec(cls, spec: str, k: int = DEFAULT_K, iou_threshold: float = 0.5) -> "SegmentsProposer":
        """From ``"segments"`` or ``"segments|key=value|..."`` (see :func:`parse_segments_spec`)."""
        return cls(k, iou_threshold=iou_threshold, **parse_segments_spec(spec))

    def detect(self, image, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        """-> (float32 ``(K', 4)`` boxes best first without the full image, ``(K',)`` scores in [0, 1])."""
        from karpalign.vision import selective_search as ss

        image = ss.check_image(image, source or "image")
        if self.k == 0:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
        return ss.selective_search(image, self.k, scale=self.scale, sigma=self.sigma, min_segment=self.min_segment,
                                   max_side=self.max_side, min_area=self.min_area, max_area=self.max_area,
                                   iou_threshold=self.iou_threshold)

    def propose(self, image, boxes=None, source: str = "") -> np.ndarray:
        """uint8 ``(H, W, 3)`` image -> float32 ``(1 + K', 4)``, full image first, K' <= K."""
        return _with_full_image(self.detect(image, source)[0])


def _detector_name(model_path: str, k: int, score_threshold: float, iou_threshold: float) -> str:
    return f"detector:{model_path}|k={k}|score={score_threshold:g}|iou={iou_threshold:g}"


class DetectorProposer:
    """Top-K boxes of an object detector: score threshold, class-agnostic NMS, then the K best.

    ``model`` is a SavedModel folder or TF Hub handle (loaded with ``tensorflow_hub.load``) that maps a uint8
    image ``[1, H, W, 3]`` to a dict with ``detection_boxes`` (1, N, 4) normalised [ymin, xmin, ymax, xmax],
    ``detection_scores`` (1, N) and ``detection_classes`` (1, N) -- the TF Object Detection API convention
    (optionally ``num_detections`` (1,): only the first that many are real). The detector runs once on a blank
    image when it is loaded, so one without these outputs is refused at once, naming the model and its outputs.
    """

    kind = "detector"

    def __init__(self, model: str, score_threshold: float = 0.3, iou_threshold: float = 0.5,
                 k: int = DEFAULT_K):
        import tensorflow_hub as hub

        if not 0.0 <= float(score_threshold) <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.k = _check_k(k)
        self.num_regions = self.k + 1
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.model_path = os.path.abspath(model) if os.path.isdir(model) else model
        try:
            self.detector = hub.load(model)
        except Exception as exc:
            raise ValueError(f"detector {model!r}: cannot load ({type(exc).__name__}: {exc})") from exc
        self.name = _detector_name(self.model_path, self.k, self.score_threshold, self.iou_threshold)
        self._check_outputs(self._run(tf.zeros([1, 32, 32, 3], tf.uint8)))

    def _run(self, batch) -> dict:
        """uint8 (1, H, W, 3) -> the detector's output dict (eager or in a graph)."""
        if callable(self.detector):
            return self.detector(batch)
        signature = self.detector.signatures["serving_default"]
        (input_name,) = signature.structured_input_signature[1]
        return signature(**{input_name: batch})

    def _check_outputs(self, out) -> None:
        if not isinstance(out, dict):
            raise ValueError(f"detector {self.model_path}: returns {type(out).__name__}, not a dict with the TF "
                             f"Object Detection API outputs {list(_DETECTOR_OUTPUTS)}")
        missing = [key for key in _DETECTOR_OUTPUTS if key not in out]
        if missing:
            raise ValueError(f"detector {self.model_path}: outputs {sorted(out)} lack {missing} (the TF Object "
                             f"Detection API outputs {list(_DETECTOR_OUTPUTS)} are needed)")

    def detections_tf(self, image) -> tuple:
        """uint8 (H, W, 3) tensor -> the K best after thresholding and NMS, padded: (boxes (K, 4), scores (K,),
        classes (K,) int32, count ()). TensorFlow ops only: extraction and the serving graph both run this."""
        out = self._run(image[None])  # (1, H, W, 3)
        self._check_outputs(out)
        boxes = tf.reshape(tf.cast(out["detection_boxes"], tf.float32), [-1, 4])  # (N, 4)
        scores = tf.reshape(tf.cast(out["detection_scores"], tf.float32), [-1])  # (N,)
        classes = tf.reshape(tf.cast(out["detection_classes"], tf.float32), [-1])  # (N,)
        if "num_detections" in out:  # OD API pads to a fixed N; only the first num_detections are real
            n = tf.cast(tf.reshape(out["num_detections"], [-1])[0], tf.int32)
            boxes, scores, classes = boxes[:n], scores[:n], classes[:n]
        normalised = tf.debugging.assert_less_equal(
            tf.reduce_max(tf.abs(boxes)), _MAX_BOX_COORDINATE,
            message=f"detector {self.model_path}: detection_boxes must be normalised [ymin, xmin, ymax, xmax] "
                    "(0..1), these look like pixels (a Model Garden export needs "
                    "task.export_config.output_normalized_coordinates=true)")
        with tf.control_dependencies([normalised]):
            boxes = tf.clip_by_value(boxes, 0.0, 1.0)
        area_ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # drop boxes clipped to nothing
        boxes, scores, classes = (tf.boolean_mask(t, area_ok) for t in (boxes, scores, classes))
        keep = tf.image.non_max_suppression(boxes, scores, max_output_size=self.k,
                                            iou_threshold=self.iou_threshold,
                                            score_threshold=self.score_threshold)  # (<= K,), best first
        count = tf.size(keep)
        pad = [[0, self.k - count]]
        return (tf.pad(tf.gather(boxes, keep), pad + [[0, 0]]), tf.pad(tf.gather(scores, keep), pad),
                tf.pad(tf.cast(tf.round(tf.gather(classes, keep)), tf.int32), pad), count)

    def detect(self, image, source: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs the detector and keeps the top K after thresholding and NMS -> (boxes, scores, classes)."""
        where = source or "image"
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{where}: detector input must be uint8 (H, W, 3), "
                             f"got {image.dtype} {image.shape}")
        _check_not_empty(image, where)
        boxes, scores, classes, count = self.detections_tf(tf.constant(image, tf.uint8))
        n = int(count)
        return boxes.numpy()[:n], scores.numpy()[:n], classes.numpy()[:n].astype(np.int64)

    def propose(self, image, boxes=None, source: str = "") -> np.ndarray:
        return _with_full_image(self.detect(image, source)[0])

    def propose_encoded_tf(self, images) -> dict:
        """Encoded images (B,) -> padded proposals (see the module docstring), the detector run image by image."""
        k = self.k

        def one(data):
            boxes, scores, classes, count = self.detections_tf(decode_image_tf(data))
            return (tf.concat([tf.constant(FULL_IMAGE[None]), boxes], 0), tf.concat([tf.ones([1]), scores], 0),
                    tf.concat([tf.zeros([1], tf.int32), classes], 0), tf.range(k + 1) <= count)

        boxes, scores, classes, mask = tf.map_fn(
            one, images, fn_output_signature=(tf.TensorSpec([k + 1, 4], tf.float32), tf.TensorSpec([k + 1], tf.float32),
                                              tf.TensorSpec([k + 1], tf.int32), tf.TensorSpec([k + 1], tf.bool)))
        return {"boxes": boxes, "region_mask": tf.cast(mask, tf.float32), "box_scores": scores, "box_classes": classes}


def _check_not_empty(image: np.ndarray, where: str) -> None:
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where}: empty image ({image.shape[0]} x {image.shape[1]} pixels)")


def _learned_name(run_dir: str, k: int, score_threshold: float, iou_threshold: float) -> str:
    return f"learned:{run_dir}|k={k}|score={score_threshold:g}|iou={iou_threshold:g}"


LEARNED_OPTIONS = ("score", "iou")


def parse_learned_spec(spec: str) -> tuple[str, dict]:
    """``"learned:RUN_DIR"`` or ``"learned:RUN_DIR|score=0.1|iou=0.6"`` -> (absolute run folder, options).

    Options override the post-processing defaults saved with the model: ``score`` (minimum box score) and
    ``iou`` (NMS IoU threshold). Raises ValueError naming a missing folder, an unknown option or a bad value.
    """
    if not spec.startswith("learned:"):
        raise ValueError(f"proposer spec {spec!r} does not start with 'learned:'")
    path, *parts = spec[len("learned:"):].split("|")
    if not path:
        raise ValueError("proposer 'learned:' needs the run folder of `karpalign-train --task propose` after the "
                         "colon")
    options: dict = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or key not in LEARNED_OPTIONS or key in options:
            raise ValueError(f"proposer {spec!r}: bad option {part!r}; use score=X and iou=Y at most once each")
        try:
            options[key] = float(value)
        except ValueError:
            raise ValueError(f"proposer {spec!r}: {key}={value!r} is not a number") from None
    if "score" in options and not 0.0 <= options["score"] < 1.0:
        raise ValueError(f"proposer {spec!r}: score must be in [0, 1), got {options['score']:g}")
    if "iou" in options and not 0.0 < options["iou"] <= 1.0:
        raise ValueError(f"proposer {spec!r}: iou must be in (0, 1], got {options['iou']:g}")
    return os.path.abspath(path), options


class LearnedRegionProposer:
    """``learned:RUN_DIR``: the :class:`~karpalign.vision.learned_proposer.LearnedProposer` of a
    ``karpalign-train --task propose`` run (loaded once; Beam workers share it through ``Shared``).

    ``k`` boxes besides the full image; ``score_threshold`` / ``iou_threshold`` default to the settings saved with
    the model (a ``learned:`` spec's ``|score=`` / ``|iou=`` options). :meth:`propose_batch` runs the network on
    many images at once; :meth:`propose` is one image.
    """

    kind = "learned"

    def __init__(self, run_dir: str, k: int = DEFAULT_K, score_threshold: float | None = None,
                 iou_threshold: float | None = None):
        from karpalign.training.run_dir import RunDir
        from karpalign.vision.learned_proposer import prepare_image_tf

        self.k = _check_k(k)
        self.num_regions = self.k + 1
        self.run_dir = os.path.abspath(run_dir)
        self.model = RunDir(self.run_dir, "propose").load_proposer()
        self.input_size = int(self.model.input_size)
        self.score_threshold = float(self.model.score_threshold if score_threshold is None else score_threshold)
        self.iou_threshold = float(self.model.iou_threshold if iou_threshold is None else iou_threshold)
        self.name = _learned_name(self.run_dir, self.k, self.score_threshold, self.iou_threshold)
        size = self.input_size
        self._prepare = tf.function(lambda image: prepare_image_tf(image, size),
                                    input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        self._proposals = tf.function(self.proposals_tf, input_signature=[tf.TensorSpec([None, size, size, 3])])

    @classmethod
    def from_spec(cls, spec: str, k: int = DEFAULT_K) -> "LearnedRegionProposer":
        path, options = parse_learned_spec(spec)
        return cls(path, k, options.get("score"), options.get("iou"))

    def proposals_tf(self, prepared) -> dict:
        """Prepared images (B, S, S, 3) -> :func:`~karpalign.vision.learned_proposer.postprocess_tf`'s dict."""
        return self.model.propose_tf(prepared, k=self.k, score_threshold=self.score_threshold,
                                     iou_threshold=self.iou_threshold)

    def propose_encoded_tf(self, images) -> dict:
        """Encoded images (B,) -> padded proposals (see the module docstring); one batched network call."""
        from karpalign.vision.learned_proposer import prepare_image_tf

        size = self.input_size
        prepared = tf.map_fn(lambda data: prepare_image_tf(decode_image_tf(data), size), images,
                             fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))  # (B, S, S, 3)
        out = self.proposals_tf(prepared)
        return {"boxes": out["boxes"], "region_mask": tf.cast(out["mask"], tf.float32), "box_scores": out["scores"],
                "box_classes": tf.zeros(tf.shape(out["scores"]), tf.int32)}

    def _check(self, image, where: str) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{where}: learned proposer input must be uint8 (H, W, 3), got {image.dtype} "
                             f"{image.shape}")
        _check_not_empty(image, where)
        return image

    def propose_batch(self, images, sources=None) -> list[np.ndarray]:
        """uint8 (H, W, 3) images (any sizes) -> one float32 (1 + K', 4) array each, full image first."""
        sources = list(sources) if sources is not None else [""] * len(images)
        if not len(images):
            return []
        prepared = np.stack([self._prepare(self._check(image, source or "image")).numpy()
                             for image, source in zip(images, sources)])  # (B, S, S, 3)
        out = self._proposals(tf.constant(prepared))
        boxes, mask = out["boxes"].numpy(), out["mask"].numpy()
        return [b[m] for b, m in zip(boxes, mask)]

    def propose(self, image, boxes=None, source: str = "") -> np.ndarray:
        """uint8 ``(H, W, 3)`` image -> float32 ``(1 + K', 4)``, full image first, K' <= K."""
        return self.propose_batch([image], [source])[0]


def get_proposer(spec: str, k: int = DEFAULT_K, score_threshold: float = 0.3, iou_threshold: float = 0.5):
    """``"boxes"``, ``"grid"``, ``"segments[|key=value...]"``, ``"detector:<SavedModel folder or hub handle>"`` or
    ``"learned:<propose run folder>[|score=X|iou=Y]"`` -> a proposer. ``iou_threshold`` is the NMS threshold of
    ``segments`` and ``detector:``; ``score_threshold`` is for ``detector:`` only (a learned proposer uses the
    settings saved with its model, or the spec's options)."""
    if spec == "boxes":
        return BoxesProposer(k)
    if spec == "grid":
        return GridProposer(k)
    if spec == "segments" or spec.startswith("segments|"):
        return SegmentsProposer.from_spec(spec, k, iou_threshold)
    if spec.startswith("detector:"):
        return DetectorProposer(spec[len("detector:"):], score_threshold, iou_threshold, k)
    if spec.startswith("learned:"):
        return LearnedRegionProposer.from_spec(spec, k)
    raise ValueError(f"unknown region proposer {spec!r}: use 'boxes', 'grid', 'segments', 'detector:<model>' or "
                     "'learned:<propose run folder>'")


def proposer_name(spec: str, k: int = DEFAULT_K, score_threshold: float = 0.3, iou_threshold: float = 0.5) -> str:
    """The ``name`` that ``get_proposer(spec, k, ...)`` would have, without loading a detector model
    (for manifests). Raises ValueError for specs :func:`get_proposer` refuses (a detector's model is not
    checked; a learned proposer's run folder is: it must be a finished ``--task propose`` run, whose config gives
    the post-processing defaults)."""
    if spec.startswith("learned:"):
        from karpalign.training.run_dir import RunDir

        path, options = parse_learned_spec(spec)
        try:
            model = RunDir(path, "propose").check().load_config().model
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        return _learned_name(path, _check_k(k), float(options.get("score", model.proposer_score_threshold)),
                             float(options.get("iou", model.proposer_iou_threshold)))
    if spec.startswith("detector:"):
        model = spec[len("detector:"):]
        return _detector_name(os.path.abspath(model) if os.path.isdir(model) else model, _check_k(k),
                              float(score_threshold), float(iou_threshold))
    return get_proposer(spec, k, score_threshold, iou_threshold).name


IN_GRAPH_HINT = "grid, learned:<karpalign-train --task propose run folder>, detector:<SavedModel folder>"


def in_graph_proposer(spec: str, k: int = DEFAULT_K, score_threshold: float = 0.3, iou_threshold: float = 0.5):
    """A proposer the export can put into the serving graph: :class:`GridProposer`, :class:`LearnedRegionProposer`
    or :class:`DetectorProposer` (arguments as :func:`get_proposer`). Any other spec (``segments``, ``boxes``)
    raises ValueError naming the kinds that can run in the graph."""
    kind = spec.split(":", 1)[0].split("|", 1)[0]
    if kind not in IN_GRAPH_KINDS:
        raise ValueError(f"proposer {spec!r} cannot run inside the serving graph; use one of: {IN_GRAPH_HINT}")
    return get_proposer(spec, k, score_threshold, iou_threshold)


def spec_from_name(name: str) -> tuple[str, int, float, float]:
    """A proposer's ``name`` (as a records manifest keeps it) -> (spec, k, score threshold, iou threshold) that
    :func:`get_proposer` rebuilds it from: ``grid|k=4`` -> ('grid', 4, ...); ``learned:/run|k=19|score=0.05|iou=0.5``
    -> ('learned:/run|score=0.05|iou=0.5', 19, ...); ``detector:/m|k=19|score=0.3|iou=0.5`` -> ('detector:/m', 19,
    0.3, 0.5). Raises ValueError for a name without ``k=``."""
    base, *parts = name.split("|")
    options = dict(part.partition("=")[::2] for part in parts)
    if "k" not in options:
        raise ValueError(f"proposer name {name!r} has no k=")
    k = int(options["k"])
    score, iou = float(options.get("score", 0.3)), float(options.get("iou", 0.5))
    if base.startswith("learned:"):
        return f"{base}|score={score:g}|iou={iou:g}", k, score, iou
    return base, k, score, iou


def proposal_recall(proposals, gt_boxes, iou_threshold: float = 0.5) -> tuple[int, int]:
    """Object recall of region proposals over images: ``proposals`` and ``gt_boxes`` are per-image sequences of
    ``(R, 4)`` / ``(n, 4)`` normalised boxes -> (ground-truth boxes that some proposal of their image overlaps
    with IoU >= ``iou_threshold``, ground-truth boxes)."""
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"proposal_recall: {len(proposals)} proposal sets for {len(gt_boxes)} images")
    found = total = 0
    for props, gt in zip(proposals, gt_boxes):
        gt = np.asarray(gt, np.float64).reshape(-1, 4)
        total += len(gt)
        if len(gt) and np.size(props):
            found += int((box_iou(gt, props) >= iou_threshold).any(axis=1).sum())
    return found, total


_CROP_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "int8", "int16", "int32", "int64", "float16", "float32",
                                            "float64"))  # what tf.image.crop_and_resize reads


def crop_regions(image, boxes, size: int) -> np.ndarray:
    """Crops and resizes every box in ONE batched ``tf.image.crop_and_resize`` call
    (:func:`karpalign.vision.region_features.crop_regions_tf`, the serving graph's crop).

    image uint8 (H, W, 3), boxes (R, 4) normalised -> float32 ``(R, size, size, 3)`` with pixel values 0..255
    (bilinear; no antialiasing, so for very large images shrink them first if aliasing matters).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"crop_regions: image must be (H, W, 3), got {image.shape}")
    boxes = check_boxes(boxes, "crop_regions boxes")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"crop_regions: size must be a positive int, got {size!r}")
    if len(boxes) == 0:
        return np.zeros((0, size, size, 3), np.float32)
    if image.dtype not in _CROP_DTYPES:
        image = image.astype(np.float32)
    # The image as it is: the kernel reads uint8 directly (a float copy costs ~30% more).
    return crop_regions_tf(image, boxes, int(size)).numpy()  # (R, size, size, 3)


def region_features(backbone, image, boxes, crop_size: int | None = None) -> np.ndarray:
    """CNN features of every region: crop (at ``crop_size``, default the backbone's input height), preprocess,
    run the backbone -> float32 ``(R, D)``. The backbone must accept ``crop_size`` x ``crop_size`` inputs."""
    crop_size = int(crop_size or backbone.input_size[0])
    crops = crop_regions(image, boxes, crop_size)  # (R, S, S, 3)
    return backbone(backbone.preprocess(crops, size=(crop_size, crop_size)))  # (R, D)
