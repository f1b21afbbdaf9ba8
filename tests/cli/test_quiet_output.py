"""Quiet output: the karpalign tools print progress and results, not library start-up noise.

Each test would fail if its noise came back: TensorFlow's C++ start-up lines (oneDNN, CUDA, CPU features, the
absl banner), Beam's GCP-extras notices and Prism download, the export's "contains input name(s)" notes, and
tf.function retracing warnings from the alignment assigner and the backbones.
"""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from karpalign.cli import DEFAULT_TF_CPP_MIN_LOG_LEVEL, LOGS_SWITCH, filter_native_startup
from karpalign.testing import make_toy_records, untrained_runs

NATIVE_NOISE = ("cpu_feature_guard", "oneDNN", "cudart_stub", "cuda_platform", "cuInit",
                "absl::InitializeLog", "Could not find cuda drivers")

# What a karpalign tool does first: import karpalign.cli (as every entry point does), then TensorFlow and
# Beam with INFO logging on (as karpalign-extract configures it), then run an op; a child process reports
# whether it inherits the C++ log level.
_CHILD = """
import logging, os, subprocess, sys
import karpalign.cli
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
import tensorflow as tf
print("sum", int(tf.reduce_sum(tf.constant([1, 2, 3]))))
import apache_beam
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"],
                       capture_output=True, text=True, check=True)
print("child level", child.stdout.strip())
print("python levels", logging.getLogger("absl").getEffectiveLevel(), logging.getLogger("tensorflow").level)
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", LOGS_SWITCH)}
    env.update(extra)
    return env


def test_tool_start_up_prints_no_tensorflow_or_beam_noise():
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=_env(),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "sum 6" in proc.stdout
    assert f"child level {DEFAULT_TF_CPP_MIN_LOG_LEVEL}" in proc.stdout  # subprocesses inherit the level
    assert f"python levels {logging.WARNING} {logging.WARNING}" in proc.stdout  # TF's INFO stays off
    noise = [line for line in proc.stderr.splitlines() if any(n in line for n in NATIVE_NOISE)]
    assert not noise, proc.stderr
    assert "apitools" not in proc.stderr and "bigquery_storage" not in proc.stderr, proc.stderr


def test_switch_keeps_tensorflows_own_log_level():
    code = "import os, karpalign.cli; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=_env(**{LOGS_SWITCH: "1"}), check=True)
    assert shown.stdout.strip() == "None"  # not set: TensorFlow's default level applies
    user = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=_env(TF_CPP_MIN_LOG_LEVEL="0"), check=True)
    assert user.stdout.strip() == "0"  # a level the user set is kept


def test_native_start_up_filter_keeps_errors_and_other_output():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1796161377.635065    3844 port.cc:153] oneDNN custom operations are on.\n"
            "I0000 00:00:1796161377.636018    3844 cudart_stub.cc:31] Could not find cuda drivers on your "
            "machine, GPU will not be used.\n"
            "W0000 00:00:1796161377.680982    3844 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
            "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n"
            "/some/module.py:3: UserWarning: a real warning\n"
            "E0000 00:00:1796161381.158959    3844 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
            "E0000 00:00:1796161381.158959    3844 other.cc:1] a real error\n")
    kept = filter_native_startup(text, 2)
    assert kept == "/some/module.py:3: UserWarning: a real warning\n" \
                   "E0000 00:00:1796161381.158959    3844 other.cc:1] a real error\n"
    assert filter_native_startup(text, 0) == text  # TF_CPP_MIN_LOG_LEVEL=0 shows everything
    with_drivers = text.replace("Could not find cuda drivers", "Found drivers")
    assert "cuInit" in filter_native_startup(with_drivers, 2)  # a real CUDA failure is kept


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("quiet"))
    records = make_toy_records(os.path.join(root, "records"), feature_dim=8, num_regions=3, num_train=12,
                               num_val=7, num_test=5, shards=1)
    return records, untrained_runs(root, records, 8, 6)


def _retracing(caplog):
    # tf.function's retracing warning goes to the "tensorflow" logger (polymorphic_function.py).
    return [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()]


def test_export_logs_no_capture_renaming_notes(tiny_runs, tmp_path, caplog):
    from karpalign.export.saved_model import build_export_module, write_saved_model

    records, runs = tiny_runs
    module = build_export_module(runs["align"], runs["caption"], records, with_images=False,
                                 config_dir=str(tmp_path))
    assert b"caption_features" in module.signatures()["caption_features"].name  # named, not <lambda>
    # TensorFlow logs these notes through absl's logger, other saving notes through "tensorflow".
    with caplog.at_level(logging.INFO, logger="absl"), caplog.at_level(logging.INFO, logger="tensorflow"):
        write_saved_model(module, str(tmp_path / "models"), warmup=False)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "contains input name(s)" in m], messages
    assert any("Assets written to" in m for m in messages)  # TensorFlow's other logs still pass


def test_assigner_traces_once_for_every_batch_size_split_and_beta(tiny_runs, caplog):
    from karpalign.alignment.job import _ASSIGN_FUNCTIONS, _assigner
    from karpalign.data import pipeline as P
    from karpalign.training.run_dir import RunDir

    records, runs = tiny_runs
    model = RunDir(runs["align"], "align").check().load_alignment()
    table = P.vocab_table(records)
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for beta in (0.5, 1.0, 2.0, 4.0, 8.0, 16.0):
            assign = _assigner(model, beta)
            for split, batch_size in (("train", 5), ("val", 3), ("test", 4)):
                for batch in P.image_dataset(records, split, batch_size=batch_size):
                    tokens = batch["tokens"]
                    ids, wmask = P.token_ids(tokens.values, table, 6)
                    assignment, unary = assign(batch["region_features"], batch["region_mask"],
                                               tokens.value_rowids(), ids, wmask)
                    assert assignment.shape == ids.shape and unary.shape[-1] == 3
    (function,) = _ASSIGN_FUNCTIONS[model].values()
    assert function.experimental_get_tracing_count() == 1
    # TensorFlow's "N out of the last M calls ... triggered retracing" warning counts traces per Python code
    # object across every model of the process, so earlier tests' models would trip it here (it passes when this
    # file runs alone); the tracing count above is the per-model fact that the warning stood for.


def test_backbones_made_one_after_another_do_not_read_as_retracing(caplog):
    import tensorflow as tf

    from karpalign.vision.backbones import Backbone

    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        for i in range(6):
            backbone = Backbone(f"toy{i}", (16, 16), (0.0, 1.0), lambda x: tf.reduce_mean(x, axis=[1, 2]))
            for size in (16, 24):
                assert backbone(np.zeros((2 + i, size, size, 3), np.float32)).shape == (2 + i, 3)
            assert backbone._chunked.experimental_get_tracing_count() == 1
    assert not _retracing(caplog)


def test_beam_job_chooses_the_local_runner_without_prism(caplog):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    from karpalign.beam.job import _runner

    assert _runner(PipelineOptions(["--runner=DirectRunner"])) == (None, "DirectRunner")  # given: used as is
    options = PipelineOptions([])
    runner, name = _runner(options)
    assert isinstance(runner, FnApiRunner) and "FnApiRunner" in name
    with caplog.at_level(logging.INFO):
        with beam.Pipeline(runner=runner, options=options) as p:
            assert_that(p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x * 2), equal_to([2, 4, 6]))
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Prism" in m or "prism" in m], messages
