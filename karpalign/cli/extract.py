"""karpalign-extract: caption dataset + images -> region CNN features in TFRecord shards (an Apache Beam job).

  karpalign-extract --dataset data/scenes/dataset.json --out runs/records --proposer boxes --regions 19
  karpalign-extract --dataset coco/dataset.json --image-root gs://b/coco --out gs://b/records --fold-restval \\
      --runner DataflowRunner --project P --region europe-west1 --temp_location gs://b/tmp \\
      --setup_file ./beam_jobs/setup.py
  karpalign-extract --dataset flickr8k/dataset.json --neuraltalk-features flickr8k/vgg_feats.mat --out runs/f8k

Options this program does not know are Beam pipeline options (--runner, --project, --direct_num_workers, ...).
Writes {split}-SSSSS-of-NNNNN.tfrecord.gz, vocab.txt (train split only), manifest.json and dead_letters.jsonl
(one line per image that could not be used: path, image_id, stage, reason). Exit codes: 0 ok; 1 more images
failed than --max-failure-fraction allows (outputs are still written); 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import logging
import sys

from karpalign.data.records import DatasetError
from karpalign.vision.images import DEFAULT_MAX_PIXELS

PROG = "karpalign-extract"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # never let a Beam option (--region) abbreviate one of ours
    p.add_argument("--dataset", required=True, help="Karpathy dataset.json, COCO captions json or .jsonl")
    p.add_argument("--image-root", default=None, help="folder (or gs:// URL) the image paths are relative to "
                                                      "(default: the dataset's folder)")
    p.add_argument("--out", required=True, help="output folder (local or gs://...)")
    p.add_argument("--cnn", default="efficientnet_lite0",
                   help="backbone: efficientnet_lite0 | keras:PATH | hub:HANDLE, options after | "
                        "(e.g. 'keras:m.keras|size=160,160'); default efficientnet_lite0")
    p.add_argument("--crop-size", type=int, default=None, help="square region crop side (default: the CNN's "
                                                                "input size, 224 for EfficientNet-Lite0)")
    p.add_argument("--proposer", default="grid",
                   help="boxes (the dataset's boxes) | grid | segments (Selective Search-style grouping of image "
                        "segments, no model; options after |, e.g. 'segments|max_side=256') | detector:PATH "
                        "(default grid)")
    p.add_argument("--regions", type=int, default=19, help="K boxes per image besides the full image (paper: 19)")
    p.add_argument("--detector-score", type=float, default=0.3, help="detector: minimum box score")
    p.add_argument("--detector-iou", type=float, default=0.5, help="detector and segments: NMS IoU threshold")
    p.add_argument("--min-word-count", type=int, default=5, help="training count to enter the vocabulary (paper: 5)")
    p.add_argument("--fold-restval", action="store_true", help="COCO restval images count as train")
    p.add_argument("--splits", default=None, help="comma-separated splits to extract (default: all in the dataset)")
    p.add_argument("--shards-per-split", type=int, default=4, help="TFRecord files per split (default 4)")
    p.add_argument("--batch-size", type=int, default=16, help="images per CNN batch (default 16)")
    p.add_argument("--min-batch-size", type=int, default=None,
                   help="let Beam adapt batches between this and --batch-size (default: fixed batches; "
                        "needs --cnn-in-flight 0)")
    p.add_argument("--cnn-in-flight", type=int, default=1,
                   help="batches the CNN computes in a background thread while the worker reads, decodes and "
                        "encodes other images (default 1; 0: no overlap, needed with --min-batch-size)")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images with more pixels (decompression bombs; default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--max-failure-fraction", type=float, default=0.05,
                   help="exit 1 when failed/input exceeds this (default 0.05)")
    p.add_argument("--progress-every", type=int, default=100, help="log a line per N decoded images per worker")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --out")
    p.add_argument("--neuraltalk-features", default=None, metavar="VGG_FEATS_MAT",
                   help="convert neuraltalk's vgg_feats.mat (4096 x N) instead of reading images")
    p.add_argument("--quiet", action="store_true", help="only warnings and the summary")
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _neuraltalk(args, beam_args) -> int:
    from karpalign.data.neuraltalk import NeuraltalkError, convert_neuraltalk

    if beam_args:
        return _fail(f"--neuraltalk-features runs without Beam; unknown arguments {beam_args}")
    try:
        manifest = convert_neuraltalk(args.dataset, args.neuraltalk_features, args.out,
                                      min_word_count=args.min_word_count, fold_restval=args.fold_restval,
                                      shards_per_split=args.shards_per_split, splits=_splits(args),
                                      overwrite=args.overwrite)
    except (NeuraltalkError, DatasetError, FileExistsError, ValueError) as exc:
        return _fail(str(exc))
    counts = ", ".join(f"{k} {v}" for k, v in manifest.counts.items())
    print(f"converted {manifest.written} images ({counts}) from {args.neuraltalk_features}: "
          f"{manifest.feature_dim}-d {manifest.cnn} features, 1 region each, vocabulary "
          f"{manifest.vocab_size} words")
    print(f"outputs: {args.out} (manifest.json, vocab.txt, *.tfrecord.gz)")
    return 0


def _splits(args):
    return [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None


def main(argv=None) -> int:
    args, beam_args = _parser().parse_known_args(argv)
    # karpalign's own progress at INFO; other libraries (Beam's runner notes, TF) only from WARNING on.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("karpalign").setLevel(logging.WARNING if args.quiet else logging.INFO)
    if args.neuraltalk_features:
        return _neuraltalk(args, beam_args)

    from karpalign.beam.job import ExtractConfig, ExtractError, run_extract

    config = ExtractConfig(
        dataset=args.dataset, out=args.out, image_root=args.image_root, cnn=args.cnn, crop_size=args.crop_size,
        proposer=args.proposer, regions=args.regions, min_word_count=args.min_word_count,
        fold_restval=args.fold_restval, shards_per_split=args.shards_per_split, batch_size=args.batch_size,
        min_batch_size=args.min_batch_size, cnn_in_flight=args.cnn_in_flight,
        max_image_pixels=args.max_image_pixels, max_failure_fraction=args.max_failure_fraction, splits=_splits(args),
        detector_score_threshold=args.detector_score, detector_iou_threshold=args.detector_iou,
        progress_every=args.progress_every, overwrite=args.overwrite)
    try:
        result = run_extract(config, beam_args)
    except (ExtractError, DatasetError) as exc:
        return _fail(str(exc))
    m = result.manifest
    counts = ", ".join(f"{k} {v}" for k, v in m.counts.items())
    print(f"extracted {m.written} of {m.input_records} images ({counts}); {m.num_regions} regions max, "
          f"{m.feature_dim}-d features from {m.cnn_spec} at {m.crop_size} px; "
          f"vocabulary {m.vocab_size} words (train split, min count {m.extra.get('min_word_count')})")
    if m.failed:
        from karpalign.beam.elements import STAGES

        stages = ", ".join(f"{k} {m.failures_by_stage[k]}" for k in STAGES if k in m.failures_by_stage)
        print(f"failed: {m.failed} images ({stages}); details: {args.out}/{m.dead_letters}")
    if result.counters:
        print("beam counters: " + ", ".join(f"{k}={v}" for k, v in sorted(result.counters.items())))
    print(f"outputs: {args.out} (manifest.json, vocab.txt, {{split}}-*.tfrecord.gz, {m.dead_letters})")
    if not result.acceptable(args.max_failure_fraction):
        print(f"{PROG}: error: {m.failed} of {m.input_records} images failed ({result.failure_fraction:.1%}), "
              f"more than --max-failure-fraction {args.max_failure_fraction:g}; see {args.out}/{m.dead_letters}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
