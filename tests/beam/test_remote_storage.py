"""Images read from and every output written to an object store through apache_beam.io.filesystems: a
``kobj://`` store registered by the test (tests/beam/objectstore.py), with a missing and a zero-byte object."""

import json
import os

import pytest

from tests.beam import objectstore as store
from tests.beam.outputs import assert_same_records, parse_shards, read_local_run

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BOMB_LIMIT = 100_000


def upload_images(dataset_json: str, prefix: str) -> int:
    """Every image file next to the dataset -> objects under ``prefix`` (directories have no object)."""
    root = os.path.dirname(dataset_json)
    n = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".json"):
                continue
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                store.put(prefix + os.path.relpath(path, root).replace(os.sep, "/"), f.read())
            n += 1
    return n


def _argv(dataset, image_root, out, cnn, *extra):
    return ["--dataset", dataset, "--image-root", image_root, "--out", out, "--cnn", cnn, "--proposer", "boxes",
            "--regions", "3", "--min-word-count", "1", "--shards-per-split", "2", "--batch-size", "4",
            "--max-image-pixels", str(BOMB_LIMIT), "--quiet", *extra]


def test_images_and_outputs_on_an_object_store(runner_scenes, tiny_cnn, tmp_path, monkeypatch, capsys):
    from karpalign.cli.extract import main
    from karpalign.data.features import Manifest

    dataset, expected = runner_scenes
    monkeypatch.setenv(store.ENV, str(tmp_path / "store"))
    os.makedirs(tmp_path / "store")
    monkeypatch.chdir(tmp_path)  # a path mistaken for a local one would appear here
    assert upload_images(dataset, "kobj://images/") > 20
    assert store.get("kobj://images/bad/zero.jpg") == b""  # the zero-byte object
    assert not store.keys("kobj://images/bad/missing.jpg")  # the missing object
    out = "kobj://records/run"

    assert main(_argv(dataset, "kobj://images", out, tiny_cnn, "--max-failure-fraction", "0.5")) == 0
    names = [k[len(out) + 1:] for k in store.keys(out + "/")]
    shards = [n for n in names if n.endswith(".tfrecord.gz")]
    assert sorted(set(names) - set(shards)) == ["dead_letters.jsonl", "extract.yaml", "manifest.json", "vocab.txt"]
    assert not [n for n in names if n.startswith("_job")], "the job folder was removed from the store"
    assert os.listdir(tmp_path) == ["store"], "nothing was written to the local disk"

    manifest = Manifest.from_json(json.loads(store.get(out + "/manifest.json")))
    assert manifest.input_records == 30 and manifest.written == 20 and manifest.failed == 10
    assert manifest.failures_by_stage == {"path": 3, "read": 2, "decode": 4, "bomb": 1}
    assert sorted(shards) == sorted(f"{split}-{i:05d}-of-00002.tfrecord.gz" for split in manifest.counts
                                    for i in range(2))
    letters = {d["image_id"]: d for d in map(json.loads, store.get(out + "/dead_letters.jsonl").splitlines())}
    assert sorted(letters) == sorted(expected)
    for image_id, (path, stage) in expected.items():
        if stage != "path":  # the object the job tried to read
            path = "kobj://images/bad/" + os.path.basename(path)
        assert (letters[image_id]["path"], letters[image_id]["stage"]) == (path, stage)
    assert "No such object: kobj://images/bad/missing.jpg" in letters[_id(expected, "missing.jpg")]["reason"]
    assert "zero-byte" in letters[_id(expected, "zero.jpg")]["reason"]
    assert "escapes the image root 'kobj://images'" in letters[_id(expected, "../outside/escape.jpg")]["reason"]

    local = tmp_path / "shards"
    local.mkdir()
    for name in shards:
        (local / name).write_bytes(store.get(f"{out}/{name}"))
    records = parse_shards(sorted(str(p) for p in local.iterdir()), manifest.feature_dim, manifest.num_regions)
    assert sum(manifest.counts.values()) == len(records) == 20
    assert all(r["path"].decode().startswith("kobj://images/") for r in records.values())

    # The same dataset from the local disk gives the same records; an earlier run's outputs are detected.
    local_out = tmp_path / "local_run"
    assert main(_argv(dataset, os.path.dirname(dataset), str(local_out), tiny_cnn,
                      "--max-failure-fraction", "0.5")) == 0
    assert_same_records(records, read_local_run(str(local_out))["records"], compare_paths=False)
    capsys.readouterr()
    assert main(_argv(dataset, "kobj://images", out, tiny_cnn, "--max-failure-fraction", "0.5")) == 2
    assert "kobj://records/run already holds outputs" in capsys.readouterr().err


def _id(expected, name):
    (image_id,) = [i for i, (path, _) in expected.items() if path.endswith(name)]
    return image_id


def test_an_unknown_url_scheme_is_refused_before_any_work(scenes, tiny_cnn, tmp_path, capsys):
    from karpalign.cli.extract import main

    assert main(["--dataset", scenes, "--image-root", "nosuchfs://bucket/images", "--out", str(tmp_path / "o"),
                 "--cnn", tiny_cnn]) == 2
    err = capsys.readouterr().err
    assert "data.image_root nosuchfs://bucket/images: no Beam filesystem handles nosuchfs://" in err
    assert not os.path.exists(tmp_path / "o")
