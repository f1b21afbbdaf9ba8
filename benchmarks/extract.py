"""Beam extraction throughput against the bare CNN forward pass on the same crops, in the same run.

Generates N synthetic scene images, then measures:

1. **pipeline**: ``karpalign.beam.job.run_extract`` on the DirectRunner in this process -- reading files,
   decoding, region proposal, crops, CNN, tokenizing, encoding, gzip TFRecord writing, counts and manifest.
   Reported end to end and without the one-off model load (timed separately: building the backbone again
   in this process), which a long job pays once per worker.
2. **bare CNN**: the same backbone on the same crops (decoded and cropped beforehand, not timed), in batches
   of the same number of images, i.e. only ``backbone(preprocess(crops))``.

Target: pipeline (without model load) >= 80% of bare-CNN images/s. The cores may be shared, so the bare-CNN
pass runs both before and after the pipeline and the mean is used.

    .venv/bin/python benchmarks/extract.py                       # 200 images, 256 px, crops 128
    .venv/bin/python benchmarks/extract.py --images 100 --crop-size 160
"""

from __future__ import annotations

import argparse
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--regions", type=int, default=19, help="K (the scenes have at most a few boxes each)")
    p.add_argument("--cnn", default="efficientnet_lite0")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from karpalign.beam.job import ExtractConfig, run_extract
    from karpalign.data.records import read_dataset
    from karpalign.datasets.generate import generate_scenes
    from karpalign.vision.backbones import get_backbone
    from karpalign.vision.images import decode_image
    from karpalign.vision.proposers import BoxesProposer, crop_regions

    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate_scenes(os.path.join(tmp, "scenes"), args.images, seed=0, image_size=args.image_size,
                                  workers=1)["dataset_json"]
        records = read_dataset(dataset)
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
        bare_before = bare_cnn_seconds(backbone, crops, args.batch_size, args.crop_size)

        config = ExtractConfig(dataset=dataset, out=os.path.join(tmp, "out"), cnn=args.cnn,
                               crop_size=args.crop_size, proposer="boxes", regions=args.regions,
                               min_word_count=1, shards_per_split=2, batch_size=args.batch_size, progress_every=0)
        start = time.perf_counter()
        result = run_extract(config, ["--runner=DirectRunner"])
        pipeline_seconds = time.perf_counter() - start
        assert result.manifest["written"] == args.images, result.manifest

        bare_after = bare_cnn_seconds(backbone, crops, args.batch_size, args.crop_size)

    bare = (bare_before + bare_after) / 2
    steady = pipeline_seconds - load_seconds
    n = args.images
    rows = [
        ("bare CNN (mean of before/after)", bare, n / bare),
        ("  before pipeline", bare_before, n / bare_before),
        ("  after pipeline", bare_after, n / bare_after),
        ("pipeline end to end", pipeline_seconds, n / pipeline_seconds),
        ("pipeline without model load", steady, n / steady),
    ]
    print(f"{n} images {args.image_size} px, {n_regions} regions ({n_regions / n:.1f}/image), "
          f"{args.cnn} at {args.crop_size} px crops, batch {args.batch_size} images, model load "
          f"{load_seconds:.1f}s, {os.cpu_count()} CPUs")
    print(f"{'measurement':34s} {'seconds':>8s} {'images/s':>9s} {'vs bare CNN':>12s}")
    for name, seconds, rate in rows:
        print(f"{name:34s} {seconds:8.2f} {rate:9.1f} {rate / (n / bare):11.0%}")
    ratio = (n / steady) / (n / bare)
    print(f"pipeline / bare CNN throughput: {ratio:.0%} (target >= 80%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
