"""The propose task: trains the learned class-agnostic region proposer (``karpalign-train --task propose``).

It runs in the shared loop (:func:`karpalign.training.loop.train`: strategies, checkpoints and resume, TensorBoard,
progress, the best validation checkpoint) like the other tasks. Its data are images with boxes, read by
:func:`karpalign.data.records.read_box_dataset` from ``data.dataset`` (the scenes' ``dataset.json``, a COCO
``instances_*.json`` with ``data.image_root``): the train split trains, the val split of ``data.val_dataset`` (or of
``data.dataset`` when that is empty) validates. tf.data reads every image file and decodes it with the
region-feature path's decoder (:func:`karpalign.vision.region_features.decode_image_tf`), so the proposer trains on
the pixels extraction and serving give it.

Augmentation (deterministic: stateless, seeded by ``train.seed`` and the example's position in the stream, so a
resumed run sees exactly the batches it would have seen): a horizontal flip with probability 1/2 and, with
probability 1/2, a lower resolution (the image shrunk to 45-100% of its size before the resize to the model's
input), so images smaller than the input size look like the ones it was trained on.

Validation: recall of the ground-truth boxes by the top ``extract.regions`` proposals (full image included) at
IoU 0.5 and 0.7 on up to ``train.val_max_images`` images; the score is their mean.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from karpalign.config import Config
from karpalign.data.records import read_box_dataset
from karpalign.training.loop import Task
from karpalign.training.run_dir import RunDir
from karpalign.vision.learned_proposer import build_learned_proposer, prepare_image_tf, proposal_loss
from karpalign.vision.region_features import decode_image_tf

VAL_BATCH = 16
VAL_CACHE_BYTES = 256 << 20  # prepared validation images are kept in memory up to this size
LOW_RESOLUTION = (0.45, 1.0)  # the range of the low-resolution augmentation's shrink factor


def box_arrays(records, where: str):
    """Records -> (paths (M,) str, boxes (M, N, 4) float32 zero-padded, counts (M,) int32); N >= 1."""
    if not records:
        raise ValueError(f"{where}: no images with boxes")
    n = max(1, max(len(r.boxes or []) for r in records))
    boxes = np.zeros((len(records), n, 4), np.float32)
    counts = np.zeros((len(records),), np.int32)
    for i, r in enumerate(records):
        b = np.asarray(r.boxes or [], np.float32).reshape(-1, 4)
        boxes[i, :len(b)], counts[i] = b, len(b)
    return np.array([r.path for r in records]), boxes, counts


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def read_image(path):
    """Image file -> uint8 (H, W, 3) through the region-feature decoder. One traced function per process, which
    every dataset of every run calls (tracing the decoder takes seconds)."""
    return decode_image_tf(tf.io.read_file(path))


def load_image(path, size: int):
    """Image file -> float32 (size, size, 3) in 0..255: read, decode (the region-feature decoder), resize."""
    return prepare_image_tf(read_image(path), size)


def _augment(path, boxes, count, seed, size: int):
    """Decoded, possibly shrunk and flipped image (size, size, 3) and its boxes (N, 4), flipped alike."""
    image = read_image(path)  # (H, W, 3) uint8
    draws = tf.random.stateless_uniform([3], seed=seed)  # flip?, shrink?, shrink factor
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    factor = LOW_RESOLUTION[0] + (LOW_RESOLUTION[1] - LOW_RESOLUTION[0]) * draws[2]
    small = tf.maximum(tf.cast(tf.round(hw * factor), tf.int32), 8)
    pixels = tf.cond(draws[1] < 0.5,
                     lambda: tf.image.resize(tf.cast(image, tf.float32), small, antialias=True),
                     lambda: tf.cast(image, tf.float32))
    pixels = prepare_image_tf(pixels, size)  # (S, S, 3)
    flip = draws[0] < 0.5
    pixels = tf.cond(flip, lambda: tf.image.flip_left_right(pixels), lambda: pixels)
    flipped = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=-1)
    mask = tf.range(tf.shape(boxes)[0]) < count  # (N,)
    boxes = tf.where(flip & mask[:, None], flipped, boxes)
    return pixels, boxes, tf.cast(mask, tf.float32)


class ProposeTask(Task):
    """The :class:`karpalign.vision.learned_proposer.LearnedProposer` (frozen CNN, trained head)."""

    name = "propose"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        d = cfg.data
        if not d.dataset:
            raise ValueError("data.dataset is not set: point it at a dataset whose records carry boxes (the scenes' "
                             "dataset.json, or a COCO instances_*.json with data.image_root)")
        root = d.image_root or None
        records = read_box_dataset(d.dataset, root, fold_restval=d.fold_restval)
        self.train_records = [r for r in records if r.split == "train"]
        if not self.train_records:
            raise ValueError(f"{d.dataset}: no train images with boxes")
        if d.val_dataset:
            val = [r for r in read_box_dataset(d.val_dataset, root, split="val") if r.split == "val"]
            val_source = d.val_dataset
        else:
            val, val_source = [r for r in records if r.split == "val"], d.dataset
        if not val:
            raise ValueError(f"{val_source}: no val images with boxes to validate the proposer on (set "
                             "data.val_dataset)")
        self.val_records = val[:cfg.train.val_max_images]
        self.k = int(cfg.extract.regions)
        self.input_size = int(cfg.model.proposer_input_size)

    def build_model(self):
        m = self.cfg.model
        return build_learned_proposer(m.proposer_backbone, m.proposer_stride, input_size=m.proposer_input_size,
                                      head_dim=m.proposer_head_dim, head_layers=m.proposer_head_layers, k=self.k,
                                      score_threshold=m.proposer_score_threshold,
                                      iou_threshold=m.proposer_iou_threshold, name="proposer")

    def dataset(self, input_context):
        paths, boxes, counts = box_arrays(self.train_records, self.cfg.data.dataset)
        per_replica = input_context.get_per_replica_batch_size(self.cfg.train.batch_size)
        seed, size = int(self.cfg.train.seed), self.input_size
        ds = tf.data.Dataset.from_tensor_slices((paths, boxes, counts))
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        ds = ds.shuffle(min(len(paths), self.cfg.train.shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
        ds = ds.repeat().enumerate()

        def load(position, element):
            path, b, count = element
            stream = tf.stack([tf.constant(seed, tf.int64), position + 1000003 * input_context.input_pipeline_id])
            pixels, b, mask = _augment(path, b, count, stream, size)
            return {"images": pixels, "boxes": b, "box_mask": mask}

        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def loss(self, model, batch, global_batch_size, training=True):
        per_image = proposal_loss(model(batch["images"], training=training), batch["boxes"], batch["box_mask"])
        return tf.reduce_sum(per_image) / global_batch_size

    def _propose_fn(self, model):
        """One traced proposal function per model (validation runs every eval_every steps)."""
        if getattr(self, "_val_model", None) is not model:
            self._val_model = model
            self._val_fn = tf.function(lambda x: model.propose_tf(x, k=self.k), reduce_retracing=True)
        return self._val_fn

    def _val_batches(self):
        """Batches (B, S, S, 3) of the validation images. The dataset is made once (tracing the decoder is slow);
        when the prepared images fit in :data:`VAL_CACHE_BYTES` they are kept after the first validation."""
        if getattr(self, "_val_cache", None) is not None:
            return self._val_cache
        if getattr(self, "_val_ds", None) is None:
            paths, _, _ = box_arrays(self.val_records, "val")
            size = self.input_size
            self._val_ds = tf.data.Dataset.from_tensor_slices(paths).map(lambda p: load_image(p, size)).batch(VAL_BATCH)
        batches = [images.numpy() for images in self._val_ds]
        if len(self.val_records) * self.input_size ** 2 * 3 * 4 <= VAL_CACHE_BYTES:
            self._val_cache = batches
        return batches

    def validate(self, model):
        from karpalign.vision.proposers import proposal_recall

        fn = self._propose_fn(model)
        proposals = []
        for images in self._val_batches():
            out = fn(tf.constant(images))
            for boxes, mask in zip(out["boxes"].numpy(), out["mask"].numpy()):
                proposals.append(boxes[mask])
        gt = [np.asarray(r.boxes, np.float64).reshape(-1, 4) for r in self.val_records]
        metrics = {}
        for iou in (0.5, 0.7):
            found, total = proposal_recall(proposals, gt, iou)
            metrics[f"recall@{self.k}_iou{iou:g}"] = found / max(total, 1)
        metrics["boxes_per_image"] = float(np.mean([len(p) for p in proposals]))
        metrics["score"] = (metrics[f"recall@{self.k}_iou0.5"] + metrics[f"recall@{self.k}_iou0.7"]) / 2
        return metrics

    def save_model(self, model, out_dir):
        RunDir(out_dir, self.name).save_model(model)
