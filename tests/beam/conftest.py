"""Shared fixtures for the Beam extraction tests: a small scenes dataset, a tiny saved Keras CNN, and a copy
of the dataset with one image of every kind of bad input."""

import io
import json
import os
import shutil

import numpy as np
import pytest

TINY_SIZE = 32  # crop side for the tiny CNN (the tests use the same number)


@pytest.fixture(scope="session")
def scenes(tmp_path_factory):
    """20 synthetic scene images (128 px) with ground-truth boxes, as a Karpathy dataset.json."""
    from karpalign.datasets.generate import generate_scenes

    out = tmp_path_factory.mktemp("scenes")
    summary = generate_scenes(str(out), 20, seed=3, image_size=128, workers=1)
    return summary["dataset_json"]


@pytest.fixture(scope="session")
def tiny_cnn(tmp_path_factory):
    """A 2-conv Keras model saved to a file: the ``keras:PATH`` backbone spec for fast tests."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(12, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)  # (N, 12)
    path = str(tmp_path_factory.mktemp("tiny_cnn") / "tiny.keras")
    keras.Model(inputs, x).save(path)
    return f"keras:{path}|size={TINY_SIZE},{TINY_SIZE}"


def _png(width, height):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# file name -> (bytes or None for "do not create", expected dead-letter stage)
def bad_files(good_jpeg: bytes):
    return {
        "zero.jpg": (b"", "decode"),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "decode"),
        "corrupt.jpg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "decode"),
        "notes.jpg": (b"these are caption notes, not an image\n" * 20, "decode"),
        "missing.jpg": (None, "read"),
        "bomb.png": (_png(400, 300), "bomb"),  # 120000 pixels > the tests' limit of 100000 pixels
        "dir.jpg": ("mkdir", "read"),
    }


@pytest.fixture(scope="session")
def bad_scenes(scenes, tmp_path_factory):
    """The scenes dataset plus one image per kind of bad input (all in the train split, with boxes)."""
    src = os.path.dirname(scenes)
    dst = str(tmp_path_factory.mktemp("bad_scenes") / "data")
    shutil.copytree(src, dst)
    data = json.load(open(os.path.join(dst, "dataset.json")))
    template = data["images"][0]
    good_jpeg = open(os.path.join(dst, template["filepath"], template["filename"]), "rb").read()
    expected = {}
    for k, (name, (content, stage)) in enumerate(bad_files(good_jpeg).items()):
        path = os.path.join(dst, "bad", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if content == "mkdir":
            os.makedirs(path)
        elif content is not None:
            with open(path, "wb") as f:
                f.write(content)
        entry = json.loads(json.dumps(template))
        entry.update(filepath="bad", filename=name, imgid=1000 + k, split="train")
        data["images"].append(entry)
        expected[str(1000 + k)] = (os.path.realpath(path), stage)
    with open(os.path.join(dst, "dataset.json"), "w") as f:
        json.dump(data, f)
    return os.path.join(dst, "dataset.json"), expected


# image path as written in the dataset -> the words its dead letter's reason must hold (stage "path")
REFUSED_PATHS = {
    "../outside/escape.jpg": "escapes the image root",
    "/etc/hostname": "absolute path",
    "http://example.com/remote.jpg": "URL scheme 'http' is not allowed",
}


@pytest.fixture(scope="session")
def runner_scenes(bad_scenes, tmp_path_factory):
    """The bad-scenes dataset plus one record per refused image path: 20 good images, 10 dead letters
    (path 3, read 2, decode 4, bomb 1). Returns (dataset.json, {image_id: (local path, or the path as written
    for a refused one, stage)})."""
    dataset, expected = bad_scenes
    data = json.load(open(dataset))
    template = data["images"][0]
    expected = dict(expected)
    for k, path in enumerate(REFUSED_PATHS):
        entry = json.loads(json.dumps(template))
        entry.update(filepath="", filename=path, imgid=2000 + k, split="train")
        data["images"].append(entry)
        expected[str(2000 + k)] = (path, "path")
    out = os.path.join(os.path.dirname(dataset), "runners.json")
    with open(out, "w") as f:
        json.dump(data, f)
    return out, expected
