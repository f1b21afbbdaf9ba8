"""Proposers in the serving graph: a learned proposer (learned:RUN) and a composed detector (detector:PATH).

One module-scoped setup: a tiny 16-d CNN backbone, an untrained learned proposer run (random seeded head over a
tiny stride-8 net), a toy detector SavedModel, five images extracted by the real Beam job with
``--proposer learned:RUN``, untrained tiny align/caption runs on those records, and two exports: one that follows
the records (learned) and one asked for ``--proposer detector:PATH``.
"""

import io
import json
import os
import pickle
import shutil
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
from karpalign.serving.loading import SessionModel
from karpalign.testing import untrained_runs
from karpalign.testing.toy_proposer import save_tiny_feature_net, save_toy_detector, untrained_proposer_run
from karpalign.vision.images import decode_image
from karpalign.vision.proposers import DetectorProposer, get_proposer

D, CROP, K, MAX_WORDS = 16, 32, 3, 8
RUNNER = os.path.join(os.path.dirname(__file__), "_portable_runner.py")
PROPOSAL_OUTPUTS = ["box_classes", "box_scores", "boxes", "proposer", "records_proposer", "region_features",
                    "region_mask"]


def _tiny_backbone(path):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(D, 3, strides=2, activation="relu")(x)
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(path)


def _encoded(pixels, fmt):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _pictures():
    """Five images of different sizes and formats: bright blobs on darker gradients (name -> (bytes, ext))."""
    rng = np.random.default_rng(3)
    out = {}
    for i, (h, w, fmt) in enumerate([(40, 56, "PNG"), (64, 48, "JPEG"), (30, 30, "PNG"), (72, 90, "JPEG"),
                                     (36, 64, "PNG")]):
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([xx * 200 // w, yy * 200 // h, (xx + yy) * 90 // (h + w)], -1).astype(np.uint8)
        for _ in range(2):
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            pixels[y:y + h // 3, x:x + w // 3] = rng.integers(150, 256, 3)
        out[f"img{i}"] = (_encoded(pixels, fmt), fmt.lower().replace("jpeg", "jpg"))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from karpalign.beam.job import extract_config, run_extract

    root = tmp_path_factory.mktemp("export_proposers")
    backbone = str(root / "backbone.keras")
    _tiny_backbone(backbone)
    cnn = f"keras:{backbone}|size={CROP},{CROP}|range=-1,1"
    run = untrained_proposer_run(str(root / "proposer"), save_tiny_feature_net(str(root / "net.keras")), 32, K)
    detector = save_toy_detector(str(root / "detector"))
    images = _pictures()
    with open(root / "captions.jsonl", "w") as fh:
        for i, (name, (data, ext)) in enumerate(images.items()):
            (root / f"{name}.{ext}").write_bytes(data)
            fh.write(json.dumps({"image": f"{name}.{ext}", "caption": f"a red square number {i}",
                                 "split": "train" if i < 4 else "val"}) + "\n")
    records = str(root / "records")
    run_extract(extract_config(str(root / "captions.jsonl"), records, cnn=cnn, crop_size=CROP,
                               proposer=f"learned:{run}", regions=K, min_word_count=1, shards_per_split=1,
                               batch_size=2, progress_every=0), ["--runner=DirectRunner"])
    runs = untrained_runs(str(root / "runs"), records, D, MAX_WORDS)
    common = ["--align-dir", runs["align"], "--caption-dir", runs["caption"], "--records-dir", records,
              "--beam-size", "2", "--max-length", "4", "--top-k", "1"]
    base = str(root / "models")
    assert export_main(common + ["--export-base", base, "--model-name", "learned"]) == 0
    assert export_main(common + ["--export-base", base, "--model-name", "detector", "--proposer",
                                 f"detector:{detector}"]) == 0
    return {"root": root, "run": run, "detector": detector, "images": images, "records": records,
            "runs": runs, "common": common, "learned_dir": os.path.join(base, "learned", "1"),
            "detector_dir": os.path.join(base, "detector", "1"), "cnn": cnn}


def _records(records):
    files = sorted(os.path.join(records, n) for n in os.listdir(records) if n.endswith(".tfrecord.gz"))
    serialized = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    parsed = F.parse_examples(tf.constant(serialized), D, K + 1)
    out = {}
    for path, feats, boxes, mask in zip(parsed["path"].numpy(), parsed["region_features"].numpy(),
                                        parsed["boxes"].numpy(), parsed["region_mask"].numpy()):
        name = os.path.splitext(os.path.basename(path.decode()))[0]
        out[name] = (boxes[mask > 0], feats[mask > 0])
    return out


def _config_asset(saved_model):
    with open(os.path.join(saved_model, "assets", "config.yaml"), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def test_export_follows_the_records_learned_proposer(setup):
    manifest = F.read_manifest(setup["records"])
    name = get_proposer(f"learned:{setup['run']}", K).name
    assert manifest.proposer.kind == "learned" and manifest.proposer.name == name
    resolved = _config_asset(setup["learned_dir"])
    assert resolved["proposer"] == resolved["records_proposer"] == name
    assert resolved["proposer_explicit"] is False and resolved["proposer_note"] is None
    assert resolved["boxes"] is None  # every image has its own
    loaded = tf.saved_model.load(setup["learned_dir"])
    assert sorted(PROPOSAL_OUTPUTS + ["captions", "scores", "token_ids"]) == sorted(
        loaded.signatures["serving_default"].structured_outputs)


def test_serving_proposes_what_extraction_proposed(setup):
    """The same image bytes: boxes and features of the Beam job's records == serving_default's, through TF2's
    loader and the way TF Serving loads a model (a session restoring the variables with the graph's saver)."""
    job = _records(setup["records"])
    names = list(setup["images"])
    batch = np.array([setup["images"][n][0] for n in names], dtype=object)
    served = tf.saved_model.load(setup["learned_dir"]).signatures["serving_default"](images=tf.constant(batch))
    served = {k: v.numpy() for k, v in served.items()}
    session = SessionModel(setup["learned_dir"])
    try:
        in_session = session.run("serving_default", {"images": batch}, PROPOSAL_OUTPUTS)
    finally:
        session.close()
    assert served["proposer"].decode() == get_proposer(f"learned:{setup['run']}", K).name
    distinct = set()
    for i, name in enumerate(names):
        job_boxes, job_feats = job[name]
        assert len(job_boxes) == K + 1  # score threshold 0: the full image and K boxes
        distinct.add(tuple(np.round(job_boxes[1:].ravel(), 3)))
        for where, out in (("tf2", served), ("session", in_session)):
            mask = out["region_mask"][i] > 0
            np.testing.assert_allclose(out["boxes"][i][mask], job_boxes, atol=1e-4, err_msg=f"{where} {name}")
            np.testing.assert_allclose(out["region_features"][i][mask], job_feats, atol=1e-4,
                                       err_msg=f"{where} {name}")
            assert (out["box_classes"][i] == 0).all() and out["box_scores"][i][0] == 1.0
    assert len(distinct) == len(names)  # the proposals depend on the image


def test_a_composed_detector_is_one_self_contained_saved_model(setup, tmp_path):
    """detector:PATH inside the export: its boxes, scores and class ids come out of serving_default in a process
    that imports only TensorFlow, after the detector's own folder is gone."""
    resolved = _config_asset(setup["detector_dir"])
    detector = DetectorProposer(setup["detector"], k=K)
    assert resolved["proposer"] == detector.name and resolved["proposer_explicit"] is True
    assert "the records were made with" in resolved["proposer_note"] and resolved["records_proposer"].startswith(
        "learned:")
    want = {name: detector.detect(decode_image(data)) for name, (data, _) in setup["images"].items()}
    moved = str(tmp_path / "detector_moved")
    shutil.move(setup["detector"], moved)
    try:
        names = list(setup["images"])
        batch = np.array([setup["images"][n][0] for n in names], dtype=object)
        with open(tmp_path / "in.pkl", "wb") as fh:
            pickle.dump({"default": ("serving_default", {"images": batch})}, fh)
        proc = subprocess.run([sys.executable, RUNNER, setup["detector_dir"], str(tmp_path / "in.pkl"),
                               str(tmp_path / "out.pkl")], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        shutil.move(moved, setup["detector"])
    with open(tmp_path / "out.pkl", "rb") as fh:
        report = pickle.load(fh)
    assert "karpalign" not in report["modules"] and "tensorflow_text" not in report["modules"]
    for out in (report["outputs"]["default"], report["session_outputs"]["default"]):
        assert "error" not in out, out.get("error")
        for i, name in enumerate(names):
            boxes, scores, classes = want[name]
            n = len(boxes)
            assert 1 <= n <= K
            mask = out["region_mask"][i] > 0
            assert mask.sum() == n + 1
            np.testing.assert_allclose(out["boxes"][i][mask], np.concatenate([[[0, 0, 1, 1]], boxes]), atol=1e-5)
            np.testing.assert_allclose(out["box_scores"][i][1:n + 1], scores, atol=1e-5)
            np.testing.assert_array_equal(out["box_classes"][i][1:n + 1], classes)
            assert out["box_classes"][i][0] == 0 and out["proposer"].decode() == detector.name


def test_bad_proposers_are_refused_with_their_file(setup, tmp_path, capsys):
    common = setup["common"] + ["--export-base", str(tmp_path / "models")]
    bad = save_toy_detector(str(tmp_path / "bad_detector"), with_outputs=False)
    assert export_main(common + ["--proposer", f"detector:{bad}"]) == 2
    err = capsys.readouterr().err
    assert f"detector {bad}: outputs ['boxes', 'scores'] lack ['detection_boxes', 'detection_scores'" in err
    assert export_main(common + ["--proposer", f"learned:{setup['runs']['align']}"]) == 2
    assert (f"{setup['runs']['align']} is a `karpalign-train --task align` run, not a --task propose run"
            in capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "models" / "karpalign" / "1")


def test_records_of_a_proposer_outside_the_graph_need_an_explicit_one(setup, tmp_path):
    from karpalign.export.saved_model import build_export_module

    records = str(tmp_path / "records")
    shutil.copytree(setup["records"], records)
    manifest = F.read_manifest(records)
    manifest.proposer = F.ProposerInfo.from_spec("segments", K, name=get_proposer("segments", K).name)
    manifest.write(records)
    runs = setup["runs"]
    with pytest.raises(ValueError, match=(r"manifest.json: the records were made with the 'segments\|k=3.*' "
                                          r"proposer, which cannot run inside the serving graph; pass --proposer "
                                          r"with one that can \(grid, learned:")):
        build_export_module(runs["align"], runs["caption"], records, config_dir=str(tmp_path))
    module = build_export_module(runs["align"], runs["caption"], records, proposer="grid",
                                 config_dir=str(tmp_path))
    assert module.proposer_name == "grid|k=3" and module.records_proposer.startswith("segments|k=3")
    resolved = _config_asset_file(tmp_path / "config.yaml")
    assert resolved["proposer_explicit"] is True and "segments" in resolved["proposer_note"]


def _config_asset_file(path):
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def test_an_empty_image_is_refused_by_name(setup):
    fn = tf.saved_model.load(setup["learned_dir"]).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="zero-byte file"):
        fn(images=tf.constant([setup["images"]["img0"][0], b""]))
