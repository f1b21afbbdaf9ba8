"""Ships karpalign to Beam workers: run the job with ``--setup_file ./beam_jobs/setup.py``.

Beam builds a source distribution with this file on the launching machine and installs it on every worker,
so workers run exactly the code that built the pipeline (all DoFns live in ``karpalign.beam`` and are
imported by module path).

This file lives in ``beam_jobs/`` while the package lives one level up, and an sdist cannot include files
outside its own folder. So, when run from ``beam_jobs/``, it copies ``karpalign/``, itself and the worker
requirements into a temporary staging folder and builds there; inside the built sdist (on the workers) the
package already sits next to it and it builds in place.
"""

import atexit
import os
import shutil
import sys
import tempfile

import setuptools

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.abspath(os.path.join(HERE, os.pardir))


def _requirements(folder):
    with open(os.path.join(folder, "requirements.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def _stage() -> str:
    """Copies the package and this build recipe into a fresh folder (the repository stays untouched)."""
    staging = tempfile.mkdtemp(prefix="karpalign-beam-sdist-")
    shutil.copytree(os.path.join(REPO_ROOT, "karpalign"), os.path.join(staging, "karpalign"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.py", "requirements.txt"):
        shutil.copy(os.path.join(HERE, name), staging)
    with open(os.path.join(staging, "MANIFEST.in"), "w", encoding="utf-8") as f:
        f.write("include requirements.txt\n")
    atexit.register(shutil.rmtree, staging, True)
    return staging


if os.path.isdir(os.path.join(HERE, "karpalign")):
    build_dir = HERE  # inside the sdist: the package is right here
else:
    if not os.path.isdir(os.path.join(REPO_ROOT, "karpalign")):
        sys.exit(f"beam_jobs/setup.py: no karpalign package at {REPO_ROOT}; run from a karpalign checkout")
    build_dir = _stage()
    # Output paths given on the command line (Beam passes --dist-dir as an absolute path) stay valid.
    sys.argv = [sys.argv[0]] + [os.path.abspath(a) if os.path.exists(a) else a for a in sys.argv[1:]]
os.chdir(build_dir)

setuptools.setup(
    name="karpalign",
    version="0.1.0",
    description="karpalign (visual-semantic alignment) packaged for Apache Beam workers",
    packages=setuptools.find_packages(include=["karpalign", "karpalign.*"]),
    install_requires=_requirements(build_dir),
    python_requires=">=3.10,<3.13",
)
