"""tf.data input pipelines over the TFRecord shards.

All pipelines read the one schema (:mod:`karpalign.data.features`), shard files by the
``tf.distribute.InputContext`` (each worker reads its own files), and produce fixed shapes: R regions
(manifest ``num_regions``) and T = ``max_words`` tokens, so batches can be all-gathered across replicas and
graphs are traced once.
"""

from __future__ import annotations

import os

import tensorflow as tf

from karpalign.data import features as F
from karpalign.data.text import END_ID, PAD_ID, START_ID

AUTOTUNE = tf.data.AUTOTUNE


def image_key(image_ids):
    """Stable int64 key per image id string (used to tell captions of the same image apart from negatives)."""
    return tf.strings.to_hash_bucket_fast(image_ids, 2**62)


def _files(records_dir: str, split: str, input_context=None):
    pattern = F.shard_pattern(records_dir, split)
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no TFRecord shards match {pattern}")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) < input_context.num_input_pipelines:
            raise ValueError(f"{len(files)} shards in {pattern} cannot be split over "
                             f"{input_context.num_input_pipelines} input pipelines; extract with more shards")
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds


def _records(records_dir, split, input_context, shuffle_files, seed):
    files = _files(records_dir, split, input_context)
    if shuffle_files:
        files = files.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
    return files.interleave(lambda f: tf.data.TFRecordDataset(f, compression_type="GZIP"),
                            cycle_length=4, num_parallel_calls=AUTOTUNE, deterministic=True)


def token_ids(tokens, table, max_words: int):
    """Ragged tokens (N, None) -> ids (N, max_words) padded with <pad>, and mask (N, max_words) float."""
    tokens = tokens[:, :max_words]
    ids = tf.ragged.map_flat_values(table.lookup, tokens)
    ids = tf.cast(ids, tf.int32).to_tensor(default_value=PAD_ID, shape=[None, max_words])
    return ids, tf.cast(ids != PAD_ID, tf.float32)


def _explode_pairs(batch, table, max_words):
    """A parsed batch of images -> one element per (image, sentence) pair."""
    tokens = batch["tokens"]  # (B, S, T) ragged
    which = tokens.value_rowids()  # (N,) image index of each sentence
    ids, mask = token_ids(tokens.values, table, max_words)
    return {
        "region_features": tf.gather(batch["region_features"], which),  # (N, R, D)
        "region_mask": tf.gather(batch["region_mask"], which),  # (N, R)
        "image_key": tf.gather(image_key(batch["image_id"]), which),  # (N,)
        "token_ids": ids, "token_mask": mask,  # (N, T)
    }


def pair_dataset(records_dir: str, split: str, vocab_table, *, max_words: int, global_batch_size: int,
                 input_context=None, shuffle: bool = True, image_shuffle_buffer: int = 2000, seed: int = 0,
                 repeat: bool = True, max_images: int | None = None):
    """Image–sentence pairs for the alignment task, batched per replica (shapes from the records' manifest).

    ``max_images`` keeps the first N images (in file order, before shuffling) with all their sentences.

    Repeated (training) streams drop the last partial batch so every replica sees equal shapes; a single pass
    (evaluation) keeps it, so no example is left out.
    """
    manifest = F.read_manifest(records_dir)
    batch = (input_context.get_per_replica_batch_size(global_batch_size) if input_context else global_batch_size)
    ds = _records(records_dir, split, input_context, shuffle, seed)
    if max_images is not None:
        ds = ds.take(_check_max_images(max_images))
    if repeat:
        ds = ds.repeat()
    if shuffle:
        ds = ds.shuffle(image_shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(64).map(lambda s: F.parse_examples(s, manifest.feature_dim, manifest.num_regions),
                          num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda b: _explode_pairs(b, vocab_table, max_words), num_parallel_calls=AUTOTUNE).unbatch()
    if shuffle:
        ds = ds.shuffle(max(4 * global_batch_size, 256), seed=seed + 1, reshuffle_each_iteration=True)
    return ds.batch(batch, drop_remainder=repeat).prefetch(AUTOTUNE)


def caption_dataset(records_dir: str, split: str, vocab_table, *, max_words: int, global_batch_size: int,
                    input_context=None, shuffle: bool = True, image_shuffle_buffer: int = 2000, seed: int = 0,
                    repeat: bool = True, max_images: int | None = None):
    """(image vector, caption) pairs for the generator: region 0 of each example is its image vector.

    For full-image records region 0 is the full frame; region-snippet records hold one region. Inputs are
    ``<start> w1 .. wn`` and targets ``w1 .. wn <end>`` (both max_words + 1 long).
    """
    pairs = pair_dataset(records_dir, split, vocab_table, max_words=max_words,
                         global_batch_size=global_batch_size, input_context=input_context,
                         shuffle=shuffle, image_shuffle_buffer=image_shuffle_buffer, seed=seed, repeat=repeat,
                         max_images=max_images)
    return pairs.map(to_caption_batch, num_parallel_calls=AUTOTUNE)


def to_caption_batch(pairs):
    ids, mask = pairs["token_ids"], pairs["token_mask"]  # (B, T)
    n = tf.shape(ids)[0]
    lengths = tf.cast(tf.reduce_sum(mask, 1), tf.int32)
    inputs = tf.concat([tf.fill([n, 1], START_ID), ids], axis=1)  # (B, T+1)
    targets = tf.concat([ids, tf.fill([n, 1], PAD_ID)], axis=1)
    targets = tf.tensor_scatter_nd_update(targets, tf.stack([tf.range(n), lengths], 1), tf.fill([n], END_ID))
    return {"image": pairs["region_features"][:, 0], "tokens": inputs, "targets": targets,
            "target_mask": tf.cast(targets != PAD_ID, tf.float32), "image_key": pairs["image_key"]}


def image_dataset(records_dir: str, split: str, *, batch_size: int = 64, max_images: int | None = None):
    """Parsed images in file order (for evaluation, embedding and alignment), not repeated.

    ``max_images`` keeps the first N images of the split (the last batch may be short). Shapes come from the
    records' manifest.
    """
    manifest = F.read_manifest(records_dir)
    ds = _records(records_dir, split, None, False, 0)
    if max_images is not None:
        ds = ds.take(_check_max_images(max_images))
    return ds.batch(batch_size).map(lambda s: F.parse_examples(s, manifest.feature_dim, manifest.num_regions),
                                    num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _check_max_images(max_images) -> int:
    if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
        raise ValueError(f"max_images must be an int >= 1 or None, got {max_images!r}")
    return max_images


def vocab_table(records_dir: str):
    """The in-graph lookup table of the vocabulary written next to the shards."""
    from karpalign.data.text import Vocabulary

    path = os.path.join(records_dir, F.VOCAB)
    return Vocabulary.load(path).lookup_table(path)
