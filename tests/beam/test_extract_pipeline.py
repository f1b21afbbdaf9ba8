"""The Beam extraction job end to end: outputs, features, counters, dead letters, exit codes, multi-process."""

import glob
import json
import os

import numpy as np
import pytest

TINY_SIZE = 32  # the tiny_cnn fixture's input size (its spec ends in |size=32,32)
BOMB_LIMIT = 100_000  # pixel limit; the bad dataset's bomb.png has 400 x 300 = 120000

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _config(dataset, out, cnn, **kw):
    from karpalign.beam.job import extract_config

    defaults = dict(proposer="boxes", regions=3, min_word_count=1, shards_per_split=2, batch_size=4,
                    progress_every=0)
    defaults.update(kw)
    return extract_config(dataset, str(out), cnn=cnn, **defaults)


def _read_split(out, split, feature_dim, num_regions):
    import tensorflow as tf

    from karpalign.data.features import parse_examples, shard_pattern

    files = sorted(glob.glob(shard_pattern(str(out), split)))
    serialized = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    if not serialized:
        return {"image_id": []}, files
    parsed = parse_examples(tf.constant(serialized), feature_dim, num_regions)
    return {k: (v if isinstance(v, tf.RaggedTensor) else v.numpy()) for k, v in parsed.items()}, files


@pytest.mark.parametrize("in_flight", [0, 1])
def test_pipeline_encodes_every_image_once(scenes, tiny_cnn, tmp_path, in_flight):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from karpalign.beam.job import build_pipeline, plan_job, prepare_output
    from karpalign.data.features import K_ID, K_SPLIT

    plan = plan_job(_config(scenes, tmp_path / "out", tiny_cnn, cnn_in_flight=in_flight))
    prepare_output(plan)
    expected = sorted((item.split, item.image_id) for item in plan.items)

    def ids(element):
        import tensorflow as tf

        split, serialized = element
        example = tf.train.Example.FromString(serialized)
        assert example.features.feature[K_SPLIT].bytes_list.value[0].decode() == split
        return split, example.features.feature[K_ID].bytes_list.value[0].decode()

    with TestPipeline() as p:
        outputs = build_pipeline(p, plan)
        assert_that(outputs["encoded"] | beam.Map(ids), equal_to(expected), label="AllImagesEncoded")
        assert_that(outputs["dead_letters"], equal_to([]), label="NoDeadLetters")


def test_features_in_shards_equal_a_direct_backbone_call(scenes, tiny_cnn, tmp_path):
    from karpalign.beam.job import run_extract
    from karpalign.data.features import VOCAB, read_manifest
    from karpalign.data.records import read_dataset
    from karpalign.data.text import Vocabulary, python_tokenize
    from karpalign.vision.backbones import get_backbone
    from karpalign.vision.images import decode_image
    from karpalign.vision.proposers import region_features

    out = tmp_path / "out"
    result = run_extract(_config(scenes, out, tiny_cnn), ["--runner=DirectRunner"])
    manifest = read_manifest(str(out))
    records = {r.image_id: r for r in read_dataset(scenes)}
    assert manifest.input_records == len(records) == manifest.written and manifest.failed == 0
    assert manifest.num_regions == 4 and manifest.crop_size == TINY_SIZE
    assert manifest.cnn_spec.endswith(f"tiny.keras|size={TINY_SIZE},{TINY_SIZE}")
    assert manifest.proposer.kind == "boxes" and manifest.proposer.k == 3
    assert manifest.failures_by_stage == {} and manifest.dead_letters == "dead_letters.jsonl"
    assert os.path.getsize(out / "dead_letters.jsonl") == 0
    assert not os.path.exists(out / "_job")
    assert sorted(os.path.basename(f) for f in glob.glob(str(out / "train-*"))) == [
        "train-00000-of-00002.tfrecord.gz", "train-00001-of-00002.tfrecord.gz"]

    # Beam counters, queried from the pipeline result.
    c = result.counters
    assert c["images_read"] == c["decoded"] == c["featurized"] == c["written"] == len(records)
    assert c["regions"] == sum(1 + min(3, len(r.boxes)) for r in records.values())
    assert not any(k.startswith("failed_") and v for k, v in c.items())

    backbone = get_backbone(manifest.cnn_spec)
    vocab = Vocabulary.load(str(out / VOCAB))
    assert len(vocab) == manifest.vocab_size
    seen = 0
    for split, count in manifest.counts.items():
        parsed, _ = _read_split(out, split, manifest.feature_dim, manifest.num_regions)
        assert len(parsed["image_id"]) == count
        for i, image_id in enumerate(parsed["image_id"]):
            record = records[image_id.decode()]
            assert record.split == split
            n = 1 + min(3, len(record.boxes))
            boxes = parsed["boxes"][i, :n]
            np.testing.assert_allclose(boxes[0], [0, 0, 1, 1])
            np.testing.assert_allclose(boxes[1:], np.array(record.boxes[:3], np.float32), atol=1e-6)
            assert parsed["region_mask"][i].tolist() == [1.0] * n + [0.0] * (4 - n)
            with open(record.path, "rb") as f:
                direct = region_features(backbone, decode_image(f.read()), boxes, crop_size=TINY_SIZE)  # (n, D)
            np.testing.assert_allclose(parsed["region_features"][i, :n], direct, rtol=1e-5, atol=1e-5)
            tokens = [[t.decode() for t in s] for s in parsed["tokens"][i].to_list()]
            assert tokens == [python_tokenize(s.raw) for s in record.sentences]
            seen += 1
    assert seen == len(records)


def test_vocabulary_comes_from_the_train_split_only(scenes, tiny_cnn, tmp_path):
    from karpalign.beam.job import plan_job

    data = json.load(open(scenes))
    for img in data["images"]:
        word = "trainonlyword" if img["split"] == "train" else "heldoutsplitword"
        img["sentences"][0]["raw"] += f" {word}"
    path = os.path.join(os.path.dirname(scenes), "vocab_check.json")
    with open(path, "w") as f:
        json.dump(data, f)
    plan = plan_job(_config(path, tmp_path / "out", tiny_cnn, min_word_count=1))
    assert "trainonlyword" in plan.vocab and "heldoutsplitword" not in plan.vocab


def _run_cli(argv):
    from karpalign.cli.extract import main

    return main(argv)


def test_bad_images_become_dead_letters_and_the_rest_is_written(bad_scenes, tiny_cnn, tmp_path, capsys):
    from karpalign.data.features import read_manifest

    dataset, expected = bad_scenes
    out = tmp_path / "out"
    base = ["--dataset", dataset, "--out", str(out), "--cnn", tiny_cnn, "--proposer", "boxes", "--regions", "3",
            "--min-word-count", "1", "--shards-per-split", "1", "--batch-size", "4",
            "--max-image-pixels", str(BOMB_LIMIT), "--quiet"]
    assert _run_cli(base) == 1  # 7 of 27 images fail: far above the default 5%
    err = capsys.readouterr().err
    assert "7 of 27 images failed" in err and "--max-failure-fraction" in err

    manifest = read_manifest(str(out))
    assert manifest.input_records == 27 == manifest.written + manifest.failed
    assert manifest.written == 20 and manifest.failed == 7
    assert manifest.failures_by_stage == {"read": 2, "decode": 4, "bomb": 1}
    letters = [json.loads(line) for line in open(out / manifest.dead_letters)]
    assert sorted(d["image_id"] for d in letters) == sorted(expected)
    for d in letters:
        path, stage = expected[d["image_id"]]
        assert (d["path"], d["stage"]) == (path, stage), d
        assert d["reason"]
    by_name = {os.path.basename(d["path"]): d["reason"] for d in letters}
    assert "zero-byte" in by_name["zero.jpg"] and "truncated" in by_name["truncated.jpg"]
    assert "max_pixels" in by_name["bomb.png"]

    # Rerunning into the same folder needs --overwrite; with a tolerant threshold the exit code is 0.
    assert _run_cli(base + ["--max-failure-fraction", "0.3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _run_cli(base + ["--max-failure-fraction", "0.4", "--overwrite", "--splits", "train"]) == 0
    summary = capsys.readouterr().out
    assert "failed: 7 images (read 2, decode 4, bomb 1)" in summary
    manifest = read_manifest(str(out))
    n_train = sum(img["split"] == "train" for img in json.load(open(dataset))["images"])
    assert manifest.counts == {"train": n_train - 7} and manifest.input_records == n_train
    assert not glob.glob(str(out / "val-*")), "stale shards of the first run were removed"


def test_multi_process_direct_runner_end_to_end(scenes, tiny_cnn, tmp_path):
    from karpalign.data.features import read_manifest

    out = tmp_path / "out"
    code = _run_cli(["--dataset", scenes, "--out", str(out), "--cnn", tiny_cnn, "--proposer", "grid",
                     "--regions", "2", "--min-word-count", "1", "--shards-per-split", "2", "--batch-size", "3",
                     "--quiet", "--runner=DirectRunner", "--direct_running_mode=multi_processing",
                     "--direct_num_workers=2"])
    assert code == 0
    manifest = read_manifest(str(out))
    assert manifest.written == manifest.input_records == 20 and manifest.num_regions == 3
    parsed, files = _read_split(out, "train", manifest.feature_dim, 3)
    assert len(files) == 2 and len(parsed["image_id"]) == manifest.counts["train"]
    assert parsed["region_mask"].sum() == 3 * len(parsed["image_id"])  # the grid always gives K + 1 boxes


def test_efficientnet_lite0_small_run(scenes, tmp_path, monkeypatch):
    """The built-in backbone once, on 4 images at 64 px crops (weights converted into a temporary cache)."""
    from karpalign.beam.job import run_extract
    from karpalign.data.features import read_manifest

    monkeypatch.setenv("KARPALIGN_CACHE", str(tmp_path / "cache"))
    data = json.load(open(scenes))
    data["images"] = [img for img in data["images"] if img["split"] == "train"][:4]
    path = os.path.join(os.path.dirname(scenes), "four.json")
    with open(path, "w") as f:
        json.dump(data, f)
    out = tmp_path / "out"
    run_extract(_config(path, out, "efficientnet_lite0", crop_size=64, regions=2, shards_per_split=1))
    manifest = read_manifest(str(out))
    assert manifest.feature_dim == 1280 and manifest.cnn == "efficientnet_lite0"
    assert manifest.written == 4 and manifest.crop_size == 64
    parsed, _ = _read_split(out, "train", 1280, 3)
    feats = parsed["region_features"][parsed["region_mask"] > 0]
    assert np.isfinite(feats).all() and feats.std() > 0


def test_segments_proposer_in_the_job(scenes, tiny_cnn, tmp_path):
    """The model-free ``segments`` proposer on 4 images: the shards hold exactly its boxes."""
    from karpalign.beam.job import run_extract
    from karpalign.data.features import read_manifest
    from karpalign.data.records import read_dataset
    from karpalign.vision.images import decode_image
    from karpalign.vision.proposers import SegmentsProposer

    data = json.load(open(scenes))
    data["images"] = [img for img in data["images"] if img["split"] == "train"][:4]
    path = os.path.join(os.path.dirname(scenes), "four_for_segments.json")
    with open(path, "w") as f:
        json.dump(data, f)
    out = tmp_path / "out"
    run_extract(_config(path, out, tiny_cnn, proposer="segments", regions=5, shards_per_split=1))
    manifest = read_manifest(str(out))
    proposer = SegmentsProposer(5)
    assert manifest.proposer.kind == "segments" and manifest.proposer.name == proposer.name
    assert manifest.written == 4 and manifest.num_regions == 6
    parsed, _ = _read_split(out, "train", manifest.feature_dim, 6)
    records = {r.image_id: r for r in read_dataset(path)}
    for i, image_id in enumerate(parsed["image_id"]):
        with open(records[image_id.decode()].path, "rb") as f:
            expected = proposer.propose(decode_image(f.read()))  # (1 + K', 4)
        n = len(expected)
        np.testing.assert_array_equal(parsed["boxes"][i, :n], expected)
        assert parsed["region_mask"][i].tolist() == [1.0] * n + [0.0] * (6 - n)


def test_bad_configuration_is_refused_before_running(scenes, tiny_cnn, tmp_path, capsys):
    assert _run_cli(["--dataset", scenes, "--out", str(tmp_path / "o"), "--cnn", tiny_cnn,
                     "--splits", "train,nosuchsplit"]) == 2
    assert "nosuchsplit" in capsys.readouterr().err
    assert _run_cli(["--dataset", scenes, "--out", str(tmp_path / "o"), "--cnn", "keras:/no/such/model.keras"]) == 2
    assert "/no/such/model.keras" in capsys.readouterr().err
    assert _run_cli(["--dataset", scenes, "--out", str(tmp_path / "o"), "--proposer", "selective-search"]) == 2
    assert "selective-search" in capsys.readouterr().err
    assert _run_cli(["--dataset", scenes, "--out", str(tmp_path / "o"), "--proposer", "segments|scale=-1"]) == 2
    assert "scale must be a number > 0" in capsys.readouterr().err
    assert _run_cli(["--dataset", scenes, "--out", str(tmp_path / "o"), "--cnn", tiny_cnn,
                     "--cnn-in-flight", "-1"]) == 2
    assert "cnn_in_flight must be an integer >= 0, got -1" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")
