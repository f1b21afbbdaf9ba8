"""karpalign-extract: caption dataset + images -> region CNN features in TFRecord shards (an Apache Beam job).

  karpalign-extract --config coco                       # a recipe's data + extract sections
  karpalign-extract --config coco --set extract.regions=9 --set data.records_dir=runs/coco/records9
  karpalign-extract --dataset data/scenes/dataset.json --out runs/records --proposer boxes --regions 19
  karpalign-extract --config coco --image-root gs://b/coco --out gs://b/records \\
      --runner DataflowRunner --project P --region europe-west1 --temp_location gs://b/tmp \\
      --setup_file ./beam_jobs/setup.py
  karpalign-extract --config coco --runner PortableRunner --job_endpoint embed \\
      --environment_type EXTERNAL --environment_config localhost:50000     # a Beam worker pool
  karpalign-extract --config coco --runner DaskRunner --dask_client_address tcp://SCHEDULER:8786
  karpalign-extract --dataset flickr8k/dataset.json --neuraltalk-features flickr8k/vgg_feats.mat --out runs/f8k

Settings come from the config's ``data`` and ``extract`` sections (every key documented in karpalign/config.py),
then ``--set KEY=VALUE``, then the flags below, each a shortcut for one key. Options this program does not know
are Beam pipeline options (--runner, --project, --direct_num_workers, ...).
Writes {split}-SSSSS-of-NNNNN.tfrecord.gz, vocab.txt (train split only), manifest.json, extract.yaml (the
resolved settings: --config extract.yaml repeats the run) and dead_letters.jsonl (one line per image that could
not be used: path, image_id, stage, reason; an image path that is absolute, escapes the image root or has a URL
scheme is one, of stage "path"). beam_jobs/README.md has the Dataflow, Flink, Spark and Dask commands.
Exit codes: 0 ok; 1 more images failed than
extract.max_failure_fraction allows (outputs are still written); 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import logging
import sys

from karpalign.config import ConfigError, apply_values, load_config
from karpalign.data.records import DatasetError

PROG = "karpalign-extract"

# (flag, config key, type, help): each flag is a shortcut for one config key; unset flags leave the config's.
FLAGS = (
    ("--dataset", "data.dataset", str, "Karpathy dataset.json, COCO captions json or .jsonl"),
    ("--image-root", "data.image_root", str, "folder (or gs:// URL) the image paths are relative to "
                                             "(default: the dataset's folder)"),
    ("--out", "data.records_dir", str, "output folder (local or gs://...)"),
    ("--min-word-count", "data.min_word_count", int, "training count to enter the vocabulary (paper: 5)"),
    ("--cnn", "extract.cnn", str, "backbone: efficientnet_lite0 | keras:PATH | hub:HANDLE, options after | "
                                  "(e.g. 'keras:m.keras|size=160,160')"),
    ("--crop-size", "extract.crop_size", int, "square region crop side (0: the CNN's input size, 224 for "
                                              "EfficientNet-Lite0)"),
    ("--proposer", "extract.proposer", str, "boxes (the dataset's boxes) | grid | segments (Selective "
                                            "Search-style grouping of image segments, no model; options after |, "
                                            "e.g. 'segments|max_side=256') | detector:PATH | learned:RUN_DIR "
                                            "(a karpalign-train --task propose run)"),
    ("--regions", "extract.regions", int, "K boxes per image besides the full image (paper: 19)"),
    ("--detector-score", "extract.detector_score_threshold", float, "detector: minimum box score"),
    ("--detector-iou", "extract.detector_iou_threshold", float, "detector and segments: NMS IoU threshold"),
    ("--splits", "extract.splits", str, "comma-separated splits to extract (default: all in the dataset)"),
    ("--shards-per-split", "extract.shards_per_split", int, "TFRecord files per split"),
    ("--batch-size", "extract.batch_size", int, "images per CNN batch"),
    ("--min-batch-size", "extract.min_batch_size", int, "let Beam adapt batches between this and --batch-size "
                                                        "(0: fixed batches; needs --cnn-in-flight 0)"),
    ("--cnn-in-flight", "extract.cnn_in_flight", int, "batches the CNN computes in a background thread while the "
                                                      "worker reads, decodes and encodes other images (0: no "
                                                      "overlap, needed with --min-batch-size)"),
    ("--max-image-pixels", "extract.max_image_pixels", int, "refuse images with more pixels (decompression bombs)"),
    ("--max-failure-fraction", "extract.max_failure_fraction", float, "exit 1 when failed/input exceeds this"),
    ("--progress-every", "extract.progress_every", int, "log a line per N decoded images per worker (0: never)"),
)
SWITCHES = (  # store_true flags: set the key to true when given
    ("--fold-restval", "data.fold_restval", "COCO restval images count as train"),
    ("--overwrite", "extract.overwrite", "replace the outputs of an earlier run in --out"),
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)  # never let a Beam option (--region) abbreviate one of ours
    p.add_argument("--config", default=None, help="recipe name or YAML file; its data and extract sections are "
                                                  "used (default: the built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. extract.regions=9")
    defaults = load_config(None)
    for flag, key, typ, text in FLAGS:
        section, name = key.split(".")
        default = getattr(getattr(defaults, section), name)
        p.add_argument(flag, type=typ, default=None, help=f"{text} [{key}; default {default!r}]")
    for flag, key, text in SWITCHES:
        p.add_argument(flag, action="store_true", default=None, help=f"{text} [{key}]")
    p.add_argument("--neuraltalk-features", default=None, metavar="VGG_FEATS_MAT",
                   help="convert neuraltalk's vgg_feats.mat (4096 x N) instead of reading images")
    p.add_argument("--quiet", action="store_true", help="only warnings and the summary")
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def resolve_config(args):
    """The job's config: --config, then --set, then the shortcut flags that were given."""
    cfg = load_config(args.config, args.set)
    values = {key: getattr(args, flag[2:].replace("-", "_")) for flag, key, _, _ in FLAGS}
    values.update({key: getattr(args, flag[2:].replace("-", "_")) for flag, key, _ in SWITCHES})
    return apply_values(cfg, {k: v for k, v in values.items() if v is not None})


def _neuraltalk(cfg, args, beam_args) -> int:
    from karpalign.data.neuraltalk import NeuraltalkError, convert_neuraltalk

    if beam_args:
        return _fail(f"--neuraltalk-features runs without Beam; unknown arguments {beam_args}")
    d, e = cfg.data, cfg.extract
    if not d.dataset or not d.records_dir:
        return _fail("--neuraltalk-features needs the dataset (--dataset or data.dataset) and the output folder "
                     "(--out or data.records_dir)")
    try:
        manifest = convert_neuraltalk(d.dataset, args.neuraltalk_features, d.records_dir,
                                      min_word_count=d.min_word_count, fold_restval=d.fold_restval,
                                      shards_per_split=e.shards_per_split, splits=e.splits or None,
                                      overwrite=e.overwrite)
    except (NeuraltalkError, DatasetError, FileExistsError, ValueError) as exc:
        return _fail(str(exc))
    counts = ", ".join(f"{k} {v}" for k, v in manifest.counts.items())
    print(f"converted {manifest.written} images ({counts}) from {args.neuraltalk_features}: "
          f"{manifest.feature_dim}-d {manifest.cnn} features, 1 region each, vocabulary "
          f"{manifest.vocab_size} words")
    print(f"outputs: {d.records_dir} (manifest.json, vocab.txt, *.tfrecord.gz)")
    return 0


def main(argv=None) -> int:
    args, beam_args = _parser().parse_known_args(argv)
    # karpalign's own progress at INFO; other libraries (Beam's runner notes, TF) only from WARNING on.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("karpalign").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.neuraltalk_features:
        return _neuraltalk(cfg, args, beam_args)

    from karpalign.beam.job import ExtractError, run_extract

    try:
        result = run_extract(cfg, beam_args)
    except (ExtractError, DatasetError) as exc:
        return _fail(str(exc))
    m, out, limit = result.manifest, cfg.data.records_dir, cfg.extract.max_failure_fraction
    counts = ", ".join(f"{k} {v}" for k, v in m.counts.items())
    print(f"extracted {m.written} of {m.input_records} images ({counts}); {m.num_regions} regions max, "
          f"{m.feature_dim}-d features from {m.cnn_spec} at {m.crop_size} px; "
          f"vocabulary {m.vocab_size} words (train split, min count {m.extra.get('min_word_count')})")
    if m.failed:
        from karpalign.beam.elements import STAGES

        stages = ", ".join(f"{k} {m.failures_by_stage[k]}" for k in STAGES if k in m.failures_by_stage)
        print(f"failed: {m.failed} images ({stages}); details: {out}/{m.dead_letters}")
    if result.counters:
        print("beam counters: " + ", ".join(f"{k}={v}" for k, v in sorted(result.counters.items())))
    print(f"outputs: {out} (manifest.json, vocab.txt, extract.yaml, {{split}}-*.tfrecord.gz, {m.dead_letters})")
    if not result.acceptable(limit):
        print(f"{PROG}: error: {m.failed} of {m.input_records} images failed ({result.failure_fraction:.1%}), "
              f"more than extract.max_failure_fraction (--max-failure-fraction) {limit:g}; see {out}/{m.dead_letters}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
