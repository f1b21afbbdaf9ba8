"""karpalign-vocab: build the vocabulary from a caption dataset's training split and print a summary."""

from __future__ import annotations

import argparse
import sys

from karpalign.data.records import DatasetError, ReadReport, by_split, iter_train_tokens, read_dataset
from karpalign.data.text import Vocabulary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="karpalign-vocab", description=__doc__)
    p.add_argument("dataset", help="Karpathy dataset.json, COCO captions json or .jsonl")
    p.add_argument("--image-root", default=None)
    p.add_argument("--min-count", type=int, default=5, help="minimum training count (paper: 5)")
    p.add_argument("--fold-restval", action="store_true", help="count COCO restval images as train")
    p.add_argument("--out", required=True, help="vocabulary text file to write")
    args = p.parse_args(argv)
    if args.min_count < 1:
        p.error("--min-count must be >= 1")
    report = ReadReport()
    try:
        records = read_dataset(args.dataset, args.image_root, fold_restval=args.fold_restval, report=report)
    except DatasetError as e:
        print(f"karpalign-vocab: {e}", file=sys.stderr)
        return 2
    splits = by_split(records)
    if not splits.get("train"):
        print(f"karpalign-vocab: {args.dataset} has no training images", file=sys.stderr)
        return 2
    vocab = Vocabulary.build(iter_train_tokens(records), min_count=args.min_count)
    vocab.save(args.out)
    print(f"read {args.dataset}: {report.summary()}")
    print("splits: " + ", ".join(f"{k} {len(v)} images / {sum(len(r.sentences) for r in v)} sentences"
                                 for k, v in sorted(splits.items())))
    print(f"vocabulary: {len(vocab)} entries (min count {args.min_count}, train split only) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
