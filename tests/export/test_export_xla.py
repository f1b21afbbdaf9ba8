"""The default export XLA-compiles the caption signatures' beam search; ``--no-xla`` writes the plain graph.

What each asks of the serving binary: TF Serving's ``tensorflow_model_server`` disables XLA compilation unless it
is started with ``--xla_cpu_compilation_enabled=true``. ``_xla_runner.py`` loads a SavedModel the way TF Serving
does (a session), in a process that imports only TensorFlow, after calling the same ``DisableXlaCompilation``.
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from tensorflow.core.protobuf import saved_model_pb2

from karpalign.config import DecodeConfig
from karpalign.export.saved_model import build_export_module, write_saved_model
from karpalign.testing import make_toy_records, untrained_runs
from tests.helpers import subprocess_env

D, MAX_WORDS = 16, 8
RUNNER = os.path.join(os.path.dirname(__file__), "_xla_runner.py")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("xla_export"))
    records = make_toy_records(os.path.join(root, "records"), feature_dim=D, num_regions=3, num_train=20,
                               num_val=4, num_test=4, shards=1)
    runs = untrained_runs(root, records, D, MAX_WORDS)
    decode = DecodeConfig(beam_size=3, max_length=6, top_k=2, alpha=0.0, min_length=1)
    paths = {}
    for version, jit in ((1, True), (2, False)):
        module = build_export_module(runs["align"], runs["caption"], records, decode=decode, with_images=False,
                                     config_dir=root, jit_compile=jit)
        paths[jit] = write_saved_model(module, os.path.join(root, "models"), version=version, warmup=False)
    return paths


def _xla_functions(saved_model_dir):
    """Names of the SavedModel's functions marked _XlaMustCompile, with the op types of each."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    library = proto.meta_graphs[0].graph_def.library.function
    return {fn.signature.name: {node.op for node in fn.node_def} for fn in library
            if "_XlaMustCompile" in fn.attr and fn.attr["_XlaMustCompile"].b}


def _run(saved_model_dir, tmp_path, *flags):
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(4, 3, D)).astype(np.float32)
    calls = {"caption_features": ("caption_features", {"region_features": feats,
                                                       "region_mask": np.ones((4, 3), np.float32)}),
             "embed_images": ("embed_images", {"region_features": feats, "region_mask": np.ones((4, 3), np.float32)})}
    inputs, outputs = tmp_path / "in.pkl", tmp_path / "out.pkl"
    with open(inputs, "wb") as f:
        pickle.dump(calls, f)
    proc = subprocess.run([sys.executable, RUNNER, saved_model_dir, str(inputs), str(outputs), *flags],
                          capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(outputs, "rb") as f:
        return pickle.load(f)


def test_only_the_default_export_compiles_the_beam_search_with_xla(exports):
    compiled = _xla_functions(exports[True])
    assert compiled, "the default export has no XLA-compiled function"
    ops = set().union(*compiled.values())
    assert "While" in ops or "StatelessWhile" in ops  # the beam search's loop is inside
    assert not any(op.startswith(("String", "Lookup")) for op in ops)  # ids become text outside XLA
    assert _xla_functions(exports[False]) == {}


def test_a_server_without_xla_runs_the_no_xla_export_and_refuses_the_xla_one(exports, tmp_path):
    refused = _run(exports[True], tmp_path, "--disable-xla")
    assert "XLA compilation disabled" in refused["caption_features"]["error"]
    assert "error" not in refused["embed_images"]  # only the beam search needs XLA
    served = _run(exports[False], tmp_path, "--disable-xla")
    assert "error" not in served["caption_features"] and served["caption_features"]["captions"].shape == (4, 2)


def test_both_exports_give_the_same_captions(exports, tmp_path):
    xla, graph = _run(exports[True], tmp_path), _run(exports[False], tmp_path)
    a, b = xla["caption_features"], graph["caption_features"]
    assert "error" not in a and "error" not in b
    assert len(set(a["captions"][:, 0])) > 1  # untrained, but different images get different captions
    np.testing.assert_array_equal(a["captions"], b["captions"])
    np.testing.assert_array_equal(a["token_ids"], b["token_ids"])
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=0, atol=1e-5)
