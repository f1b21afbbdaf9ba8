"""Shared fixtures: a tiny, learnable records folder in the one feature schema."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from karpalign.testing import SMALL_MODEL, make_toy_records  # noqa: E402


@pytest.fixture(scope="session")
def toy_records(tmp_path_factory):
    return make_toy_records(str(tmp_path_factory.mktemp("toy_records")))


@pytest.fixture(scope="session")
def trained_align(toy_records, tmp_path_factory):
    """An alignment model trained on the toy records (120 steps); returns (output dir, TrainResult)."""
    from karpalign.config import load_config
    from karpalign.training.loop import train
    from karpalign.training.tasks import AlignTask

    out = str(tmp_path_factory.mktemp("trained_align"))
    cfg = load_config(None, SMALL_MODEL + [f"data.records_dir={toy_records}", f"runtime.output_dir={out}",
                                           "train.steps=120", "train.eval_every=60"])
    return out, train(cfg, AlignTask, progress=False)
