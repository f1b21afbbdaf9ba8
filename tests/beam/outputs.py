"""Reading an extraction's outputs back for the Beam tests: records by image id, dead letters, counts."""

from __future__ import annotations

import glob
import json
import os

import numpy as np


def parse_shards(files: list[str], feature_dim: int, num_regions: int) -> dict[str, dict]:
    """GZIP TFRecord shards -> {image_id: {feature: numpy value}} (tokens as lists of strings)."""
    import tensorflow as tf

    from karpalign.data.features import parse_examples

    serialized = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    if not serialized:
        return {}
    parsed = parse_examples(tf.constant(serialized), feature_dim, num_regions)
    values = {k: (v.to_list() if isinstance(v, tf.RaggedTensor) else v.numpy()) for k, v in parsed.items()}
    out = {}
    for i, image_id in enumerate(values["image_id"]):
        record = {key: value[i] for key, value in values.items()}
        assert image_id.decode() not in out, f"image {image_id} written twice"
        out[image_id.decode()] = record
    return out


def read_local_run(out: str) -> dict:
    """A local records folder -> {"manifest", "records" (by id), "dead" (by id), "vocab", "shards"}."""
    from karpalign.data.features import read_manifest

    manifest = read_manifest(out)
    shards = sorted(glob.glob(os.path.join(out, "*.tfrecord.gz")))
    with open(os.path.join(out, manifest.dead_letters), encoding="utf-8") as f:
        dead = [json.loads(line) for line in f]
    with open(os.path.join(out, "vocab.txt"), encoding="utf-8") as f:
        vocab = f.read()
    return {"manifest": manifest, "records": parse_shards(shards, manifest.feature_dim, manifest.num_regions),
            "dead": {d["image_id"]: d for d in dead}, "dead_lines": dead, "vocab": vocab,
            "shards": [os.path.basename(s) for s in shards], "job_dir_left": os.path.exists(os.path.join(out, "_job"))}


def assert_same_records(a: dict, b: dict, *, compare_paths: bool = True) -> None:
    """Two runs' records by image id: the same ids, and per image the same split, boxes, mask, tokens and
    sentences, and features equal to float32 rounding (batches may be formed differently)."""
    assert sorted(a) == sorted(b)
    for image_id in a:
        x, y = a[image_id], b[image_id]
        assert sorted(x) == sorted(y), image_id
        for key in x:
            if key == "path" and not compare_paths:
                continue
            if key == "region_features":
                np.testing.assert_allclose(x[key], y[key], rtol=1e-5, atol=1e-6, err_msg=image_id)
            elif isinstance(x[key], np.ndarray):
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{image_id} {key}")
            else:
                assert x[key] == y[key], (image_id, key)
