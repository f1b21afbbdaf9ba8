"""karpalign-eval captions: generated captions scored with coco-caption metrics, novelty, nn baseline, errors."""

import json
import os

import numpy as np
import pytest

from karpalign.cli.eval import main as eval_main
from karpalign.testing import SMALL_MODEL, make_toy_records

METRIC_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@pytest.fixture(scope="module")
def caption_run(toy_records, tmp_path_factory):
    """A generator trained on the toy records' full frames for 60 steps (it learns to name the objects)."""
    from karpalign.config import load_config
    from karpalign.training.loop import train
    from karpalign.training.tasks import CaptionTask

    out = str(tmp_path_factory.mktemp("caption_run"))
    cfg = load_config(None, SMALL_MODEL + [f"data.records_dir={toy_records}", f"runtime.output_dir={out}",
                                           "train.steps=60", "train.eval_every=60", "train.optimizer=rmsprop"])
    train(cfg, CaptionTask, progress=False)
    return out


def _toy_truth(records_dir):
    with open(os.path.join(records_dir, "dataset.json")) as f:
        return {str(img["imgid"]): img for img in json.load(f)["images"]}


@pytest.fixture(autouse=True)
def fake_meteor(monkeypatch):
    """METEOR's Java process loads large paraphrase tables (20-50 s on a busy 2-core machine); it is tested with
    real captions in test_captions.py. Here it returns a marker value so the tests can see it was called and
    that its result lands in the output."""
    calls = []

    def meteor(gts, res, timeout):
        calls.append(len(res))
        return 0.125, [0.125] * len(res)

    monkeypatch.setattr("karpalign.evaluation.captions._meteor", meteor)
    return calls


def test_captions_cli_writes_every_metric_novelty_samples_and_the_spice_note(caption_run, toy_records, tmp_path,
                                                                              capsys, fake_meteor):
    out = tmp_path / "eval.json"
    code = eval_main(["captions", "--model-dir", caption_run, "--records-dir", toy_records, "--split", "test",
                      "--beam-size", "3", "--max-images", "16", "--samples", "4", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    metrics = result["metrics"]
    for key in METRIC_KEYS:
        assert isinstance(metrics[key], float) and metrics[key] >= 0.0, key
    assert metrics["METEOR"] == 0.125 and fake_meteor == [16]
    assert metrics["SPICE"] is None and any("SPICE" in note for note in metrics["notes"])
    assert metrics["n_images"] == 16 == result["settings"]["n_images"]
    # 60 steps are enough to name colours and shapes: far above what random words would score.
    assert metrics["BLEU-1"] > 0.5 and metrics["CIDEr"] > 0.5
    novelty = result["novelty"]
    assert 0.0 <= novelty["in_training_set"] <= 1.0
    assert novelty["novel"] == pytest.approx(1.0 - novelty["in_training_set"])
    assert result["settings"]["beam_size"] == 3 and result["split"] == "test" and "baseline" not in result
    assert result["empty_captions"] == 0 and result["settings"]["min_length"] == 1  # no empty caption by default
    assert all(sample["generated"].strip() for sample in result["samples"])
    truth = _toy_truth(toy_records)
    assert len(result["samples"]) == 4
    for sample in result["samples"]:
        image = truth[sample["image_id"]]
        assert image["split"] == "test"
        assert sample["references"] == [s["raw"] for s in image["sentences"]]
        assert isinstance(sample["generated"], str)


def test_nn_baseline_returns_the_nearest_training_images_caption(caption_run, toy_records, tmp_path, fake_meteor):
    import tensorflow as tf

    from karpalign.data import features as F

    out = tmp_path / "nn.json"
    code = eval_main(["captions", "--model-dir", caption_run, "--records-dir", toy_records, "--beam-size", "1",
                      "--max-images", "10", "--samples", "10", "--baseline", "nn", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    baseline = result["baseline"]
    assert baseline["kind"] == "nn" and baseline["novelty"]["in_training_set"] == 1.0
    for key in METRIC_KEYS:
        assert key in baseline["metrics"]
    assert baseline["metrics"]["BLEU-1"] > 0.5  # toy neighbours share the objects
    assert fake_meteor == [10, 10]  # the model's captions and the baseline's, scored separately

    # Independent nearest neighbour by cosine on the full-frame vectors, read straight from the shards.
    def full_frames(split):
        feats, captions, ids = [], [], []
        for path in sorted(tf.io.gfile.glob(F.shard_pattern(toy_records, split))):
            for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                ex = tf.train.Example.FromString(raw.numpy()).features.feature
                feats.append(np.array(ex[F.K_FEATS].float_list.value[:16], "f4"))
                captions.append([c.decode() for c in ex[F.K_RAW].bytes_list.value])
                ids.append(ex[F.K_ID].bytes_list.value[0].decode())
        return np.stack(feats), captions, ids

    train_feats, train_caps, _ = full_frames("train")
    test_feats, _, test_ids = full_frames("test")
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    by_id = dict(zip(test_ids, unit(test_feats)))
    for sample in result["samples"]:
        nearest = int(np.argmax(unit(train_feats) @ by_id[sample["image_id"]]))
        assert sample["nn"] in train_caps[nearest], sample


def test_captions_cli_bad_inputs_exit_2_with_a_clear_message(caption_run, toy_records, tmp_path, capsys):
    def run(*args):
        code = eval_main(["captions", *args, "--out", str(tmp_path / "x.json")])
        return code, capsys.readouterr().err

    code, err = run("--model-dir", str(tmp_path / "missing"), "--records-dir", toy_records)
    assert code == 2 and "missing" in err and "does not exist" in err
    code, err = run("--model-dir", str(tmp_path), "--records-dir", toy_records)
    assert code == 2 and "generator.keras not found" in err
    code, err = run("--model-dir", caption_run, "--records-dir", toy_records, "--split", "nosuch")
    assert code == 2 and "nosuch-*" in err
    other = make_toy_records(str(tmp_path / "dim8"), num_train=4, num_val=2, num_test=2, feature_dim=8, shards=1)
    code, err = run("--model-dir", caption_run, "--records-dir", other)
    assert code == 2 and "8-d" in err and "16-d" in err
    assert not (tmp_path / "x.json").exists()
