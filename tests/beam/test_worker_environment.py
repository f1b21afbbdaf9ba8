"""Issue 19 (c): Beam workers whose environment is built from beam_jobs/requirements.txt alone run the default
extraction job (EfficientNet-Lite0).

A fresh virtual environment gets what a worker gets on the setup-file route: Beam itself (which the SDK
container brings; the requirements leave it out on purpose), beam_jobs/requirements.txt, and karpalign as the
sdist that ``--setup_file ./beam_jobs/setup.py`` builds (installed with its declared requirements, the same
list). A Beam worker pool runs on that environment's ``python``; the launcher stays in this environment and
runs the job with ``--runner PortableRunner --job_endpoint embed --environment_type EXTERNAL``. The workers
convert the EfficientNet-Lite0 weights into a cache of their own.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from karpalign.beam import local_clusters

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(cmd, timeout, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def worker_python(tmp_path_factory):
    """The fresh worker environment's interpreter (and how long building it took)."""
    from importlib.metadata import version

    root = tmp_path_factory.mktemp("worker_env")
    start = time.perf_counter()
    _run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(root / "dist")], 300,
         cwd=os.path.join(REPO, "beam_jobs"))
    (sdist,) = [str(root / "dist" / f) for f in os.listdir(root / "dist") if f.endswith(".tar.gz")]
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], 300)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    _run([python, "-m", "pip", "install", "--quiet", f"apache-beam=={version('apache-beam')}", "-r",
          os.path.join(REPO, "beam_jobs", "requirements.txt"), sdist], 600, env=env, cwd=str(root))
    return python, time.perf_counter() - start


def test_the_worker_environment_holds_only_the_worker_set(worker_python, tmp_path):
    python, _ = worker_python
    probe = _run([python, "-c", "import importlib.util as u, json, karpalign; print(json.dumps({'karpalign': "
                  "karpalign.__file__, 'missing': [m for m in ('pytest', 'tensorflow_text', 'tensorflow_serving', "
                  "'matplotlib', 'pycocoevalcap', 'dask') if u.find_spec(m)]}))"], 60, cwd=str(tmp_path))
    found = json.loads(probe.stdout)
    assert found["missing"] == []  # launcher-only and test-only packages are not there
    assert found["karpalign"].startswith(os.path.dirname(os.path.dirname(python)))  # the sdist, not the checkout


def test_default_backbone_on_workers_built_from_the_requirements(worker_python, scenes, tmp_path, monkeypatch):
    from karpalign.beam.job import extract_config, run_extract
    from karpalign.data.features import read_manifest
    from tests.beam.outputs import read_local_run

    python, _ = worker_python
    data = json.load(open(scenes))
    data["images"] = [img for img in data["images"] if img["split"] == "train"][:3]
    dataset = os.path.join(os.path.dirname(scenes), "three.json")
    with open(dataset, "w") as f:
        json.dump(data, f)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(KARPALIGN_CACHE=str(tmp_path / "worker_cache"), TF_CPP_MIN_LOG_LEVEL="2")
    elsewhere = tmp_path / "elsewhere"  # the SDK workers' working folder: not the checkout
    elsewhere.mkdir()
    settings = dict(cnn="efficientnet_lite0", crop_size=64, proposer="boxes", regions=2, min_word_count=1,
                    shards_per_split=1, batch_size=4, progress_every=0)
    with local_clusters.worker_pool(str(tmp_path), env, python=python, cwd=str(elsewhere)) as (address, pool):
        run_extract(extract_config(dataset, str(tmp_path / "pool"), **settings),
                    ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL",
                     f"--environment_config={address}"])
        assert local_clusters.started_sdk_workers(pool)
    assert os.listdir(tmp_path / "worker_cache"), "the workers converted the weights into their own cache"
    manifest = read_manifest(str(tmp_path / "pool"))
    assert manifest.written == 3 and manifest.failed == 0 and manifest.feature_dim == 1280
    assert manifest.cnn == "efficientnet_lite0"

    run_extract(extract_config(dataset, str(tmp_path / "local"), **settings))  # in this environment
    pool_run, local_run = read_local_run(str(tmp_path / "pool")), read_local_run(str(tmp_path / "local"))
    assert sorted(pool_run["records"]) == sorted(local_run["records"])
    for image_id, record in pool_run["records"].items():
        feats = record["region_features"][record["region_mask"] > 0]
        assert np.isfinite(feats).all() and feats.std() > 0
        np.testing.assert_allclose(feats, local_run["records"][image_id]["region_features"][
            record["region_mask"] > 0], rtol=1e-4, atol=1e-5)
