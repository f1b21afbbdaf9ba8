"""Beam extraction throughput against the bare CNN forward pass on the same crops, in the same run.

Generates 2N synthetic scene images, then measures:

1. **pipeline**: ``karpalign.beam.job.run_extract`` on the DirectRunner in this process -- planning (dataset,
   vocabulary), reading files, decoding, region proposal, crops, CNN, tokenizing, encoding, gzip TFRecord
   writing, counts and manifest -- once on the first N images and once on all 2N.
   A job pays fixed costs once (building the Beam graph and its workers, loading the model, tracing it,
   finalizing); a corpus of 100k images pays them once too. So the throughput that matters at scale is the
   **steady state**: N / (T(2N) - T(N)), the cost of N more images. End-to-end rates are printed as well.
2. **bare CNN**: the same backbone on the same crops (decoded and cropped beforehand, not timed), in batches
   of the same number of images, i.e. only ``backbone(preprocess(crops))``.

Target: steady-state pipeline throughput >= 80% of bare-CNN images/s. The cores may be shared, so the runs are
interleaved (bare CNN, pipeline N, bare CNN, pipeline 2N, bare CNN), the whole sequence is repeated
``--repeats`` times, and each measurement keeps its fastest time (other load only ever slows a run down).

    .venv/bin/python benchmarks/extract.py                       # 2 x 300 images, 256 px, crops 128
    .venv/bin/python benchmarks/extract.py --images 600 --image-size 128 --crop-size 96 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

import numpy as np


def bare_cnn_seconds(backbone, crops_per_image, batch_size, crop_size) -> float:
    start = time.perf_counter()
    for i in range(0, len(crops_per_image), batch_size):
        crops = np.concatenate(crops_per_image[i:i + batch_size])  # (sum R, S, S, 3)
        backbone(backbone.preprocess(crops, size=(crop_size, crop_size)))
    return time.perf_counter() - start


def subset_dataset(dataset_json: str, n: int, out_path: str) -> str:
    """The first ``n`` images of a Karpathy-format dataset.json (paths stay relative to the same folder)."""
    with open(dataset_json) as f:
        data = json.load(f)
    data["images"] = data["images"][:n]
    with open(out_path, "w") as f:
        json.dump(data, f)
    return out_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="N: the pipeline runs on N and on 2N images")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--regions", type=int, default=19, help="K (the scenes have at most a few boxes each)")
    p.add_argument("--cnn", default="efficientnet_lite0")
    p.add_argument("--repeats", type=int, default=2, help="repeat the interleaved sequence; keep the fastest")
    p.add_argument("--beam-args", default="--runner=DirectRunner",
                   help="Beam pipeline options for the pipeline runs, e.g. '--runner=DirectRunner "
                        "--direct_num_workers=2 --direct_running_mode=multi_threading'")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from karpalign.beam.job import ExtractConfig, run_extract
    from karpalign.data.records import read_dataset
    from karpalign.datasets.generate import generate_scenes
    from karpalign.vision.backbones import get_backbone
    from karpalign.vision.images import decode_image
    from karpalign.vision.proposers import BoxesProposer, crop_regions

    n = args.images
    with tempfile.TemporaryDirectory() as tmp:
        full = generate_scenes(os.path.join(tmp, "scenes"), 2 * n, seed=0, image_size=args.image_size,
                               workers=1)["dataset_json"]
        half = subset_dataset(full, n, os.path.join(tmp, "scenes", "first_half.json"))
        records = read_dataset(full)
        proposer = BoxesProposer(args.regions)
        crops = []
        for r in records:
            with open(r.path, "rb") as f:
                crops.append(crop_regions(decode_image(f.read()), proposer.propose(boxes=r.boxes), args.crop_size))
        n_regions = sum(len(c) for c in crops)

        load_start = time.perf_counter()
        backbone = get_backbone(args.cnn)
        load_seconds = time.perf_counter() - load_start
        bare_cnn_seconds(backbone, crops[:args.batch_size * 2], args.batch_size, args.crop_size)  # warm up

        def pipeline_seconds(dataset, name, count):
            config = ExtractConfig(dataset=dataset, out=os.path.join(tmp, name), cnn=args.cnn,
                                   crop_size=args.crop_size, proposer="boxes", regions=args.regions,
                                   min_word_count=1, shards_per_split=2, batch_size=args.batch_size,
                                   progress_every=0)
            start = time.perf_counter()
            result = run_extract(config, args.beam_args.split())
            seconds = time.perf_counter() - start
            assert result.manifest["written"] == count, result.manifest
            return seconds

        bare, halves, fulls = [], [], []
        for r in range(args.repeats):
            bare.append(bare_cnn_seconds(backbone, crops, args.batch_size, args.crop_size))
            halves.append(pipeline_seconds(half, f"out_half{r}", n))
            bare.append(bare_cnn_seconds(backbone, crops, args.batch_size, args.crop_size))
            fulls.append(pipeline_seconds(full, f"out_full{r}", 2 * n))
        bare.append(bare_cnn_seconds(backbone, crops, args.batch_size, args.crop_size))

    t_half, t_full = min(halves), min(fulls)
    bare_rate = 2 * n / min(bare)
    steady = t_full - t_half
    rows = [(f"bare CNN (fastest of {len(bare)} passes)", min(bare), 2 * n),
            ("  slowest pass", max(bare), 2 * n)]
    rows += [(f"pipeline end to end, {n} images", t_half, n),
             (f"pipeline end to end, {2 * n} images", t_full, 2 * n),
             (f"pipeline steady state (the {n} more)", steady, n)]
    print(f"{2 * n} images {args.image_size} px, {n_regions} regions ({n_regions / (2 * n):.1f}/image), "
          f"{args.cnn} at {args.crop_size} px crops, batch {args.batch_size} images, model load "
          f"{load_seconds:.1f}s, {os.cpu_count()} CPUs, Beam options: {args.beam_args}")
    runs = f"{n} images {', '.join(f'{t:.1f}' for t in halves)}; {2 * n} images {', '.join(f'{t:.1f}' for t in fulls)}"
    print(f"fixed cost per job (T(N) - (T(2N) - T(N))): {t_half - steady:.1f}s; pipeline runs (s): {runs}")
    print(f"{'measurement':40s} {'images':>6s} {'seconds':>8s} {'images/s':>9s} {'vs bare CNN':>12s}")
    for name, seconds, count in rows:
        rate = count / seconds
        print(f"{name:40s} {count:6d} {seconds:8.2f} {rate:9.1f} {rate / bare_rate:11.0%}")
    ratio = (n / steady) / bare_rate
    paired = float(np.median([f - h for f, h in zip(fulls, halves)]))  # within one repeat: same machine state
    print(f"steady-state pipeline / bare CNN throughput: {ratio:.0%} from the fastest runs; "
          f"{(n / paired) / bare_rate:.0%} from the median of the {len(fulls)} paired differences "
          "(target >= 80%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
