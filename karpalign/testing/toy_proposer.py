"""Fixtures for the region proposer's tests: a tiny feature-map CNN, small box datasets and a toy detector.

- :func:`save_tiny_feature_net` a 3-layer stride-8 Keras CNN with a 4-D output (a ``keras:`` feature-map backbone)
- :func:`untrained_proposer_run`  a propose run folder with an untrained (random, seeded) head
- :func:`save_pooling_feature_net` a weightless stride-8 average-pooling "feature map"
- :func:`make_square_images`    bright squares on a dark background with their boxes (learned in seconds)
- :func:`make_box_scenes`       a few synthetic scenes (``karpalign.datasets.generate_scenes``) with their boxes
- :func:`write_coco_instances`  a small COCO ``instances_*.json`` with PNG images, in that format exactly
- :func:`save_toy_detector`     a SavedModel with the TF Object Detection API outputs whose detections depend on
                                the image and on a variable (so a composed export must restore it)
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

TINY_STRIDE = 8


def save_tiny_feature_net(path: str, channels: int = 16, seed: int = 0) -> str:
    """A randomly initialised (seeded) fully convolutional net, (N, H, W, 3) -> (N, H/8, W/8, channels); use it as
    ``keras:PATH|range=0,1``."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu")(x)
    keras.Model(inputs, x, name="tiny_feature_net").save(path)
    return path


def untrained_proposer_run(out_dir: str, net_path: str, input_size: int = 32, k: int = 3, seed: int = 0) -> str:
    """A ``karpalign-train --task propose`` run folder (config.yaml + proposer.keras) with an untrained head over
    the stride-8 net of :func:`save_tiny_feature_net`: its boxes are about a feature cell wide (so NMS keeps K of
    them) and scores and sizes vary with the image (random head weights, seeded). Score threshold 0: always K."""
    from karpalign.config import load_config, save_config
    from karpalign.training.run_dir import RunDir
    from karpalign.vision.learned_proposer import build_learned_proposer

    spec = f"keras:{net_path}|range=0,1"
    cfg = load_config(None, ["train.task=propose", f"model.proposer_backbone={spec}", "model.proposer_stride=8",
                             f"model.proposer_input_size={input_size}", f"extract.regions={k}",
                             "model.proposer_score_threshold=0.0"])
    save_config(cfg, out_dir)
    model = build_learned_proposer(spec, 8, input_size=input_size, head_dim=4, head_layers=1, k=k,
                                   score_threshold=0.0)
    rng = np.random.default_rng(seed)
    for conv, bias in ((model.objectness_conv, 0.5), (model.distance_conv, -0.7)):
        conv.kernel.assign(rng.normal(0, 0.3, conv.kernel.shape).astype(np.float32))
        conv.bias.assign(np.full(conv.bias.shape, bias, np.float32))
    RunDir(out_dir, "propose").save_model(model)
    return out_dir


def save_pooling_feature_net(path: str) -> str:
    """A weightless stride-8 "feature map": 8 x 8 average pooling of the pixels, (N, H, W, 3) -> (N, H/8, W/8, 3).
    With it a proposer head learns the toy squares of :func:`make_square_images` in a few dozen steps."""
    import keras

    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.AveragePooling2D(8, padding="same")(inputs), name="pooling_net").save(path)
    return path


def make_square_images(out_dir: str, num_images: int = 64, image_size: int = 48, seed: int = 0,
                       val_fraction: float = 0.25) -> str:
    """Images of one or two bright squares (side 30-50% of the image) on a dark background, as PNGs and a
    Karpathy-format ``dataset.json`` with their boxes (train and val splits) -> the json's path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images_dir = os.path.join(out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    entries = []
    n_val = int(round(num_images * val_fraction))
    for i in range(num_images):
        pixels = np.full((image_size, image_size, 3), 30, np.uint8)
        boxes = []
        for _ in range(1 + int(rng.random() < 0.3)):
            side = int(rng.integers(int(0.3 * image_size), int(0.5 * image_size) + 1))
            y, x = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
            colour = rng.integers(150, 256, size=3)
            pixels[y:y + side, x:x + side] = colour
            boxes.append([y / image_size, x / image_size, (y + side) / image_size, (x + side) / image_size])
        name = f"{i:04d}.png"
        Image.fromarray(pixels).save(os.path.join(images_dir, name))
        entries.append({"filepath": "images", "filename": name, "imgid": i, "split": "val" if i < n_val else "train",
                        "boxes": boxes, "sentences": [{"raw": "a bright square", "tokens": ["a", "bright", "square"]}]})
    path = os.path.join(out_dir, "dataset.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"dataset": "squares", "images": entries}, f)
    return path


def make_box_scenes(out_dir: str, num_images: int = 48, image_size: int = 64, seed: int = 0,
                    val_fraction: float = 0.25) -> str:
    """Synthetic scenes with train and val splits only -> the path of their ``dataset.json`` (boxes included)."""
    from karpalign.datasets import generate_scenes

    fractions = {"train": 1.0 - val_fraction, "val": val_fraction, "test": 0.0, "test_novel": 0.0}
    summary = generate_scenes(out_dir, num_images, seed=seed, image_size=image_size, workers=1,
                              split_fractions=fractions, captions_per_image=1)
    return summary["dataset_json"]


def write_coco_instances(out_dir: str, name: str = "instances_val2017.json") -> tuple[str, str, dict]:
    """Three PNG images and a COCO ``instances`` file for them -> (json path, image folder, expected).

    Image 1 (40 x 30) has two objects and a crowd region; image 2 (20 x 20) has one object whose box runs past
    the image edge (clipped) and one of zero width (skipped); image 3 has no annotations. ``expected`` maps each
    file name to its normalised [ymin, xmin, ymax, xmax] boxes and category ids.
    """
    from PIL import Image

    images_dir = os.path.join(out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    sizes = {1: (40, 30), 2: (20, 20), 3: (16, 24)}  # id -> (width, height)
    files = {}
    for image_id, (w, h) in sizes.items():
        files[image_id] = f"{image_id:012d}.png"
        pixels = np.full((h, w, 3), 40 * image_id, np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        with open(os.path.join(images_dir, files[image_id]), "wb") as f:
            f.write(buf.getvalue())
    annotations = [
        {"id": 10, "image_id": 1, "bbox": [4.0, 3.0, 16.0, 12.0], "category_id": 18, "iscrowd": 0, "area": 192.0},
        {"id": 11, "image_id": 1, "bbox": [20, 15, 20, 15], "category_id": 1, "iscrowd": 0, "area": 300.0},
        {"id": 12, "image_id": 1, "bbox": [0, 0, 40, 30], "category_id": 1, "iscrowd": 1, "area": 1200.0},
        {"id": 13, "image_id": 2, "bbox": [10, 5, 20, 10], "category_id": 3, "iscrowd": 0, "area": 200.0},
        {"id": 14, "image_id": 2, "bbox": [5, 5, 0, 4], "category_id": 3, "iscrowd": 0, "area": 0.0},
    ]
    data = {"info": {"description": "karpalign test"}, "licenses": [],
            "images": [{"id": i, "file_name": files[i], "width": w, "height": h} for i, (w, h) in sizes.items()],
            "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                           {"id": 3, "name": "car", "supercategory": "vehicle"},
                           {"id": 18, "name": "dog", "supercategory": "animal"}]}
    path = os.path.join(out_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    expected = {files[1]: ([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], [18, 1]),
                files[2]: ([[0.25, 0.5, 0.75, 1.0]], [3]),
                files[3]: ([], [])}
    return path, images_dir, expected


def save_toy_detector(path: str, with_outputs: bool = True, box_scale: float = 1.0) -> str:
    """A SavedModel detector: uint8 (1, H, W, 3) -> ``detection_boxes`` (1, 5, 4), ``detection_scores`` (1, 5),
    ``detection_classes`` (1, 5), ``num_detections`` (1,) -- or, with ``with_outputs=False``, only ``boxes`` and
    ``scores`` (a detector the proposer must refuse).

    Its five fixed boxes are the four quadrants and the centre; box i scores ``sigmoid(w * (mean brightness of
    the box - 0.5) + b_i)`` with variables ``w`` and ``b``, so detections depend on the image and on weights the
    export has to restore. Classes are 1..5; only the first four detections are reported as real. ``box_scale``
    multiplies the reported boxes (e.g. 100: boxes that look like pixel coordinates, which must be refused).
    """
    import tensorflow as tf

    boxes = tf.constant([[0, 0, .5, .5], [0, .5, .5, 1], [.5, 0, 1, .5], [.5, .5, 1, 1], [.25, .25, .75, .75]],
                        tf.float32)

    class ToyDetector(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(8.0)
            self.b = tf.Variable([0.0, 0.1, 0.2, 0.3, 0.4])

        @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
        def __call__(self, images):
            x = tf.cast(images, tf.float32) / 255.0
            crops = tf.image.crop_and_resize(x, boxes, tf.zeros([5], tf.int32), (8, 8))  # (5, 8, 8, 3)
            brightness = tf.reduce_mean(crops, axis=[1, 2, 3])  # (5,)
            scores = tf.sigmoid(self.w * (brightness - 0.5) + self.b)  # (5,)
            order = tf.argsort(scores, direction="DESCENDING")
            if not with_outputs:
                return {"boxes": tf.gather(boxes, order)[None], "scores": tf.gather(scores, order)[None]}
            return {"detection_boxes": tf.gather(boxes, order)[None] * box_scale,
                    "detection_scores": tf.gather(scores, order)[None],
                    "detection_classes": tf.cast(order + 1, tf.float32)[None],
                    "num_detections": tf.constant([4.0])}

    module = ToyDetector()
    tf.saved_model.save(module, path)
    return path
