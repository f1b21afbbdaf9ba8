"""The end-to-end demo on the embedded synthetic scenes (``karpalign-demo``, ``make demo``): its config, its
step runner, its steps, the development server in a subprocess, and :func:`demo` / :func:`run_demo`.

Steps: generate scenes -> Beam feature extraction -> train the alignment model -> retrieval evaluation -> MRF
alignment -> train the generator on full images and on region snippets -> caption evaluation -> SavedModel
export -> development gRPC server in a subprocess (:class:`DevServer`) -> caption test images with the
client -> report samples -> HTML report. Each step calls the same ``main(argv)`` as its command-line tool, in
this process; :class:`Steps` checks each output, skips a step whose output exists and records timings.json.

Errors are :class:`DemoError` (a step failed; the message names the step) and its subclass
:class:`DemoConfigError` (the config is unreadable or incomplete; the message names the file and the key).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import yaml

from karpalign.config import config_path, read_yaml, recipe_path
from karpalign.report import layout as L  # the demo folder's layout, shared with the report
from karpalign.training.run_dir import RunDir

DEFAULT_CONFIG = recipe_path("demo")  # karpalign/configs/demo.yaml, package data
# The demo's own sections; every other top-level section is the recipe (checked by karpalign.config).
SECTIONS = ("scenes", "retrieval", "mrf", "captions", "serve", "report")
QUICK = "quick"
RECIPE_FILE = "recipe.yaml"  # the resolved recipe in <run>/configs/, the --config of every tool the demo runs
MODEL_NAME = "karpalign"
# Keys the demo reads from its own sections.
REQUIRED = {"scenes": ("num_images", "image_size"), "retrieval": ("splits",), "mrf": ("beta", "splits", "pictures"),
            "captions": ("split", "beam_sizes"), "serve": ("images",), "report": ("samples",)}
# The training runs of the demo: (recipe task section, karpalign-train --task, --on).
RUNS = {"align": ("align", None), "caption": ("caption", "images"), "caption_regions": ("caption", "regions")}


class DemoError(RuntimeError):
    """A step failed; the message names the step and what is wrong."""


class DemoConfigError(DemoError):
    """The demo config cannot be read or lacks a section or key; the message names the file and the key."""


# ---- configuration ------------------------------------------------------------------------------------------


def _deep_merge(base: dict, extra: dict) -> dict:
    """base with extra merged in (nested dicts merged key by key, other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclasses.dataclass
class DemoConfig:
    """The demo config: a recipe (the format of karpalign/configs/*.yaml) plus the demo's own sections.

    ``cfg["scenes"]`` etc. are the demo's sections; ``recipe`` is the recipe part as data and ``runs`` the
    resolved :class:`karpalign.config.Config` of each training run (``align``, ``caption``,
    ``caption_regions``), checked when the file is loaded."""

    path: str
    recipe: dict
    sections: dict
    runs: dict

    def __getitem__(self, section: str) -> dict:
        return self.sections[section]

    def write_recipe(self, folder: str, dataset: str, records_dir: str, region_records_dir: str) -> str:
        """The recipe with the demo's data paths filled in, as ``folder/recipe.yaml``; returns its path."""
        recipe = _deep_merge(self.recipe, {"data": {"dataset": dataset, "records_dir": records_dir,
                                                    "region_records_dir": region_records_dir}})
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, RECIPE_FILE)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# written by karpalign-demo from {self.path}\n")
            yaml.safe_dump(recipe, f, sort_keys=False)
        return path


def load_demo_config(path: str, quick: bool = False) -> DemoConfig:
    """Reads the demo config (and applies its ``quick`` overrides); errors name the file and the key."""
    from karpalign.config import RECIPE_SECTIONS, ConfigError, config_from_dict

    path = config_path(path, DemoConfigError, "demo config", hint=" (pass --config)")
    raw = read_yaml(path, DemoConfigError, "demo config", hint=" (pass --config)")
    if not isinstance(raw, dict):
        raise DemoConfigError(f"demo config {path}: expected a mapping of sections, got {type(raw).__name__}")
    if quick:
        overrides = raw.get(QUICK) or {}
        if not isinstance(overrides, dict):
            raise DemoConfigError(f"demo config {path}: {QUICK}: expected a mapping of sections")
        raw = _deep_merge(raw, overrides)
    raw = {k: v for k, v in raw.items() if k != QUICK}
    unknown = sorted(set(raw) - set(SECTIONS) - set(RECIPE_SECTIONS))
    if unknown:
        raise DemoConfigError(f"demo config {path}: unknown sections {unknown}; known: the recipe's "
                              f"{list(RECIPE_SECTIONS)}, the demo's {list(SECTIONS)} and {QUICK!r}")
    missing = [s for s in SECTIONS if not isinstance(raw.get(s), dict)]
    if missing:
        raise DemoConfigError(f"demo config {path}: sections {missing} are missing or not mappings")
    sections = {s: raw[s] for s in SECTIONS}
    for section, keys in REQUIRED.items():
        absent = [k for k in keys if sections[section].get(k) in (None, "", [])]
        if absent:
            raise DemoConfigError(f"demo config {path}: {section}: keys {absent} are missing")
    recipe = {k: v for k, v in raw.items() if k not in SECTIONS}
    runs = {}
    for name, (task, on) in RUNS.items():
        sets = [f"train.task={task}"] + ([f"train.on={on}"] if on else [])
        try:
            runs[name] = config_from_dict(recipe, sets, f"demo config {path}")
        except ConfigError as e:
            raise DemoConfigError(str(e)) from None
    return DemoConfig(path=path, recipe=recipe, sections=sections, runs=runs)


# ---- running steps ------------------------------------------------------------------------------------------


class Steps:
    """Runs named steps in order: skips finished ones, times the rest, records both in timings.json."""

    def __init__(self, out_dir: str, total: int):
        self.out_dir, self.total, self.n = out_dir, total, 0
        self.path = os.path.join(out_dir, L.TIMINGS)
        self.timings = {}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.timings = json.load(f)

    def run(self, name: str, done, fn, always: bool = False) -> None:
        """Runs fn unless done() already holds (``always``: run anyway); afterwards done() must hold."""
        self.n += 1
        head = f"[demo {self.n}/{self.total}] {name}"
        if not always and done():
            print(f"{head}: already done, reusing its output", file=sys.stderr, flush=True)
            self.timings.setdefault(name, {"seconds": None})["reused"] = True
            self._save()
            return
        print(f"{head} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        try:
            fn()
        except DemoError as e:
            raise DemoError(f"step '{name}' failed: {e}") from None
        if not done():
            raise DemoError(f"step '{name}' finished but its output is missing")
        seconds = time.time() - t0
        self.timings[name] = {"seconds": round(seconds, 1), "reused": False}
        self._save()
        print(f"{head}: done in {seconds:.1f}s", file=sys.stderr, flush=True)

    def _save(self) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(self.timings, f, indent=2)


def _call(main, argv: list[str], what: str) -> None:
    """Runs a CLI main(argv) in this process; a non-zero exit becomes a DemoError."""
    print(f"  $ {what} {' '.join(argv)}", file=sys.stderr, flush=True)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    if code not in (0, None):
        raise DemoError(f"{what} exited with code {code} (its message is above)")


def _json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---- the steps ----------------------------------------------------------------------------------------------


def make_scenes(cfg: DemoConfig, p: L.Paths) -> None:
    from karpalign.cli.make_scenes import main

    s = cfg["scenes"]
    _call(main, ["--num-images", str(s["num_images"]), "--image-size", str(s["image_size"]),
                 "--seed", str(s.get("seed", 0)), "--out", p.scenes], "karpalign-make-scenes")


def recipe_file(cfg: DemoConfig, p: L.Paths) -> str:
    """Writes the demo's recipe (with its folders as the data paths) to <run>/configs/recipe.yaml."""
    return cfg.write_recipe(p.configs, p.dataset, p.records, p.regions)


def extract(cfg: DemoConfig, p: L.Paths) -> None:
    from karpalign.cli.extract import main

    _call(main, ["--config", recipe_file(cfg, p), "--overwrite"], "karpalign-extract")
    from karpalign.data import features as F

    manifest = F.read_manifest(p.records)
    if not manifest.written or not manifest.counts.get("train"):
        raise DemoError(f"{manifest.path}: no training images were written ({manifest.counts})")


def train(cfg: DemoConfig, p: L.Paths, run: str, out_dir: str) -> None:
    """karpalign-train for one of the demo's runs (:data:`RUNS`) with the demo's recipe."""
    from karpalign.cli.train import main

    task, on = RUNS[run]
    argv = ["--task", task, "--config", recipe_file(cfg, p), "--output-dir", out_dir]
    if on:
        argv += ["--on", on]
    _call(main, argv, "karpalign-train")


def retrieval(cfg: DemoConfig, p: L.Paths) -> None:
    from karpalign.cli.eval import main

    for split in cfg["retrieval"]["splits"]:
        _call(main, ["retrieval", "--model-dir", p.align, "--records-dir", p.records, "--split", split,
                     "--out", p.retrieval_json(split)], "karpalign-eval")


def mrf_align(cfg: DemoConfig, p: L.Paths) -> None:
    from karpalign.cli.align import main

    m = cfg["mrf"]
    tune = ["--tune-beta", ",".join(str(b) for b in m["tune_beta"])] if m.get("tune_beta") else []
    _call(main, ["--model-dir", p.align, "--records-dir", p.records, "--out", p.regions, "--dataset", p.dataset,
                 "--beta", str(m["beta"]), *tune, "--splits", ",".join(m["splits"]),
                 "--pictures", str(m["pictures"]), "--pictures-split", "test"], "karpalign-align")
    result = _json(p.alignment_json)
    if not result.get("train", {}).get("snippets"):
        raise DemoError(f"{p.alignment_json}: no training snippets were produced, the region generator has no data")


def caption_eval(cfg: DemoConfig, p: L.Paths) -> None:
    """Full-frame captions at each beam size (the largest also runs the nearest-neighbour baseline), and both
    generators captioning the ground-truth boxes (the paper's region-level comparison)."""
    from karpalign.cli.eval import main

    c = cfg["captions"]
    split, beams = c["split"], [int(b) for b in c["beam_sizes"]]
    limit = ["--max-images", str(c["max_images"])] if c.get("max_images") else []
    for beam in beams:
        length = cfg.runs["caption"].decode.max_length
        extra = ["--baseline", "nn"] if beam == max(beams) else []
        _call(main, ["captions", "--model-dir", p.caption, "--records-dir", p.records, "--split", split,
                     "--beam-size", str(beam), "--max-length", str(length), "--out",
                     p.captions_json(p.caption, split, beam)] + limit + extra, "karpalign-eval")
    beam = max(beams)
    runs = [p.caption_regions] + ([p.caption] if c.get("region_baseline", True) else [])
    for run in runs:
        _call(main, ["region-captions", "--model-dir", run, "--records-dir", p.records, "--dataset", p.dataset,
                     "--split", split, "--beam-size", str(beam),
                     "--max-length", str(cfg.runs["caption_regions"].decode.max_length),
                     "--out", p.region_captions_json(run, split, beam)] + limit, "karpalign-eval")


def caption_eval_done(cfg: DemoConfig, p: L.Paths) -> bool:
    c = cfg["captions"]
    beams = [int(b) for b in c["beam_sizes"]]
    paths = [p.captions_json(p.caption, c["split"], b) for b in beams]
    runs = [p.caption_regions] + ([p.caption] if c.get("region_baseline", True) else [])
    paths += [p.region_captions_json(r, c["split"], max(beams)) for r in runs]
    return all(os.path.exists(x) for x in paths)


def export(cfg: DemoConfig, p: L.Paths) -> None:
    from karpalign.cli.export import main

    # The demo's records hold the scenes' own boxes, which serving cannot know: it proposes a grid (explicitly).
    _call(main, ["--align-dir", p.align, "--caption-dir", p.caption, "--records-dir", p.records,
                 "--export-base", p.export, "--model-name", MODEL_NAME, "--version", "1", "--proposer", "grid"],
          "karpalign-export")


def export_dir(p: L.Paths) -> str:
    return os.path.join(p.export, MODEL_NAME, "1")


def test_images(records_dir: str, split: str, n: int) -> list[dict]:
    """The first n images of a split in record order: image_id, path, boxes (valid regions), references."""
    from karpalign.data import pipeline as P

    out = []
    for batch in P.image_dataset(records_dir, split, batch_size=max(1, min(n, 32)), max_images=n):
        for i in range(len(batch["image_id"])):
            valid = batch["region_mask"][i].numpy() > 0  # (R,)
            out.append({"image_id": batch["image_id"][i].numpy().decode(),
                        "path": batch["path"][i].numpy().decode(),
                        "boxes": batch["boxes"][i].numpy()[valid].tolist(),
                        "references": [s.decode() for s in batch["sentences_raw"][i].numpy().tolist()]})
    return out


class DevServer:
    """karpalign-serve in a subprocess on a free loopback port (port 0; the bound port is read from its log)."""

    READY = re.compile(r"serving model .* on (\S+:\d+)")

    def __init__(self, base_path: str, model_name: str, log_path: str):
        self.log = open(log_path, "w", encoding="utf-8")
        cmd = [sys.executable, "-m", "karpalign.cli.serve", "--model-base-path", base_path, "--model-name",
               model_name, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"]
        print(f"  $ {' '.join(cmd)}", file=sys.stderr, flush=True)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.PIPE, text=True)
        self.address = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.log.write(line)
            self.log.flush()
            match = self.READY.search(line)
            if match and not self._ready.is_set():
                self.address = match.group(1)
                self._ready.set()
        self._ready.set()  # the process ended

    def wait_ready(self, timeout: float) -> str:
        if not self._ready.wait(timeout) or self.address is None:
            code = self.proc.poll()
            state = f"exited with code {code}" if code is not None else f"not ready after {timeout:.0f}s"
            raise DemoError(f"karpalign-serve {state}; see its log {self.log.name}")
        return self.address

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        self.log.close()
        return self.proc.returncode


def serve_and_caption(cfg: DemoConfig, p: L.Paths) -> None:
    """Starts the server, captions the first test images over gRPC with the client, stops the server."""
    from karpalign.serving.client import CaptionClient, ServingError, read_image_files

    s = cfg["serve"]
    images = test_images(p.records, cfg["captions"]["split"], int(s["images"]))
    server = DevServer(p.export, MODEL_NAME, os.path.join(p.run, "serve.log"))
    try:
        address = server.wait_ready(float(s.get("start_timeout", 300)))
        print(f"  server ready on {address}", file=sys.stderr, flush=True)
        t0 = time.time()
        with CaptionClient(address, MODEL_NAME, timeout=120.0) as client:
            results = client.caption(read_image_files([im["path"] for im in images]))
        seconds = time.time() - t0
    except ServingError as e:
        raise DemoError(f"gRPC captioning failed: {e}") from None
    finally:
        code = server.stop()
        print(f"  server stopped (exit code {code})", file=sys.stderr, flush=True)
    served = {"address": address, "model": MODEL_NAME, "seconds": round(seconds, 3), "images": [
        {"image_id": im["image_id"], "path": im["path"], "captions": [[t, float(sc)] for t, sc in caps]}
        for im, caps in zip(images, results)]}
    for im in served["images"]:
        print(f"  {os.path.basename(im['path'])}: {im['captions'][0][0] if im['captions'] else '(none)'}",
              file=sys.stderr)
    with open(p.served, "w", encoding="utf-8") as f:
        json.dump(served, f, indent=2)


def write_samples(cfg: DemoConfig, p: L.Paths) -> None:
    """samples.json: the first test images with boxes, the MRF alignment of their first sentence, references,
    and the generated captions of every beam size and the nn baseline (from the evaluation outputs)."""
    c = cfg["captions"]
    split, beams = c["split"], [int(b) for b in c["beam_sizes"]]
    images = test_images(p.records, split, int(cfg["report"]["samples"]))
    aligned = {}
    with open(os.path.join(p.regions, f"snippets-{split}.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["sentence"] == 0:
                aligned[row["image_id"]] = {"tokens": row["tokens"], "assignment": row["assignment"]}
    generated = {}
    for beam in beams:
        evaluation = _json(p.captions_json(p.caption, split, beam))
        for sample in evaluation["samples"]:
            entry = generated.setdefault(sample["image_id"], {})
            entry[f"beam {beam}"] = sample["generated"]
            if "nn" in sample:
                entry["nearest neighbour"] = sample["nn"]
    served = {}
    if os.path.exists(p.served):
        served = {im["image_id"]: im["captions"][0][0] for im in _json(p.served)["images"] if im["captions"]}
    samples = []
    for im in images:
        captions = dict(generated.get(im["image_id"], {}))
        if im["image_id"] in served:
            captions["served (gRPC, beam 7)"] = served[im["image_id"]]
        samples.append({**im, **aligned.get(im["image_id"], {}), "captions": captions})
    with open(p.samples, "w", encoding="utf-8") as f:
        json.dump({"split": split, "samples": samples}, f, indent=2)


# ---- running the demo ---------------------------------------------------------------------------------------


def run_demo(out_dir: str, cfg: DemoConfig) -> str:
    """Runs every step (skipping finished ones) and returns the report's path."""
    p = L.Paths(out_dir)
    os.makedirs(p.run, exist_ok=True)
    split, beams = cfg["captions"]["split"], [int(b) for b in cfg["captions"]["beam_sizes"]]
    steps = Steps(p.run, total=12)
    exists = os.path.exists
    steps.run("generate synthetic scenes", lambda: exists(p.dataset), lambda: make_scenes(cfg, p))
    steps.run("extract region features (Beam, EfficientNet-Lite0)",
              lambda: exists(os.path.join(p.records, "manifest.json")), lambda: extract(cfg, p))
    steps.run("train the alignment model", lambda: RunDir(p.align, "align").has_model(),
              lambda: train(cfg, p, "align", p.align))
    steps.run("retrieval evaluation", lambda: all(exists(p.retrieval_json(s)) for s in cfg["retrieval"]["splits"]),
              lambda: retrieval(cfg, p))
    steps.run("MRF alignment (snippets, accuracy, pictures)", lambda: exists(p.alignment_json),
              lambda: mrf_align(cfg, p))
    steps.run("train the generator on full images", lambda: RunDir(p.caption, "caption").has_model(),
              lambda: train(cfg, p, "caption", p.caption))
    steps.run("train the generator on region snippets",
              lambda: RunDir(p.caption_regions, "caption").has_model(),
              lambda: train(cfg, p, "caption_regions", p.caption_regions))
    steps.run(f"caption evaluation ({split} split, beam {'/'.join(map(str, beams))}, nn baseline)",
              lambda: caption_eval_done(cfg, p), lambda: caption_eval(cfg, p))
    steps.run("export the SavedModel", lambda: exists(os.path.join(export_dir(p), "saved_model.pb")),
              lambda: export(cfg, p))
    steps.run("serve over gRPC and caption test images", lambda: exists(p.served),
              lambda: serve_and_caption(cfg, p))
    steps.run("collect report samples", lambda: exists(p.samples), lambda: write_samples(cfg, p))

    def report():
        from karpalign.report.build import build_report

        build_report(p.run)

    steps.run("write the report", lambda: exists(os.path.join(p.report, "index.html")), report, always=True)
    return os.path.join(p.report, "index.html")


def demo(out_dir: str, config: str = DEFAULT_CONFIG, *, quick: bool = False, fresh: bool = False) -> str:
    """Loads ``config`` (a YAML file or a packaged recipe name; ``quick``: with its ``quick`` overrides), with
    ``fresh`` deletes ``out_dir``'s earlier outputs, runs the demo and returns the report's path.

    Raises DemoConfigError when the config is bad (before anything is deleted or run), DemoError when a step
    fails.
    """
    cfg = load_demo_config(config, quick=quick)
    if fresh and os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    return run_demo(out_dir, cfg)
