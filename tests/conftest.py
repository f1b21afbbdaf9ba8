"""Shared fixtures: a tiny, learnable records folder in the one feature schema."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from karpalign.testing import make_toy_records  # noqa: E402


@pytest.fixture(scope="session")
def toy_records(tmp_path_factory):
    return make_toy_records(str(tmp_path_factory.mktemp("toy_records")))
