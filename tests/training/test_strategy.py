"""Training under tf.distribute strategies: MirroredStrategy on two logical CPUs matches one device, and two
MultiWorkerMirroredStrategy workers (separate processes, TF_CONFIG) train one model together."""

import json
import socket
import subprocess
import sys
import textwrap

import numpy as np

from karpalign.testing import SMALL_MODEL as SMALL
from tests.helpers import subprocess_env as _env


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
