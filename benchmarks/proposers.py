"""Region proposers on the synthetic scenes: how many objects do the top K boxes find, and how fast?

    .venv/bin/python benchmarks/proposers.py                          # 300 scenes at 128 and 256 px
    .venv/bin/python benchmarks/proposers.py --image-sizes 128 --images 1000
    .venv/bin/python benchmarks/proposers.py --segments 'segments|scale=80|max_side=256'
    .venv/bin/python benchmarks/proposers.py --quick                  # 100 scenes

Generates scenes (``karpalign.datasets.generate_scenes``, a fixed seed, one process) into a temporary folder,
decodes each JPEG once and runs the ``grid`` proposer and a ``segments`` proposer on it at each K. Recall@K is
the fraction of ground-truth object boxes that some returned region (the full image plus up to K boxes, exactly
what extraction stores) overlaps with IoU >= ``--iou`` (0.5, the usual detection criterion and the one
karpalign's alignment accuracy uses). "every region" is the recall of all boxes of the segments grouping
before ranking, filtering and NMS -- the ceiling the ranking works towards. Timings are per image,
single-threaded, proposer only (decode excluded): wall-clock mean and CPU time of this process; CPU time depends
less on other load, but on a busy machine both are higher than on a quiet one.
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


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def load_scenes(root: str, num_images: int, image_size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(uint8 image (S, S, 3), ground-truth boxes (n, 4))] of freshly generated scenes."""
    out = os.path.join(root, f"scenes{image_size}")
    summary = generate_scenes(out, num_images, seed=seed, image_size=image_size, workers=1)
    scenes = []
    for record in read_dataset(summary["dataset_json"]):
        with open(record.path, "rb") as f:
            scenes.append((decode_image(f.read(), source=record.path), np.asarray(record.boxes, np.float64)))
    return scenes


def recall(proposals: list[np.ndarray], scenes, iou: float) -> float:
    found, total = proposal_recall(proposals, [gt for _, gt in scenes], iou)
    return found / max(1, total)


def measure(proposer, scenes) -> tuple[list[np.ndarray], float, float]:
    """(proposals per image, wall ms/image, CPU ms/image)."""
    out = []
    wall, cpu = time.perf_counter(), time.process_time()
    for image, _ in scenes:
        out.append(proposer.propose(image))
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="scenes per image size (default 300)")
    p.add_argument("--image-sizes", default="128,256", help="comma-separated scene sizes in px (default 128,256)")
    p.add_argument("--k", default="19,9", help="comma-separated K values (boxes besides the full image)")
    p.add_argument("--segments", default="segments", help="segments proposer spec, e.g. 'segments|scale=80'")
    p.add_argument("--nms-iou", type=float, default=0.5, help="NMS IoU threshold of the segments proposer")
    p.add_argument("--iou", type=float, default=0.5, help="IoU a region needs to find an object (default 0.5)")
    p.add_argument("--seed", type=int, default=1, help="scene generator seed")
    p.add_argument("--quick", action="store_true", help="100 scenes per size")
    args = p.parse_args(argv)
    num_images = 100 if args.quick else args.images
    ks = _ints(args.k)

    rows = []
    root = tempfile.mkdtemp(prefix="karpalign-bench-proposers-")
    try:
        for size in _ints(args.image_sizes):
            scenes = load_scenes(root, num_images, size, args.seed)
            objects = sum(len(gt) for _, gt in scenes)
            for k in ks:
                for spec in ("grid", args.segments):
                    proposer = get_proposer(spec, k, iou_threshold=args.nms_iou)
                    proposals, wall, cpu = measure(proposer, scenes)
                    boxes = np.mean([len(b) for b in proposals])
                    rows.append((size, len(scenes), objects, spec, k, recall(proposals, scenes, args.iou), boxes,
                                 wall, cpu))
            proposer = get_proposer(args.segments, max(ks), iou_threshold=args.nms_iou)
            regions = every_region(proposer, scenes)
            rows.append((size, len(scenes), objects, f"{args.segments}, every region", None,
                         recall(regions, scenes, args.iou), np.mean([len(b) for b in regions]), None, None))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"Region proposers on synthetic scenes (seed {args.seed}): recall = objects with a region of "
          f"IoU >= {args.iou:g}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"segments proposer: {get_proposer(args.segments, max(ks), iou_threshold=args.nms_iou).name}")
    print()
    print("| image px | scenes | objects | proposer | K | recall@K | regions/image | ms/image | CPU ms/image |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for size, n, objects, spec, k, rec, boxes, wall, cpu in rows:
        timing = f"{wall:.1f} | {cpu:.1f}" if wall is not None else "- | -"
        print(f"| {size} | {n} | {objects} | {spec} | {k if k is not None else 'all'} | {rec:.3f} | {boxes:.1f} | "
              f"{timing} |")


if __name__ == "__main__":
    main()
