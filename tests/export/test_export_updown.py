"""An updown caption run exported and served like the mRNN: serving_default, caption_features and caption_examples
attend over every region; the exported signatures give the in-process decode (karpalign.decoding.generate) exactly,
loaded the way TF Serving loads them (a session restoring variables with the graph's saver, in karpalign's
SessionModel and in a process that imports only TensorFlow) and through TF2's object graph."""

import io
import os
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image

from karpalign.cli.export import main as export_main
from karpalign.data import features as F
from karpalign.data.text import Vocabulary
from karpalign.decoding.generate import CaptionGenerator, decode_regions
from karpalign.serving.loading import ObjectModel, SessionModel
from karpalign.serving.warmup import read_warmup_requests
from karpalign.testing import make_toy_records, untrained_runs
from karpalign.vision.backbones import get_backbone
from karpalign.vision.images import decode_image
from karpalign.vision.proposers import GridProposer, region_features

D, CROP, K_GRID, MAX_WORDS = 16, 32, 3, 8
BEAM, MAX_LEN, TOP_K = 3, 6, 2
CAPTION_OUTPUTS = ["captions", "scores", "token_ids"]
RUNNER = os.path.join(os.path.dirname(__file__), "_portable_runner.py")


def _tiny_backbone(path):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(D, 3, strides=2, activation="relu")(x)
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(path)


def _png(seed, h=40, w=48):
    rng = np.random.default_rng(seed)
    pixels = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    pixels[h // 4:h // 2, w // 4:w // 2] = rng.integers(0, 255, 3)  # one flat block: regions differ
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("export_updown"))
    backbone_path = os.path.join(root, "backbone.keras")
    _tiny_backbone(backbone_path)
    records = make_toy_records(os.path.join(root, "records"), feature_dim=D, num_regions=4, num_train=20,
                               num_val=4, num_test=4, shards=1)
    manifest = F.read_manifest(records)
    manifest.cnn_spec, manifest.crop_size = f"keras:{backbone_path}|size={CROP},{CROP}|range=-1,1", CROP
    manifest.proposer = F.ProposerInfo(kind="grid", k=K_GRID)
    manifest.write(records)
    keras.utils.set_random_seed(5)  # untrained weights: the same in every run
    runs = untrained_runs(root, records, D, MAX_WORDS, generator="updown")
    base = os.path.join(root, "models")
    assert export_main(["--align-dir", runs["align"], "--caption-dir", runs["caption"], "--records-dir", records,
                        "--export-base", base, "--beam-size", str(BEAM), "--max-length", str(MAX_LEN),
                        "--top-k", str(TOP_K)]) == 0
    keras.config.disable_interactive_logging()
    return {"dir": os.path.join(base, "karpalign", "1"), "runs": runs,
            "generator": keras.saving.load_model(os.path.join(runs["caption"], "generator.keras"), compile=False),
            "vocab": Vocabulary.load(os.path.join(runs["caption"], "vocab.txt")),
            "backbone": get_backbone(manifest.cnn_spec)}


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(3, 4, D)).astype(np.float32)  # (B, R, D)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], np.float32)  # (B, R)
    feats *= mask[:, :, None]  # padded regions are zeros, as parse_examples pads them
    examples = np.array([F.encode_example(f"e{i}", "test", "", feats[i, :int(mask[i].sum())],
                                          np.tile([[0, 0, 1, 1]], (int(mask[i].sum()), 1)), [])
                         for i in range(3)], dtype=object)
    images = np.array([_png(0), _png(1)], dtype=object)
    return {"feats": feats, "mask": mask, "examples": examples, "images": images}


def _calls(inputs):
    return {"caption_features": ("caption_features", {"region_features": inputs["feats"],
                                                      "region_mask": inputs["mask"]}),
            "caption_examples": ("caption_examples", {"examples": inputs["examples"]}),
            "serving_default": ("serving_default", {"images": inputs["images"]})}


def _in_process(exported, feats, mask):
    """The decode path of evaluation: CaptionGenerator over region features and mask."""
    captioner = CaptionGenerator(exported["generator"], exported["vocab"], beam_size=BEAM, max_length=MAX_LEN,
                                 top_k=TOP_K)
    result = captioner.decode_ids(feats, mask)
    captions = [[" ".join(exported["vocab"].decode(ids)) for ids in row] for row in result.ids]
    return {"captions": np.array(captions, dtype=object), "scores": result.scores, "token_ids": result.ids}


def _assert_same(got, want, where):
    assert [[c.decode() if isinstance(c, bytes) else c for c in row] for row in got["captions"].tolist()] == \
        want["captions"].tolist(), where
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5, rtol=0, err_msg=where)
    np.testing.assert_array_equal(got["token_ids"], want["token_ids"], err_msg=where)


def _served_features(exported, images):
    """What serving_default must compute: the extraction path's features of the in-graph grid boxes."""
    boxes = GridProposer(K_GRID).propose()
    return np.stack([region_features(exported["backbone"], decode_image(data), boxes, CROP) for data in images])


def test_the_export_is_an_updown_run(exported):
    with open(os.path.join(exported["dir"], "assets", "config.yaml"), encoding="utf-8") as fh:
        resolved = yaml.safe_load(fh)
    assert resolved["caption_config"]["model"]["generator"] == "updown"
    assert type(exported["generator"]).__name__ == "UpDownDecoder"


def test_in_process_decode_reads_every_region(exported, inputs):
    """Not vacuous: captions differ between images, and a valid region other than 0 changes the result."""
    want = _in_process(exported, inputs["feats"], inputs["mask"])
    assert len({c for row in want["captions"].tolist() for c in row}) > 1
    moved = inputs["feats"].copy()
    moved[0, 2] += 2.0
    changed = decode_regions(exported["generator"], moved, inputs["mask"], beam_size=BEAM, max_length=MAX_LEN,
                             top_k=TOP_K)
    assert np.abs(changed.scores.numpy()[0] - want["scores"][0]).max() > 1e-4


def test_signatures_match_in_process_decoding_through_session_and_object_loading(exported, inputs):
    want = _in_process(exported, inputs["feats"], inputs["mask"])
    served = _served_features(exported, inputs["images"])
    want_images = _in_process(exported, served, np.ones(served.shape[:2], np.float32))
    for model in (SessionModel(exported["dir"]), ObjectModel(exported["dir"])):  # TF Serving's way, TF2's way
        try:
            calls = _calls(inputs)
            for name in ("caption_features", "caption_examples"):
                signature, feeds = calls[name]
                _assert_same(model.run(signature, feeds, CAPTION_OUTPUTS), want, f"{model.loader}: {name}")
            out = model.run("serving_default", calls["serving_default"][1],
                            CAPTION_OUTPUTS + ["region_features", "boxes"])
            np.testing.assert_allclose(out["region_features"], served, atol=1e-5, rtol=1e-5)
            _assert_same(out, want_images, f"{model.loader}: serving_default")
        finally:
            model.close()


def test_plain_tensorflow_process_runs_every_caption_signature_and_the_warmup(exported, inputs, tmp_path):
    calls = _calls(inputs)
    for i, request in enumerate(read_warmup_requests(exported["dir"])):
        calls[f"warmup_{i}"] = (request.model_spec.signature_name,
                                {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
    with open(tmp_path / "in.pkl", "wb") as fh:
        pickle.dump(calls, fh)
    proc = subprocess.run([sys.executable, RUNNER, exported["dir"], str(tmp_path / "in.pkl"),
                           str(tmp_path / "out.pkl")], capture_output=True, text=True, timeout=600,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "out.pkl", "rb") as fh:
        out = pickle.load(fh)
    assert "karpalign" not in out["modules"] and out["unregistered"] == []
    want = _in_process(exported, inputs["feats"], inputs["mask"])
    for loader in ("session_outputs", "outputs"):
        for name in ("caption_features", "caption_examples"):
            assert "error" not in out[loader][name], out[loader][name]
            _assert_same(out[loader][name], want, f"{loader}: {name}")
        assert out[loader]["warmup_0"]["captions"].shape == (1, TOP_K)
        assert out[loader]["warmup_1"]["captions"].shape == (1, TOP_K)


def test_masked_out_full_image_is_refused(exported, inputs):
    model = ObjectModel(exported["dir"])
    mask = inputs["mask"].copy()
    mask[1, 0] = 0.0
    with pytest.raises(tf.errors.InvalidArgumentError, match="region 0"):
        model.run("caption_features", {"region_features": inputs["feats"], "region_mask": mask}, CAPTION_OUTPUTS)
