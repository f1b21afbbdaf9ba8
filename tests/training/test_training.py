import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from karpalign.config import load_config

from karpalign.testing import SMALL_MODEL as SMALL


def _cfg(records, out, *extra):
    return load_config(None, SMALL + [f"data.records_dir={records}", f"runtime.output_dir={out}", *extra])


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    return env


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


MIRRORED = textwrap.dedent("""
    import json, sys
    from karpalign.training.strategy import split_cpu
    split_cpu(2)
    from karpalign.config import load_config
    from karpalign.training.loop import train
    from karpalign.training.tasks import AlignTask
    records, out, small = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    losses = {}
    for name in ("default", "mirrored"):
        for objective, extra in (("ranking", []), ("fragment", ["model.score=defrag", "model.fragment_weight=2"])):
            cfg = load_config(None, small + [f"data.records_dir={records}",
                                             f"runtime.output_dir={out}/{name}-{objective}", "train.steps=4",
                                             "train.eval_every=4", f"runtime.strategy={name}", *extra])
            losses[f"{name}-{objective}"] = train(cfg, AlignTask, progress=False).losses
    print(json.dumps(losses))
""")


def test_mirrored_on_two_cpus_matches_one_device(toy_records, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    done = subprocess.run([sys.executable, str(script), toy_records, str(tmp_path), json.dumps(SMALL)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])
    for objective in ("ranking", "fragment"):  # the fragment objective sums over local images x all sentences
        np.testing.assert_allclose(losses[f"mirrored-{objective}"], losses[f"default-{objective}"],
                                   rtol=2e-3, atol=1e-4)
    assert losses["default-fragment"] != losses["default-ranking"]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_train_together(toy_records, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = _env()
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        cmd = [sys.executable, "-m", "karpalign.cli.train", "--task", "align", "--no-progress",
               "--strategy", "multi_worker_mirrored", "--set", f"data.records_dir={toy_records}",
               "--set", f"runtime.output_dir={tmp_path / 'mw'}", "--set", "train.steps=6",
               "--set", "train.checkpoint_every=3", "--set", "train.eval_every=6"]
        for s in SMALL:
            cmd += ["--set", s]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=400))
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["steps"] == 6
    assert (tmp_path / "mw" / "alignment.keras").exists()
    assert not list((tmp_path / "mw").glob(".worker_*"))


def test_cli_reports_config_and_data_errors(tmp_path, capsys):
    from karpalign.cli.train import main

    assert main(["--task", "align", "--set", "train.stepz=3"]) == 2
    assert "unknown config key 'train.stepz'" in capsys.readouterr().err
    assert main(["--task", "align", "--set", f"data.records_dir={tmp_path}"]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
