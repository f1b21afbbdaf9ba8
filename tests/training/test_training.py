import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from karpalign.config import load_config

from karpalign.testing import SMALL_MODEL as SMALL
from tests.helpers import subprocess_env


def _cfg(records, out, *extra):
    return load_config(None, SMALL + [f"data.records_dir={records}", f"runtime.output_dir={out}", *extra])


def _env():
    return subprocess_env()


def test_align_training_learns_and_writes_outputs(trained_align):
    out, result = trained_align
    out = Path(out)
    assert result.steps == 120
    # 40 validation images with 2 captions each: chance R@1 is 2.5%; the toy task is easy.
    assert result.best["i2t_R@1"] > 30 and result.best["t2i_R@1"] > 30
    assert np.mean(result.losses[-20:]) < 0.5 * np.mean(result.losses[:5])
    for name in ("alignment.keras", "vocab.txt", "config.yaml", "history.jsonl", "records_manifest.json"):
        assert (out / name).exists(), name
    assert list((out / "tensorboard").iterdir())
    assert [json.loads(l)["step"] for l in open(out / "history.jsonl")] == [60, 120]


@pytest.mark.parametrize("on", ["images"])
def test_caption_training_lowers_validation_perplexity(toy_records, tmp_path, on):
    from karpalign.training.loop import train
    from karpalign.training.tasks import CaptionTask

    cfg = _cfg(toy_records, tmp_path / "gen", "train.steps=80", "train.eval_every=40", "train.optimizer=rmsprop",
               f"train.on={on}")
    result = train(cfg, CaptionTask, progress=False)
    vocab_size = len(open(os.path.join(toy_records, "vocab.txt")).read().split("\n")) - 1
    assert result.best["perplexity"] < vocab_size / 2
    assert (tmp_path / "gen" / "generator.keras").exists()


def test_resume_gives_the_same_model_as_an_uninterrupted_run(toy_records, tmp_path):
    import keras

    from karpalign.training.loop import train
    from karpalign.training.tasks import AlignTask

    extra = ["train.steps=30", "train.checkpoint_every=10", "train.eval_every=30"]
    straight = train(_cfg(toy_records, tmp_path / "a", *extra), AlignTask, progress=False)
    first = train(_cfg(toy_records, tmp_path / "b", *extra), AlignTask, progress=False, stop_after=10)
    assert first.steps == 10
    second = train(_cfg(toy_records, tmp_path / "b", *extra), AlignTask, progress=False)
    assert second.steps == 30 and len(second.losses) == 20
    np.testing.assert_allclose(second.losses, straight.losses[10:], rtol=1e-4, atol=1e-5)
    a = keras.saving.load_model(str(tmp_path / "a" / "alignment.keras"))
    b = keras.saving.load_model(str(tmp_path / "b" / "alignment.keras"))
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(wa.numpy(), wb.numpy(), rtol=1e-4, atol=1e-5)


def test_killed_run_resumes_from_last_checkpoint(toy_records, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "karpalign.cli.train", "--task", "align", "--no-progress",
           "--set", f"data.records_dir={toy_records}", "--set", f"runtime.output_dir={out}",
           "--set", "train.steps=400", "--set", "train.checkpoint_every=5", "--set", "train.eval_every=400"]
    for s in SMALL:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    import tensorflow as tf

    def latest_step():
        # The last *completed* checkpoint is the one the state file names: a kill can land after a checkpoint's
        # files are written but before the state file records it, and resuming rightly ignores that one.
        path = tf.train.latest_checkpoint(str(ckpt_dir)) if ckpt_dir.exists() else None
        return int(path.rsplit("-", 1)[1]) if path else 0

    deadline = time.time() + 240
    ckpt_dir = out / "checkpoints"
    while time.time() < deadline and latest_step() < 10:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    last = latest_step()
    assert 10 <= last < 400
    cmd[cmd.index("train.steps=400")] = f"train.steps={last + 5}"
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"at step {last}" in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == last + 5
