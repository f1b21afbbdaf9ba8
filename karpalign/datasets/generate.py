"""Synthetic captioned scenes, part 3: the dataset writer (splits, held-out compositions, workers, files).

Output in ``out_dir``: ``images/<imgid>.jpg``, a Karpathy-format ``dataset.json`` (with the scenes' extra
fields ``boxes``, ``objects``, ``background`` and per-sentence ``phrases``) and ``scenes_meta.json`` with
the generator settings.

Reproducibility: image ``i`` is drawn from its own generator seeded by ``(seed, 2, i)`` and split assignment
and held-out pairs from ``(seed, 0)`` and ``(seed, 1)``, never from process state, so the same arguments give
byte-identical files whatever the number of workers.

Compositional split: a fixed set of (colour, shape) pairs, chosen from the seed with every colour and every
shape used at most once (so each still occurs in training with other partners), never appears in
train/val/test; every ``test_novel`` image contains at least one of them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from typing import Mapping

import numpy as np
from PIL import Image

from karpalign.datasets.captions import describe_scene
from karpalign.datasets.scenes import (BACKGROUND_KINDS, COLOURS, SHAPES, SIZES, all_pairs,
                                       render_scene_array, sample_scene, scene_layout)

SPLIT_NAMES = ("train", "val", "test", "test_novel")
DEFAULT_SPLIT_FRACTIONS = {"train": 0.8, "val": 0.05, "test": 0.075, "test_novel": 0.075}
_SPLIT_STREAM, _HELDOUT_STREAM, _IMAGE_STREAM = 0, 1, 2


class ScenesError(ValueError):
    """Bad generator arguments or an unusable output directory (the CLI turns it into exit code 2)."""


# ----------------------------------------------------------------------------------------------------------
# Splits and held-out pairs: functions of (seed, N, fractions) only.

def parse_split_fractions(text: str) -> dict[str, float]:
    """``"train=0.8,val=0.05,test=0.075,test_novel=0.075"`` or four numbers in that order -> dict."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if parts and all("=" in p for p in parts):
            pairs = [p.split("=", 1) for p in parts]
            fractions = {k.strip(): float(v) for k, v in pairs}
            if len(fractions) != len(pairs):
                raise ScenesError(f"split fractions {text!r} name a split twice")
        elif len(parts) == len(SPLIT_NAMES) and not any("=" in p for p in parts):
            fractions = dict(zip(SPLIT_NAMES, (float(p) for p in parts)))
        else:
            raise ScenesError(f"split fractions {text!r}: give 'train=F,val=F,test=F,test_novel=F' "
                              f"or four numbers for {', '.join(SPLIT_NAMES)}")
    except ValueError as e:
        if isinstance(e, ScenesError):
            raise
        raise ScenesError(f"split fractions {text!r}: {e}") from None
    return validate_split_fractions(fractions)


def validate_split_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Checks names, finiteness, non-negativity and a sum of 1; missing splits get 0."""
    unknown = sorted(set(fractions) - set(SPLIT_NAMES))
    if unknown:
        raise ScenesError(f"unknown split name(s) {unknown}; expected {list(SPLIT_NAMES)}")
    out = {name: float(fractions.get(name, 0.0)) for name in SPLIT_NAMES}
    for name, f in out.items():
        if not math.isfinite(f) or f < 0.0:
            raise ScenesError(f"split fraction {name}={f} must be a finite number >= 0")
    total = sum(out.values())
    if abs(total - 1.0) > 1e-6:
        raise ScenesError(f"split fractions must sum to 1, got {total:g} ({out})")
    return out


def split_counts(num_images: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Images per split by the largest-remainder rule (counts sum to ``num_images`` exactly)."""
    exact = {k: num_images * fractions[k] for k in SPLIT_NAMES}
    counts = {k: int(math.floor(v)) for k, v in exact.items()}
    by_remainder = sorted(SPLIT_NAMES, key=lambda k: (-(exact[k] - counts[k]), SPLIT_NAMES.index(k)))
    for k in by_remainder[: num_images - sum(counts.values())]:
        counts[k] += 1
    return counts


def assign_splits(num_images: int, fractions: Mapping[str, float], seed: int) -> list[str]:
    """The split of every image index: a seeded shuffle cut into blocks of the split counts."""
    counts = split_counts(num_images, fractions)
    labels = np.repeat(np.arange(len(SPLIT_NAMES)), [counts[k] for k in SPLIT_NAMES])  # (N,)
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(num_images)  # (N,)
    splits = [""] * num_images
    for idx, label in zip(order, labels):
        splits[int(idx)] = SPLIT_NAMES[int(label)]
    return splits


def heldout_pairs(seed: int, fraction: float = 0.1) -> list[tuple[str, str]]:
    """About ``fraction`` of all (colour, shape) pairs, no colour or shape twice, sorted."""
    n_pairs = len(COLOURS) * len(SHAPES)
    k = min(max(1, round(fraction * n_pairs)), len(COLOURS), len(SHAPES))
    rng = np.random.default_rng([seed, _HELDOUT_STREAM])
    colours = [list(COLOURS)[i] for i in rng.permutation(len(COLOURS))[:k]]
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))[:k]]
    return sorted(zip(colours, shapes))


# ----------------------------------------------------------------------------------------------------------
# One image: sample, render, caption, write the JPEG, return the dataset.json entry.

@dataclasses.dataclass(frozen=True)
class _JobConfig:
    seed: int
    image_size: int
    captions_per_image: int
    heldout: tuple[tuple[str, str], ...]
    allowed: tuple[tuple[str, str], ...]
    images_dir: str
    name_width: int
    jpeg_quality: int


def make_image(config: _JobConfig, index: int, split: str) -> dict:
    """Draws image ``index`` (for ``split``), writes its JPEG and returns its dataset.json entry."""
    rng = np.random.default_rng([config.seed, _IMAGE_STREAM, index])
    if split == "test_novel":
        required = config.heldout[int(rng.integers(len(config.heldout)))]
        spec = sample_scene(rng, config.image_size, pairs=all_pairs(), required_pair=required)
    else:
        spec = sample_scene(rng, config.image_size, pairs=config.allowed)
    layout = scene_layout(spec)
    captions = describe_scene(spec, layout, rng, num_captions=config.captions_per_image)

    filename = f"{index:0{config.name_width}d}.jpg"
    buf = io.BytesIO()
    Image.fromarray(render_scene_array(spec, layout), mode="RGB").save(buf, format="JPEG",
                                                                       quality=config.jpeg_quality)
    with open(os.path.join(config.images_dir, filename), "wb") as f:
        f.write(buf.getvalue())

    sentid0 = index * config.captions_per_image
    return {
        "filename": filename,
        "filepath": "images",
        "imgid": index,
        "split": split,
        "sentids": [sentid0 + k for k in range(len(captions))],
        "width": spec.image_size,
        "height": spec.image_size,
        "boxes": [[round(v, 6) for v in box] for box in layout.boxes],
        "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size} for o in spec.objects],
        "background": spec.background.kind,
        "sentences": [{"raw": c.raw, "tokens": list(c.tokens), "imgid": index, "sentid": sentid0 + k,
                       "phrases": [{"start": p.start, "end": p.end, "boxes": list(p.boxes)}
                                   for p in c.phrases]}
                      for k, c in enumerate(captions)],
    }


_WORKER_CONFIG: _JobConfig | None = None


def _init_worker(config: _JobConfig) -> None:
    global _WORKER_CONFIG
    _WORKER_CONFIG = config


def _work(task: tuple[int, str]) -> dict:
    return make_image(_WORKER_CONFIG, *task)


# ----------------------------------------------------------------------------------------------------------
# The whole dataset.

def _prepare_out_dir(out_dir: str) -> str:
    images_dir = os.path.join(out_dir, "images")
    try:
        os.makedirs(images_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ScenesError(f"output directory {out_dir!r} is not writable: {e.strerror or e}") from None
    return images_dir


def _write_json(path: str, obj) -> None:
    """Writes compact JSON through a temporary file, so readers never see a half-written file."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, separators=(",", ":")) + "\n")  # dumps uses the C encoder, dump does not
    os.replace(tmp, path)


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ScenesError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ScenesError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
    return int(value)


def generate_scenes(out_dir: str, num_images: int, seed: int = 0, image_size: int = 256,
                    workers: int | None = None, split_fractions: Mapping[str, float] | None = None,
                    captions_per_image: int = 5, heldout_fraction: float = 0.1, jpeg_quality: int = 90,
                    progress: bool = False) -> dict:
    """Writes the scenes dataset to ``out_dir`` and returns a summary dict.

    ``workers`` processes render images in chunks (default: all CPUs; 1 renders in this process).
    ``progress`` prints a counter line to stderr about once a second. Raises :class:`ScenesError` for bad
    arguments or an unwritable ``out_dir``. Existing files of the same names are overwritten.
    """
    num_images = _check_int("num_images", num_images, 1)
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, 32, 4096)
    captions_per_image = _check_int("captions_per_image", captions_per_image, 1, 20)
    jpeg_quality = _check_int("jpeg_quality", jpeg_quality, 1, 95)
    workers = _check_int("workers", workers if workers is not None else (os.cpu_count() or 1), 1)
    fractions = validate_split_fractions(split_fractions if split_fractions is not None
                                         else DEFAULT_SPLIT_FRACTIONS)
    if not 0.0 < heldout_fraction < 1.0:
        raise ScenesError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    images_dir = _prepare_out_dir(out_dir)

    heldout = heldout_pairs(seed, heldout_fraction)
    config = _JobConfig(seed=seed, image_size=image_size, captions_per_image=captions_per_image,
                        heldout=tuple(heldout), allowed=tuple(p for p in all_pairs() if p not in heldout),
                        images_dir=images_dir, name_width=max(6, len(str(num_images - 1))),
                        jpeg_quality=jpeg_quality)
    tasks = list(enumerate(assign_splits(num_images, fractions, seed)))

    start = time.perf_counter()
    entries = []
    last_report = start
    for entry in _run(config, tasks, workers):
        entries.append(entry)
        now = time.perf_counter()
        if progress and (now - last_report >= 1.0 or len(entries) == num_images):
            last_report = now
            print(f"scenes: {len(entries)}/{num_images} images ({len(entries) / (now - start):.0f}/s)",
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start

    counts = split_counts(num_images, fractions)
    dataset_json = os.path.join(out_dir, "dataset.json")
    _write_json(dataset_json, {"dataset": "scenes", "images": entries})
    _write_json(os.path.join(out_dir, "scenes_meta.json"), {
        "generator": "karpalign.datasets.generate_scenes", "format_version": 1, "seed": seed,
        "num_images": num_images, "image_size": image_size, "captions_per_image": captions_per_image,
        "jpeg_quality": jpeg_quality, "split_fractions": fractions, "split_counts": counts,
        "heldout_fraction": heldout_fraction, "heldout_pairs": [list(p) for p in heldout],
        "shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES),
        "backgrounds": list(BACKGROUND_KINDS)})
    return {"out_dir": out_dir, "dataset_json": dataset_json, "num_images": num_images,
            "num_sentences": sum(len(e["sentences"]) for e in entries), "split_counts": counts,
            "heldout_pairs": heldout, "workers": workers, "seconds": seconds,
            "images_per_second": num_images / seconds if seconds > 0 else float("inf")}


def _run(config: _JobConfig, tasks: list[tuple[int, str]], workers: int):
    """Yields dataset entries in index order, rendering in this process or in a pool of ``workers``."""
    if workers == 1 or len(tasks) == 1:
        for index, split in tasks:
            yield make_image(config, index, split)
        return
    # "spawn" keeps workers independent of whatever the parent holds (threads of TensorFlow, open files).
    ctx = multiprocessing.get_context("spawn")
    chunksize = max(1, min(64, len(tasks) // (workers * 8)))
    with ctx.Pool(processes=min(workers, len(tasks)), initializer=_init_worker, initargs=(config,)) as pool:
        yield from pool.imap(_work, tasks, chunksize=chunksize)
