"""Region proposers on the synthetic scenes: how many objects do the top K boxes find, and how fast?

    .venv/bin/python benchmarks/proposers.py                                  # grid + segments
    .venv/bin/python benchmarks/proposers.py --learned runs/proposer          # + a karpalign-train --task propose run
    .venv/bin/python benchmarks/proposers.py --learned runs/proposer --learned-options '|score=0.01'
    .venv/bin/python benchmarks/proposers.py --segments 'segments|scale=80|max_side=256' --quick

Generates scenes (``karpalign.datasets.generate_scenes``, one process) into a temporary folder: ``--images`` scenes
at each ``--image-sizes`` with seed ``--seed``, half in the ``test`` and half in the ``test_novel`` split (held-out
colour-shape pairs), and ``--extra-images`` scenes with seed ``--extra-seed`` at ``--extra-size`` px (a seed and a
size no proposer was tuned or trained on). Each JPEG is decoded once and every proposer runs on it at each K.

Recall@K is the fraction of ground-truth object boxes that some returned region (the full image plus up to K
boxes, exactly what extraction stores) overlaps with IoU >= 0.5 and >= 0.7. "every region" is the recall of all
boxes of the segments grouping before ranking, filtering and NMS -- the ceiling its ranking works towards.

Timings are per image, proposer only (decode excluded): wall-clock mean and CPU time of this process (CPU time
depends less on other load; on a busy machine both are higher than on a quiet one). ``grid`` and ``segments``
run image by image; the learned proposer in batches of ``--batch`` images, as the extraction job runs it. The
last table compares the learned proposer's cost with the CNN cost of the crops it proposes, measured back to
back (best of three runs each, so both see the same load): the proposer on 64 images in batches of ``--batch``,
and the built-in EfficientNet-Lite0's time per 224 px crop (64 crops of the proposals, in extraction's chunks of
32) times the proposals per image, and times 1 + K (the paper's fixed 20 regions).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from karpalign.data.records import read_dataset
from karpalign.datasets import generate_scenes
from karpalign.vision import selective_search
from karpalign.vision.images import decode_image
from karpalign.vision.proposers import SegmentsProposer, get_proposer, proposal_recall

IOUS = (0.5, 0.7)
HALVES = {"train": 0.0, "val": 0.0, "test": 0.5, "test_novel": 0.5}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def load_scenes(root: str, num_images: int, image_size: int, seed: int, fractions=None) -> dict:
    """{split: [(uint8 image (S, S, 3), ground-truth boxes (n, 4))]} of freshly generated scenes."""
    out = os.path.join(root, f"scenes{image_size}-seed{seed}")
    summary = generate_scenes(out, num_images, seed=seed, image_size=image_size, workers=1, split_fractions=fractions)
    scenes: dict = {}
    for record in read_dataset(summary["dataset_json"]):
        with open(record.path, "rb") as f:
            scenes.setdefault(record.split, []).append(
                (decode_image(f.read(), source=record.path), np.asarray(record.boxes, np.float64)))
    return scenes


def recalls(proposals: list[np.ndarray], scenes) -> list[float]:
    out = []
    for iou in IOUS:
        found, total = proposal_recall(proposals, [gt for _, gt in scenes], iou)
        out.append(found / max(1, total))
    return out


def measure(proposer, scenes, batch: int) -> tuple[list[np.ndarray], float, float]:
    """(proposals per image, wall ms/image, CPU ms/image); batched when the proposer can."""
    images = [image for image, _ in scenes]
    if hasattr(proposer, "propose_batch"):
        proposer.propose_batch(images[:batch])  # warm up: the first call traces
    out = []
    wall, cpu = time.perf_counter(), time.process_time()
    if hasattr(proposer, "propose_batch"):
        for i in range(0, len(images), batch):
            out.extend(proposer.propose_batch(images[i:i + batch]))
    else:
        out = [proposer.propose(image) for image in images]
    n = max(1, len(scenes))
    return out, (time.perf_counter() - wall) * 1000 / n, (time.process_time() - cpu) * 1000 / n


def every_region(proposer: SegmentsProposer, scenes) -> list[np.ndarray]:
    """All boxes of each image's grouping hierarchy (the ranking's ceiling)."""
    out = []
    for image, _ in scenes:
        work = selective_search.working_image(image, proposer.max_side)
        min_size = max(1, round(proposer.min_segment * work.shape[0] * work.shape[1]))
        labels = selective_search.oversegment(work, proposer.scale, proposer.sigma, min_size)
        out.append(selective_search.group_regions(labels, work).normalised_boxes())
    return out


def cnn_ms_per_crop(proposals, scenes, backbone, crop_size: int = 224, crops: int = 64) -> float:
    """Wall ms per crop of the CNN on ``crops`` crops of the proposals (extraction's crop + network path, in its
    chunks of 32); best of three runs."""
    from karpalign.vision.proposers import crop_regions

    batch, i = [], 0
    while sum(len(b) for b in batch) < crops:
        batch.append(crop_regions(scenes[i % len(scenes)][0], proposals[i % len(scenes)], crop_size))
        i += 1
    x = backbone.preprocess(np.concatenate(batch)[:crops], size=(crop_size, crop_size))
    backbone(x[:8])  # warm up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        backbone(x)
        times.append(time.perf_counter() - t)
    return min(times) * 1000 / crops


def proposer_ms(proposer, scenes, batch: int, images: int = 64) -> float:
    """Wall ms per image of ``propose_batch`` on ``images`` images in batches of ``batch``; best of three runs."""
    pixels = [scenes[i % len(scenes)][0] for i in range(images)]
    proposer.propose_batch(pixels[:batch])  # warm up
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for i in range(0, images, batch):
            proposer.propose_batch(pixels[i:i + batch])
        times.append(time.perf_counter() - t)
    return min(times) * 1000 / images


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="scenes per image size, half test, half test_novel")
    p.add_argument("--image-sizes", default="128,256", help="comma-separated scene sizes in px (default 128,256)")
    p.add_argument("--seed", type=int, default=1, help="scene generator seed (default 1)")
    p.add_argument("--extra-images", type=int, default=150, help="scenes of the extra set (0: none)")
    p.add_argument("--extra-seed", type=int, default=7, help="seed of the extra set (default 7)")
    p.add_argument("--extra-size", type=int, default=320, help="image size of the extra set (default 320)")
    p.add_argument("--k", default="19,9", help="comma-separated K values (boxes besides the full image)")
    p.add_argument("--segments", default="segments", help="segments proposer spec, e.g. 'segments|scale=80'")
    p.add_argument("--nms-iou", type=float, default=0.5, help="NMS IoU threshold of the segments proposer")
    p.add_argument("--learned", default="", help="a karpalign-train --task propose run folder (adds its rows)")
    p.add_argument("--learned-options", default="", help="appended to learned:RUN, e.g. '|score=0.01'")
    p.add_argument("--batch", type=int, default=16, help="images per learned proposer call (default 16)")
    p.add_argument("--no-segments", action="store_true", help="leave the segments proposer out (it is slow)")
    p.add_argument("--quick", action="store_true", help="60 scenes per size, 30 extra")
    args = p.parse_args(argv)
    num_images = 60 if args.quick else args.images
    extra_images = 30 if args.quick else args.extra_images
    ks = _ints(args.k)
    specs = ["grid"] + ([] if args.no_segments else [args.segments])
    if args.learned:
        specs.append(f"learned:{args.learned}{args.learned_options}")

    rows, names, costs = [], {}, []
    root = tempfile.mkdtemp(prefix="karpalign-bench-proposers-")
    try:
        sets = []
        for size in _ints(args.image_sizes):
            by_split = load_scenes(root, num_images, size, args.seed, HALVES)
            sets += [(f"seed {args.seed} {split}", size, by_split.get(split, [])) for split in ("test", "test_novel")]
        if extra_images:
            by_split = load_scenes(root, extra_images, args.extra_size, args.extra_seed)
            sets.append((f"seed {args.extra_seed} all", args.extra_size, [s for v in by_split.values() for s in v]))
        backbone = None
        for name, size, scenes in sets:
            objects = sum(len(gt) for _, gt in scenes)
            for k in ks:
                for spec in specs:
                    proposer = get_proposer(spec, k, iou_threshold=args.nms_iou)
                    names[spec.split(":")[0].split("|")[0]] = proposer.name
                    proposals, wall, cpu = measure(proposer, scenes, args.batch)
                    boxes = np.mean([len(b) for b in proposals])
                    rows.append((name, size, len(scenes), objects, spec.split(":")[0].split("|")[0], k,
                                 *recalls(proposals, scenes), boxes, wall, cpu))
                    if spec.startswith("learned:") and k == max(ks):
                        if backbone is None:
                            from karpalign.vision.backbones import get_backbone

                            backbone = get_backbone("efficientnet_lite0")
                        # Back to back, best of three each: the two costs see the same machine load.
                        costs.append((name, size, k, proposer_ms(proposer, scenes, args.batch),
                                      cnn_ms_per_crop(proposals, scenes, backbone), boxes))
            if not args.no_segments:
                proposer = get_proposer(args.segments, max(ks), iou_threshold=args.nms_iou)
                regions = every_region(proposer, scenes)
                rows.append((name, size, len(scenes), objects, "segments, every region", None,
                             *recalls(regions, scenes), np.mean([len(b) for b in regions]), None, None))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"Region proposers on synthetic scenes: recall@K = objects with a region of IoU >= 0.5 / 0.7; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for kind, name in names.items():
        print(f"{kind}: {name}")
    print()
    print("| scenes | px | images | objects | proposer | K | recall@K IoU 0.5 | recall@K IoU 0.7 | regions/image "
          "| ms/image | CPU ms/image |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, size, n, objects, spec, k, r5, r7, boxes, wall, cpu in rows:
        timing = f"{wall:.1f} | {cpu:.1f}" if wall is not None else "- | -"
        print(f"| {name} | {size} | {n} | {objects} | {spec} | {k if k is not None else 'all'} | {r5:.3f} | "
              f"{r7:.3f} | {boxes:.1f} | {timing} |")
    if costs:
        print()
        print("| scenes | px | K | learned proposer ms/image | CNN ms/crop (224 px) | its crops/image | CNN ms/image "
              "on its crops | proposer / CNN | proposer / CNN on 1 + K crops |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, size, k, learned_ms, per_crop, crops in costs:
            cnn_ms = per_crop * crops
            print(f"| {name} | {size} | {k} | {learned_ms:.1f} | {per_crop:.1f} | {crops:.1f} | {cnn_ms:.1f} "
                  f"| {learned_ms / cnn_ms:.0%} | {learned_ms / (per_crop * (k + 1)):.0%} |")


if __name__ == "__main__":
    main()
