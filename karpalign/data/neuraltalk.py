"""Karpathy's neuraltalk release (``dataset.json`` + ``vgg_feats.mat``) -> karpalign TFRecords.

The neuraltalk downloads for Flickr8k/30k and COCO ship precomputed VGG-16 fc7 features: ``vgg_feats.mat``
holds ``feats``, a 4096 x N matrix whose column ``imgid`` belongs to image ``imgid`` of ``dataset.json``.
Converting them gives the paper's full-frame setting without any images: one region per image (the full
image, box [0, 0, 1, 1]), the same shards / ``vocab.txt`` / ``manifest.json`` as ``karpalign-extract``
(``cnn: "vgg16-neuraltalk"``, ``proposer: "full-image"``), so training code cannot tell the difference.

MATLAB v5 files are read with ``scipy.io.loadmat``; v7.3 files (HDF5 inside) with ``h5py`` when it is
installed (HDF5 stores the matrix transposed: N x 4096).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from karpalign.data import features as F
from karpalign.data.records import DatasetError, ReadReport, by_split, iter_train_tokens, read_karpathy_json
from karpalign.data.text import Vocabulary

CNN_NAME = "vgg16-neuraltalk"
PROPOSER_NAME = "full-image"
FULL_IMAGE_BOX = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)  # (1, 4)


class NeuraltalkError(ValueError):
    """A problem with the neuraltalk feature file or its match with dataset.json; names the file."""


def _load_v73(path: str) -> np.ndarray:
    try:
        import h5py
    except ImportError:
        raise NeuraltalkError(f"{path} is a MATLAB v7.3 (HDF5) file; reading it needs h5py (pip install h5py), "
                              "or re-save it in MATLAB with save(..., '-v7')") from None
    with h5py.File(path, "r") as f:
        if "feats" not in f:
            raise NeuraltalkError(f"{path}: no variable 'feats' (found {sorted(f.keys())})")
        return np.asarray(f["feats"], np.float32).T  # HDF5 keeps MATLAB's column-major layout: (N, D) -> (D, N)


def load_feats(path: str) -> np.ndarray:
    """``vgg_feats.mat`` -> float32 ``(D, N)`` (one column per image, the file's own layout)."""
    import scipy.io

    if not os.path.isfile(path):
        raise NeuraltalkError(f"{path}: feature file not found")
    try:
        mat = scipy.io.loadmat(path, variable_names=["feats"])
    except NotImplementedError:  # scipy's answer for v7.3 (HDF5) files
        feats = _load_v73(path)
    except Exception as exc:
        raise NeuraltalkError(f"{path}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from exc
    else:
        if "feats" not in mat:
            names = sorted(name for name, _, _ in scipy.io.whosmat(path))
            raise NeuraltalkError(f"{path}: no variable 'feats' (found {names})")
        feats = mat["feats"]
    if hasattr(feats, "toarray"):  # saved as a sparse matrix
        feats = feats.toarray()
    feats = np.asarray(feats)
    if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.number):
        raise NeuraltalkError(f"{path}: 'feats' must be a numeric D x N matrix, got {feats.dtype} {feats.shape}")
    return feats.astype(np.float32, copy=False)


def convert_neuraltalk(dataset: str, feats_path: str, out_dir: str, *, min_word_count: int = 5,
                       fold_restval: bool = False, shards_per_split: int = 4,
                       splits: Optional[Sequence[str]] = None, overwrite: bool = False) -> dict:
    """Writes ``{split}-SSSSS-of-NNNNN.tfrecord.gz``, ``vocab.txt`` and ``manifest.json`` to ``out_dir``.

    Column ``imgid`` of ``feats`` is image ``imgid`` (the image's ``imgid`` field, else its position in the
    file). The vocabulary comes from the training split only. Returns the manifest. Raises
    :class:`NeuraltalkError` when the matrix does not match the dataset (naming both files) and
    :class:`karpalign.data.records.DatasetError` for a malformed dataset.json.
    """
    if shards_per_split < 1:
        raise ValueError(f"shards_per_split must be >= 1, got {shards_per_split}")
    if min_word_count < 1:
        raise ValueError(f"min_word_count must be >= 1, got {min_word_count}")
    report = ReadReport()
    records = read_karpathy_json(dataset, fold_restval=fold_restval, check_images=False, report=report)
    feats = load_feats(feats_path)  # (D, N)
    dim, n = feats.shape
    if n != len(records):
        hint = " (it looks transposed: N x D)" if dim == len(records) else ""
        raise NeuraltalkError(f"{feats_path}: 'feats' has {n} columns but {dataset} has {len(records)} images; "
                              f"expected a D x N matrix with one column per image{hint}")
    columns = [r.extra.get("imgid", i) for i, r in enumerate(records)]
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})[:3]
        raise NeuraltalkError(f"{dataset}: imgid values {dup} occur more than once; each names one column of "
                              f"{feats_path}")
    groups = by_split(records)
    if not groups.get("train"):
        raise DatasetError(dataset, None, "split", "no 'train' images; the vocabulary is built from train only")
    splits = tuple(splits) if splits else tuple(sorted(groups))
    unknown = [s for s in splits if s not in groups]
    if unknown:
        raise DatasetError(dataset, None, "split", f"no images in split(s) {unknown}; it has {sorted(groups)}")
    existing = [f for f in os.listdir(out_dir) if f.endswith(".tfrecord.gz") or f == F.MANIFEST] \
        if os.path.isdir(out_dir) else []
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds outputs of an earlier run (e.g. {sorted(existing)[0]}); "
                              "choose a new folder or overwrite")
    for name in existing:
        os.remove(os.path.join(out_dir, name))

    counts = {}
    for split in splits:
        examples = (_example(r, i, feats, feats_path) for i, r in enumerate(records) if r.split == split)
        counts[split] = F.write_shards(examples, out_dir, split, num_shards=shards_per_split)
    vocab = Vocabulary.build(iter_train_tokens(records), min_count=min_word_count)
    vocab.save(os.path.join(out_dir, F.VOCAB))
    written = sum(counts.values())
    F.Manifest(
        feature_dim=int(dim), num_regions=1, counts=counts, proposer=F.ProposerInfo(kind=PROPOSER_NAME, k=0),
        cnn=CNN_NAME, vocab_size=len(vocab), input_records=written, written=written, failed=0,
        extra={"dataset": os.path.abspath(dataset), "features_file": os.path.abspath(feats_path),
               "min_word_count": min_word_count, "fold_restval": fold_restval, "vocab": F.VOCAB,
               "shards_per_split": shards_per_split, "empty_captions_dropped": report.empty_captions},
    ).write(out_dir)
    return F.read_manifest(out_dir)


def _example(record, index: int, feats: np.ndarray, feats_path: str) -> bytes:
    column = record.extra.get("imgid", index)
    if isinstance(column, bool) or not isinstance(column, int) or not 0 <= column < feats.shape[1]:
        raise NeuraltalkError(f"{feats_path}: image {record.image_id} has imgid {column!r}, not a column of the "
                              f"{feats.shape[0]} x {feats.shape[1]} 'feats' matrix")
    vector = feats[:, column][None]  # (1, D)
    if not np.all(np.isfinite(vector)):
        raise NeuraltalkError(f"{feats_path}: column {column} (image {record.image_id}) contains NaN or Inf")
    return F.encode_example(record.image_id, record.split, record.path, vector, FULL_IMAGE_BOX,
                            [(s.raw, s.tokens) for s in record.sentences])
