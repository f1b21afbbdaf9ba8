"""karpalign-make-scenes: render the synthetic captioned-scenes dataset (JPEGs + Karpathy dataset.json)."""

from __future__ import annotations

import argparse
import sys

from karpalign.datasets.generate import (DEFAULT_SPLIT_FRACTIONS, ScenesError, generate_scenes,
                                         parse_split_fractions)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="karpalign-make-scenes", description=__doc__)
    p.add_argument("--num-images", type=int, required=True, help="number of images to render (>= 1)")
    p.add_argument("--out", required=True, help="output directory (images/, dataset.json, scenes_meta.json)")
    p.add_argument("--seed", type=int, default=0, help="same seed => byte-identical output (default 0)")
    p.add_argument("--image-size", type=int, default=256, help="square image side in pixels (default 256)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all CPUs)")
    p.add_argument("--split-fractions", default=None,
                   help="'train=0.8,val=0.05,test=0.075,test_novel=0.075' or four numbers in that order "
                        f"(default {','.join(f'{k}={v}' for k, v in DEFAULT_SPLIT_FRACTIONS.items())})")
    p.add_argument("--captions-per-image", type=int, default=5,
                   help="distinct captions per image (default 5)")
    p.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="fraction of colour-shape pairs kept out of train/val/test (default 0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    try:
        fractions = parse_split_fractions(args.split_fractions) if args.split_fractions is not None else None
        summary = generate_scenes(args.out, args.num_images, seed=args.seed, image_size=args.image_size,
                                  workers=args.workers, split_fractions=fractions,
                                  captions_per_image=args.captions_per_image,
                                  heldout_fraction=args.heldout_fraction, progress=not args.quiet)
    except ScenesError as e:
        print(f"karpalign-make-scenes: error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v}" for k, v in summary["split_counts"].items())
    pairs = ", ".join(f"{c} {s}" for c, s in summary["heldout_pairs"])
    print(f"wrote {summary['num_images']} images ({counts}) and {summary['num_sentences']} sentences "
          f"to {summary['out_dir']} in {summary['seconds']:.1f}s "
          f"({summary['images_per_second']:.0f} images/s, {summary['workers']} workers)")
    print(f"held-out colour-shape pairs (only in test_novel): {pairs}")
    print(f"dataset: {summary['dataset_json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
