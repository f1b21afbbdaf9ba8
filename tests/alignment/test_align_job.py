import json
import os

import numpy as np

from karpalign.data import features as F


def test_align_cli_writes_snippets_records_and_accuracy(trained_align, toy_records, tmp_path):
    from karpalign.cli.align import main

    model_dir, _ = trained_align
    out = tmp_path / "regions"
    rc = main(["--model-dir", model_dir, "--records-dir", toy_records, "--out", str(out), "--beta", "0.5",
               "--dataset", os.path.join(toy_records, "dataset.json"), "--splits", "train,val"])
    assert rc == 0
    result = json.load(open(out / "alignment.json"))
    # The toy task is easy: most object words must land on their object's region.
    assert result["val"]["accuracy"]["word_accuracy"] > 0.6
    assert result["val"]["accuracy"]["words"] > 100
    lines = [json.loads(l) for l in open(out / "snippets-val.jsonl")]
    assert len(lines) == result["val"]["sentences"] == 80
    assert all(len(l["assignment"]) == len(l["tokens"]) for l in lines)
    assert all(sn["region"] > 0 for l in lines for sn in l["snippets"])
    manifest = F.read_manifest(str(out))
    assert manifest["num_regions"] == 1 and manifest["counts"]["val"] == result["val"]["snippets"] > 0
    # Each region example holds exactly that region's CNN features from the source records.
    import tensorflow as tf
    first = next(iter(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(F.shard_pattern(str(out), "val"))),
                                              compression_type="GZIP").batch(1)))
    region = F.parse_examples(first, manifest["feature_dim"])
    image_id, s, r, _ = region["image_id"].numpy()[0].decode().split("/")
    src = {}
    for batch in tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(F.shard_pattern(toy_records, "val"))),
                                         compression_type="GZIP").batch(64):
        parsed = F.parse_examples(batch, manifest["feature_dim"])
        for i, iid in enumerate(parsed["image_id"].numpy()):
            src[iid.decode()] = parsed["region_features"][i].numpy()
    np.testing.assert_allclose(region["region_features"][0, 0], src[image_id][int(r[1:])])


def test_align_cli_errors(tmp_path, capsys):
    from karpalign.cli.align import main

    assert main(["--model-dir", str(tmp_path), "--records-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "alignment.keras not found" in capsys.readouterr().err


def test_eval_retrieval_cli(trained_align, toy_records, tmp_path):
    from karpalign.cli.eval import main

    model_dir, _ = trained_align
    out = tmp_path / "r.json"
    assert main(["retrieval", "--model-dir", model_dir, "--records-dir", toy_records, "--split", "test",
                 "--out", str(out)]) == 0
    r = json.load(open(out))
    assert r["n_images"] == 40 and r["i2t"]["R@10"] >= r["i2t"]["R@1"] > 20
    assert main(["retrieval", "--model-dir", model_dir, "--records-dir", toy_records, "--split", "nope",
                 "--out", str(out)]) == 2
