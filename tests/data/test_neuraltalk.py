"""neuraltalk's dataset.json + vgg_feats.mat -> the same TFRecords/vocab/manifest as karpalign-extract."""

import json
import os

import numpy as np
import pytest
import scipy.io

from karpalign.data.neuraltalk import NeuraltalkError, convert_neuraltalk

D = 12


def _dataset(tmp_path, splits=("train", "train", "val", "test", "train")):
    images = []
    for i, split in enumerate(splits):
        raw = [f"a dog number {i} runs", "the dog runs fast"] if split == "train" else [f"a valword cat {i}"]
        images.append({"filename": f"{i}.jpg", "imgid": i, "split": split,
                       "sentences": [{"raw": r, "tokens": r.split(), "imgid": i} for r in raw]})
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    return str(path), len(splits)


def _read(out, split):
    import tensorflow as tf

    from karpalign.data.features import parse_examples, shard_pattern

    files = sorted(tf.io.gfile.glob(shard_pattern(out, split)))
    serialized = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    return parse_examples(tf.constant(serialized), D, 1)


def test_converts_columns_by_imgid(tmp_path):
    dataset, n = _dataset(tmp_path)
    feats = np.random.default_rng(0).normal(size=(D, n)).astype(np.float32)  # (D, N) column = imgid
    scipy.io.savemat(tmp_path / "vgg_feats.mat", {"feats": feats})
    out = str(tmp_path / "out")
    manifest = convert_neuraltalk(dataset, str(tmp_path / "vgg_feats.mat"), out, min_word_count=2,
                                  shards_per_split=2)
    assert manifest.counts == {"test": 1, "train": 3, "val": 1}
    assert manifest.feature_dim == D and manifest.num_regions == 1
    assert manifest.cnn == "vgg16-neuraltalk" and manifest.proposer.kind == "full-image"
    assert manifest.input_records == manifest.written == n and manifest.failed == 0
    parsed = _read(out, "train")
    for i, image_id in enumerate(parsed["image_id"].numpy()):
        np.testing.assert_array_equal(parsed["region_features"][i, 0], feats[:, int(image_id)])
        np.testing.assert_array_equal(parsed["boxes"][i, 0], [0, 0, 1, 1])
    vocab = open(os.path.join(out, "vocab.txt")).read()
    assert "dog\t" in vocab and "valword" not in vocab  # train only, min count 2


def test_mismatched_column_count_names_the_file(tmp_path):
    dataset, n = _dataset(tmp_path)
    scipy.io.savemat(tmp_path / "vgg_feats.mat", {"feats": np.zeros((D, n + 1), np.float32)})
    with pytest.raises(NeuraltalkError, match=r"vgg_feats\.mat.*6 columns.*5 images"):
        convert_neuraltalk(dataset, str(tmp_path / "vgg_feats.mat"), str(tmp_path / "out"))
    scipy.io.savemat(tmp_path / "t.mat", {"feats": np.zeros((n, D), np.float32)})
    with pytest.raises(NeuraltalkError, match="transposed"):
        convert_neuraltalk(dataset, str(tmp_path / "t.mat"), str(tmp_path / "out"))
    scipy.io.savemat(tmp_path / "other.mat", {"fc7": np.zeros((D, n), np.float32)})
    with pytest.raises(NeuraltalkError, match=r"other\.mat: no variable 'feats'.*fc7"):
        convert_neuraltalk(dataset, str(tmp_path / "other.mat"), str(tmp_path / "out"))


def test_matlab_v73_hdf5_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    dataset, n = _dataset(tmp_path)
    feats = np.arange(D * n, dtype=np.float32).reshape(D, n)
    path = str(tmp_path / "v73.mat")
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("feats", data=feats.T)  # MATLAB writes column-major: (N, D) as HDF5 sees it
    with open(path, "r+b") as f:  # the MATLAB 7.3 header that makes scipy refuse and point to HDF5
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    manifest = convert_neuraltalk(dataset, path, str(tmp_path / "out"), min_word_count=1)
    assert manifest.written == n
    parsed = _read(str(tmp_path / "out"), "val")
    np.testing.assert_array_equal(parsed["region_features"][0, 0], feats[:, int(parsed["image_id"].numpy()[0])])


def test_cli_flag(tmp_path, capsys):
    from karpalign.cli.extract import main

    dataset, n = _dataset(tmp_path)
    scipy.io.savemat(tmp_path / "vgg_feats.mat", {"feats": np.ones((D, n), np.float32)})
    out = str(tmp_path / "out")
    assert main(["--dataset", dataset, "--neuraltalk-features", str(tmp_path / "vgg_feats.mat"), "--out", out,
                 "--min-word-count", "1", "--quiet"]) == 0
    assert "converted 5 images" in capsys.readouterr().out
    assert main(["--dataset", dataset, "--neuraltalk-features", str(tmp_path / "vgg_feats.mat"), "--out", out,
                 "--quiet"]) == 2
    assert "earlier run" in capsys.readouterr().err
