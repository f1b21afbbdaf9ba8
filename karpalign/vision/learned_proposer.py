"""The learned class-agnostic region proposer: an anchor-free objectness + box head over a frozen CNN feature map.

In the spirit of FCOS (Tian et al., 2019) and CenterNet (Zhou et al., 2019); our own small implementation::

    image uint8 (H, W, 3) --prepare_image_tf--> float32 (S, S, 3) in 0..255 (bilinear, antialiased resize)
      --pixel mapping, frozen feature extractor--> (h, w, C), h = w = S / stride
      --head: head_layers x (3x3 conv, ReLU)--> objectness logit (h, w) and box distances (h, w, 4)

Every feature cell has a centre ``(cy, cx) = ((i + 0.5) / h, (j + 0.5) / w)`` in normalised image coordinates
and predicts the distances from that centre to the four sides of the object it lies on, ``exp(d)`` cells each
(top, left, bottom, right), so a box is ``[cy - t, cx - l, cy + b, cx + r]``. Its objectness is trained towards
the *centreness* of the cell in the object's box (1 at the centre, falling to 0 at the sides; FCOS), so the best
scored cell of an object is also the one whose box is most reliable.

**Targets** (:func:`proposal_targets`): a cell is positive for a ground-truth box when its centre lies inside the
box and within ``radius`` cells of the box centre (FCOS's centre sampling), or when it is the cell that holds the
box centre (so every object, however small, has one positive cell). A cell claimed by several boxes takes the
smallest. **Loss** (:func:`proposal_loss`): a quality-focal binary cross-entropy of the objectness against the
centreness targets (zero away from objects), normalised by the image's positive cells, plus a GIoU loss of the
decoded boxes at the positive cells, weighted by their centreness.

**Post-processing** (:func:`postprocess_tf`, TensorFlow ops only, batched): scores are the sigmoid of the
objectness; boxes are clipped to the image and empty ones dropped; the ``pre_nms_top_n`` best cells go through one
class-agnostic ``tf.image.combined_non_max_suppression`` (IoU ``iou_threshold``, score ``score_threshold``) that
keeps the K best; the full image ``[0, 0, 1, 1]`` is always region 0 (score 1). Output: ``boxes`` (B, 1 + K, 4)
padded with zeros, ``scores`` (B, 1 + K), ``mask`` (B, 1 + K) bool.

The Beam extraction job (:class:`karpalign.vision.proposers.LearnedRegionProposer`) and the serving graph
(:class:`karpalign.export.export_module.ExportModule`) both run :meth:`LearnedProposer.propose_tf` on the pixels
of :func:`karpalign.vision.region_features.decode_image_tf`, so serving proposes what extraction proposed.
"""

from __future__ import annotations

import copy

import keras
import numpy as np
import tensorflow as tf

FULL_IMAGE = (0.0, 0.0, 1.0, 1.0)
DEFAULT_INPUT_SIZE = 224
_MAX_LOG_DISTANCE = 4.0  # exp(4) = 55 cells: far more than any box needs; keeps exp finite on bad init
_PRIOR = 0.01  # initial objectness probability (RetinaNet's prior): few cells are objects


def prepare_image_tf(image, size: int):
    """uint8 (or any real) image (H, W, 3) -> float32 (size, size, 3) in 0..255: bilinear, antialiased resize of the
    whole image (the aspect ratio is not kept; boxes are normalised, so they are not affected)."""
    x = tf.image.resize(tf.cast(image, tf.float32), [int(size), int(size)], method="bilinear", antialias=True)
    return tf.clip_by_value(x, 0.0, 255.0)


def cell_centres(h, w):
    """(h * w, 2) float32 normalised [cy, cx] of every cell of an h x w feature map, row major."""
    ys = (tf.cast(tf.range(h), tf.float32) + 0.5) / tf.cast(h, tf.float32)
    xs = (tf.cast(tf.range(w), tf.float32) + 0.5) / tf.cast(w, tf.float32)
    cy, cx = tf.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    return tf.stack([tf.reshape(cy, [-1]), tf.reshape(cx, [-1])], axis=-1)  # (L, 2)


def decode_boxes(distances):
    """Raw distances (B, h, w, 4) [top, left, bottom, right] -> boxes (B, h * w, 4) normalised, not clipped."""
    shape = tf.shape(distances)
    h, w = shape[1], shape[2]
    centres = cell_centres(h, w)  # (L, 2)
    d = tf.exp(tf.minimum(tf.cast(distances, tf.float32), _MAX_LOG_DISTANCE))  # (B, h, w, 4) in cells
    d = tf.reshape(d, [shape[0], -1, 4])  # (B, L, 4)
    cell = tf.stack([1.0 / tf.cast(h, tf.float32), 1.0 / tf.cast(w, tf.float32)])  # (2,) cell size
    cy, cx = centres[None, :, 0], centres[None, :, 1]  # (1, L)
    return tf.stack([cy - d[..., 0] * cell[0], cx - d[..., 1] * cell[1],
                     cy + d[..., 2] * cell[0], cx + d[..., 3] * cell[1]], axis=-1)  # (B, L, 4)


def _area(b):
    return tf.maximum(b[..., 2] - b[..., 0], 0.0) * tf.maximum(b[..., 3] - b[..., 1], 0.0)


def giou(a, b):
    """Generalised IoU of box pairs (..., 4) x (..., 4) -> (...)."""
    inter = (tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
             * tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0))
    union = _area(a) + _area(b) - inter
    iou = inter / tf.maximum(union, 1e-9)
    hull = ((tf.maximum(a[..., 2], b[..., 2]) - tf.minimum(a[..., 0], b[..., 0]))
            * (tf.maximum(a[..., 3], b[..., 3]) - tf.minimum(a[..., 1], b[..., 1])))
    return iou - (hull - union) / tf.maximum(hull, 1e-9)


def proposal_targets(gt_boxes, gt_mask, h, w, radius: float = 1.5):
    """Training targets of an h x w feature map.

    Args:
      gt_boxes: (B, N, 4) normalised [ymin, xmin, ymax, xmax] ground-truth boxes, padded.
      gt_mask: (B, N) float or bool, 1 for real boxes.
      radius: centre sampling radius in cells.

    Returns (objectness target (B, L) in [0, 1]: centreness at positive cells, 0 elsewhere; assigned box (B, L, 4);
    positive (B, L) bool), with L = h * w cells in row-major order.
    """
    gt_boxes = tf.cast(gt_boxes, tf.float32)
    valid = tf.cast(gt_mask, tf.bool)  # (B, N)
    centres = cell_centres(h, w)  # (L, 2)
    cy, cx = centres[None, :, None, 0], centres[None, :, None, 1]  # (1, L, 1)
    y0, x0, y1, x1 = (gt_boxes[:, None, :, i] for i in range(4))  # (B, 1, N)
    inside = (cy > y0) & (cy < y1) & (cx > x0) & (cx < x1)  # (B, L, N)
    hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
    gy, gx = (y0 + y1) / 2, (x0 + x1) / 2  # (B, 1, N) box centres
    near = (tf.abs(cy - gy) < radius / hf) & (tf.abs(cx - gx) < radius / wf)
    row = tf.clip_by_value(tf.floor(gy * hf), 0.0, hf - 1)  # the cell holding the centre
    col = tf.clip_by_value(tf.floor(gx * wf), 0.0, wf - 1)
    centre_cell = (tf.abs(cy * hf - 0.5 - row) < 0.25) & (tf.abs(cx * wf - 0.5 - col) < 0.25)
    candidate = ((inside & near) | centre_cell) & valid[:, None, :]  # (B, L, N)
    area = tf.broadcast_to(_area(gt_boxes)[:, None, :], tf.shape(candidate))  # (B, L, N)
    area = tf.where(candidate, area, np.float32(np.inf))
    assigned = tf.argmin(area, axis=-1, output_type=tf.int32)  # (B, L) smallest candidate box
    positive = tf.reduce_any(candidate, axis=-1)  # (B, L)
    box = tf.gather(gt_boxes, assigned, batch_dims=1)  # (B, L, 4)
    cyl, cxl = centres[None, :, 0], centres[None, :, 1]  # (1, L)
    top, left = tf.maximum(cyl - box[..., 0], 0.0), tf.maximum(cxl - box[..., 1], 0.0)
    bottom, right = tf.maximum(box[..., 2] - cyl, 0.0), tf.maximum(box[..., 3] - cxl, 0.0)
    centreness = tf.sqrt(tf.minimum(top, bottom) / tf.maximum(tf.maximum(top, bottom), 1e-9)
                         * tf.minimum(left, right) / tf.maximum(tf.maximum(left, right), 1e-9))
    # The centre cell of a box smaller than a cell may lie outside it (centreness 0); it is still an object.
    centreness = tf.maximum(centreness, 0.1)
    target = tf.where(positive, centreness, 0.0)  # (B, L)
    return target, box, positive


def proposal_loss(outputs: dict, gt_boxes, gt_mask, *, radius: float = 1.5, box_weight: float = 2.0,
                  gamma: float = 2.0):
    """Per-image training loss (B,) of :meth:`LearnedProposer.call` outputs against padded ground truth.

    Quality focal loss (BCE of the objectness against the centreness target, weighted by |target - p|^gamma)
    over every cell, divided by the image's positive cells (at least 1), plus ``box_weight`` x the
    centreness-weighted mean GIoU loss of the positive cells' boxes (0 for an image without boxes).
    """
    logits = tf.cast(outputs["objectness"], tf.float32)  # (B, h, w)
    shape = tf.shape(logits)
    h, w = shape[1], shape[2]
    logits = tf.reshape(logits, [shape[0], -1])  # (B, L)
    target, box, positive = proposal_targets(gt_boxes, gt_mask, h, w, radius)
    p = tf.sigmoid(logits)
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits)  # (B, L)
    focal = bce * tf.pow(tf.abs(target - p), gamma)
    n_pos = tf.maximum(tf.reduce_sum(tf.cast(positive, tf.float32), axis=1), 1.0)  # (B,)
    cls_loss = tf.reduce_sum(focal, axis=1) / n_pos
    pred = decode_boxes(outputs["distances"])  # (B, L, 4)
    weight = tf.where(positive, target, 0.0)  # (B, L)
    box_loss = tf.reduce_sum((1.0 - giou(pred, box)) * weight, axis=1) / tf.maximum(tf.reduce_sum(weight, 1), 1e-6)
    return cls_loss + box_weight * box_loss  # (B,)


def postprocess_tf(objectness, distances, *, k: int, score_threshold: float, iou_threshold: float,
                   pre_nms_top_n: int = 100) -> dict:
    """Head outputs -> proposals, TensorFlow ops only (see the module docstring).

    Args:
      objectness: (B, h, w) logits. distances: (B, h, w, 4) raw distances.
      k: boxes kept besides the full image.

    Returns dict: ``boxes`` (B, 1 + k, 4) normalised, full image first, zero-padded; ``scores`` (B, 1 + k), 1 for
    the full image, 0 at padding; ``mask`` (B, 1 + k) bool.
    """
    scores = tf.reshape(tf.sigmoid(tf.cast(objectness, tf.float32)), [tf.shape(objectness)[0], -1])  # (B, L)
    boxes = tf.clip_by_value(decode_boxes(distances), 0.0, 1.0)  # (B, L, 4)
    batch = tf.shape(scores)[0]
    full = tf.tile(tf.constant([[FULL_IMAGE]], tf.float32), [batch, 1, 1])  # (B, 1, 4)
    if k == 0:
        return {"boxes": full, "scores": tf.ones([batch, 1]), "mask": tf.ones([batch, 1], tf.bool)}
    nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    scores = tf.where(nonempty, scores, 0.0)
    top = tf.minimum(int(pre_nms_top_n), tf.shape(scores)[1])
    top_scores, top_index = tf.math.top_k(scores, k=top, sorted=True)  # (B, N)
    top_boxes = tf.gather(boxes, top_index, batch_dims=1)  # (B, N, 4)
    nms_boxes, nms_scores, _, valid = tf.image.combined_non_max_suppression(
        top_boxes[:, :, None, :], top_scores[:, :, None], max_output_size_per_class=int(k), max_total_size=int(k),
        iou_threshold=float(iou_threshold), score_threshold=float(score_threshold), pad_per_class=False,
        clip_boxes=False)  # (B, k, 4), (B, k), _, (B,)
    mask = tf.range(int(k))[None, :] < valid[:, None]  # (B, k)
    nms_boxes = tf.where(mask[..., None], nms_boxes, 0.0)
    nms_scores = tf.where(mask, nms_scores, 0.0)
    return {"boxes": tf.concat([full, nms_boxes], axis=1),
            "scores": tf.concat([tf.ones([batch, 1]), nms_scores], axis=1),
            "mask": tf.concat([tf.ones([batch, 1], tf.bool), mask], axis=1)}


@keras.saving.register_keras_serializable(package="karpalign")
class LearnedProposer(keras.Model):
    """Class-agnostic region proposals from a frozen feature extractor and a small trained head.

    Args:
      feature_extractor: a Keras model, network input (N, S, S, 3) -> feature map (N, h, w, C); kept frozen
        (e.g. :func:`karpalign.vision.backbones.get_feature_map_backbone`'s ``model``).
      input_size: S, the side every image is resized to (:func:`prepare_image_tf`).
      head_dim / head_layers: width and depth of the 3x3 conv tower shared by the two outputs.
      pixel_scale / pixel_offset: the extractor's pixel mapping ``x * scale + offset`` of 0..255 values.
      backbone_name: the spec the extractor was made from (provenance only).
      k / score_threshold / iou_threshold / pre_nms_top_n: post-processing defaults (:func:`postprocess_tf`).

    ``call(images)``: float32 (B, S, S, 3) pixels in 0..255 -> ``{"objectness": (B, h, w) logits,
    "distances": (B, h, w, 4)}``. :meth:`propose_tf` adds the post-processing.
    """

    def __init__(self, feature_extractor, input_size: int = DEFAULT_INPUT_SIZE, head_dim: int = 64,
                 head_layers: int = 2, pixel_scale: float = 1.0, pixel_offset: float = 0.0, backbone_name: str = "",
                 k: int = 19, score_threshold: float = 0.05, iou_threshold: float = 0.5, pre_nms_top_n: int = 100,
                 **kwargs):
        super().__init__(**kwargs)
        for key, value, low in (("input_size", input_size, 16), ("head_dim", head_dim, 1),
                                ("head_layers", head_layers, 0), ("k", k, 0), ("pre_nms_top_n", pre_nms_top_n, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"LearnedProposer: {key} must be an int >= {low}, got {value!r}")
        if not 0.0 <= float(score_threshold) < 1.0:
            raise ValueError(f"LearnedProposer: score_threshold must be in [0, 1), got {score_threshold!r}")
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"LearnedProposer: iou_threshold must be in (0, 1], got {iou_threshold!r}")
        self.feature_extractor = feature_extractor
        self.feature_extractor.trainable = False
        self.input_size, self.head_dim, self.head_layers = int(input_size), int(head_dim), int(head_layers)
        self.pixel_scale, self.pixel_offset = float(pixel_scale), float(pixel_offset)
        self.backbone_name = backbone_name
        self.k, self.score_threshold, self.iou_threshold = int(k), float(score_threshold), float(iou_threshold)
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.tower = [keras.layers.Conv2D(self.head_dim, 3, padding="same", activation="relu", name=f"head_conv{i}")
                      for i in range(self.head_layers)]
        self.objectness_conv = keras.layers.Conv2D(
            1, 1, name="objectness", bias_initializer=keras.initializers.Constant(float(np.log(_PRIOR / (1 - _PRIOR)))))
        self.distance_conv = keras.layers.Conv2D(4, 1, name="distances", kernel_initializer="zeros",
                                                 bias_initializer=keras.initializers.Constant(1.0))

    def call(self, images, training=False):
        x = tf.cast(images, tf.float32) * np.float32(self.pixel_scale) + np.float32(self.pixel_offset)
        x = self.feature_extractor(x, training=False)  # (B, h, w, C), frozen (batch norm in inference mode)
        for conv in self.tower:
            x = conv(x)  # (B, h, w, head_dim)
        return {"objectness": self.objectness_conv(x)[..., 0],  # (B, h, w)
                "distances": self.distance_conv(x)}  # (B, h, w, 4)

    def propose_tf(self, images, *, k: int | None = None, score_threshold: float | None = None,
                   iou_threshold: float | None = None) -> dict:
        """Prepared images (B, S, S, 3) float 0..255 (:func:`prepare_image_tf`) -> the dict of
        :func:`postprocess_tf` (``boxes`` (B, 1 + k, 4), ``scores``, ``mask``); settings default to the model's."""
        out = self(images, training=False)
        return postprocess_tf(out["objectness"], out["distances"], k=self.k if k is None else int(k),
                              score_threshold=self.score_threshold if score_threshold is None else score_threshold,
                              iou_threshold=self.iou_threshold if iou_threshold is None else iou_threshold,
                              pre_nms_top_n=self.pre_nms_top_n)

    def get_config(self):
        config = super().get_config()
        config.update({
            "feature_extractor": keras.saving.serialize_keras_object(self.feature_extractor),
            "input_size": self.input_size, "head_dim": self.head_dim, "head_layers": self.head_layers,
            "pixel_scale": self.pixel_scale, "pixel_offset": self.pixel_offset, "backbone_name": self.backbone_name,
            "k": self.k, "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
            "pre_nms_top_n": self.pre_nms_top_n,
        })
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Deserializing consumes the nested dict; the caller's config stays as it was.
        config["feature_extractor"] = keras.saving.deserialize_keras_object(copy.deepcopy(config["feature_extractor"]))
        return cls(**config)


def build_learned_proposer(backbone: str = "efficientnet_lite0", stride: int = 8, **kwargs) -> LearnedProposer:
    """A new (untrained head) :class:`LearnedProposer` over the frozen feature map of backbone spec ``backbone``
    (:func:`karpalign.vision.backbones.get_feature_map_backbone`), built on one blank image."""
    from karpalign.vision.backbones import get_feature_map_backbone

    fm = get_feature_map_backbone(backbone, stride)
    model = LearnedProposer(fm.model, pixel_scale=float(fm.pixel_scale), pixel_offset=float(fm.pixel_offset),
                            backbone_name=fm.name, **kwargs)
    model(tf.zeros([1, model.input_size, model.input_size, 3]))
    return model
