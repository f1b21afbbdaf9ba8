"""karpalign-align: MRF (Viterbi) alignment of sentence words to image regions with a trained model.

  karpalign-align --model-dir runs/align --records-dir runs/records --out runs/align/regions \
      [--dataset data/scenes/dataset.json] [--beta 1.0 | --tune-beta 0,0.5,1,2,4] [--splits train,val,test] \
      [--pictures 20 [--pictures-split test]]

Writes snippets-<split>.jsonl, region–snippet TFRecords (for karpalign-train --task caption --on regions),
alignment.json (counts and, with --dataset holding phrase links, word/snippet alignment accuracy).
With --pictures N: pictures/NNNN_<image id>_s0.png, the first sentence of each of the first N images of
--pictures-split drawn onto its image (read from the records' image paths; images whose file is missing are
skipped and counted), and pictures/index.html showing them; alignment.json gets a "pictures" entry.
With --tune-beta B1,B2,...: each smoothing value is tried on --tune-split (default val; needs --dataset's
phrase links), the one with the best word alignment accuracy is used for every split, and alignment.json
gets a "beta_search" entry with each value's accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="karpalign-align", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="output dir of karpalign-train --task align")
    p.add_argument("--records-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default=None, help="dataset.json with ground-truth phrase links (scenes)")
    p.add_argument("--beta", type=float, default=1.0, help="MRF smoothing: reward for neighbours sharing a region")
    p.add_argument("--tune-beta", default=None, metavar="B1,B2,...",
                   help="choose beta among these by word alignment accuracy on --tune-split (needs --dataset)")
    p.add_argument("--tune-split", default="val")
    p.add_argument("--splits", default="train,val,test")
    p.add_argument("--max-words", type=int, default=None, help="default: the model's data.max_words")
    p.add_argument("--min-snippet-words", type=int, default=1)
    p.add_argument("--keep-full-image", action="store_true", help="also emit snippets aligned to region 0")
    p.add_argument("--max-images", type=int, default=None, help="per split")
    p.add_argument("--pictures", type=int, default=0, metavar="N",
                   help="draw the alignments of the first N images of --pictures-split (default 0: none)")
    p.add_argument("--pictures-split", default="test", help="split to draw pictures from (default test)")
    args = p.parse_args(argv)
    if args.pictures < 0:
        print(f"karpalign-align: --pictures must be >= 0, got {args.pictures}", file=sys.stderr)
        return 2
    betas = None
    if args.tune_beta is not None:
        try:
            betas = [float(b) for b in args.tune_beta.split(",") if b.strip()]
        except ValueError:
            print(f"karpalign-align: --tune-beta needs comma-separated numbers, got {args.tune_beta!r}",
                  file=sys.stderr)
            return 2
        if not betas or not args.dataset:
            print("karpalign-align: --tune-beta needs at least one value and --dataset with phrase links",
                  file=sys.stderr)
            return 2

    from karpalign.alignment.beta_search import tune_beta
    from karpalign.alignment.job import align_split, write_alignment_pictures, write_region_manifest
    from karpalign.data.records import DatasetError, read_karpathy_json
    from karpalign.training.run_dir import RunDir

    run = RunDir(args.model_dir, "align")
    try:
        run.check()
        cfg = run.load_config()
    except (FileNotFoundError, ValueError) as e:
        print(f"karpalign-align: {e} (train with karpalign-train --task align first)", file=sys.stderr)
        return 2
    max_words = args.max_words or cfg.data.max_words
    gt = None
    if args.dataset:
        try:
            gt = {r.image_id: r for r in read_karpathy_json(args.dataset, check_images=False)}
        except DatasetError as e:
            print(f"karpalign-align: {e}", file=sys.stderr)
            return 2
    if args.pictures:
        import tensorflow as tf

        from karpalign.data.features import shard_pattern

        pattern = shard_pattern(args.records_dir, args.pictures_split)
        if not tf.io.gfile.glob(pattern):
            print(f"karpalign-align: --pictures-split {args.pictures_split}: no TFRecord shards match {pattern}",
                  file=sys.stderr)
            return 2
    model = run.load_alignment()
    os.makedirs(args.out, exist_ok=True)
    results, counts = {}, {}
    if betas:
        try:
            args.beta, results["beta_search"] = tune_beta(model, args.records_dir, args.tune_split, betas, gt,
                                                          max_words=max_words, max_images=args.max_images)
        except (FileNotFoundError, ValueError) as e:
            print(f"karpalign-align: --tune-beta on split {args.tune_split}: {e}", file=sys.stderr)
            return 2
        print(f"karpalign-align: beta {args.beta:g} aligns best on {args.tune_split} "
              f"({results['beta_search']['word_accuracy']})", file=sys.stderr)
    try:
        for split in [s for s in args.splits.split(",") if s]:
            r = align_split(model, args.records_dir, split, args.out, beta=args.beta, max_words=max_words,
                            ground_truth=gt, min_snippet_words=args.min_snippet_words,
                            skip_full_image=not args.keep_full_image, max_images=args.max_images)
            results[split] = r
            counts[split] = r["snippets"]
    except (FileNotFoundError, ValueError) as e:
        print(f"karpalign-align: {e}", file=sys.stderr)
        return 2
    write_region_manifest(args.records_dir, args.out, counts, {"beta": args.beta})
    if args.pictures:
        try:
            pictures = write_alignment_pictures(model, args.records_dir, args.pictures_split, args.out,
                                                num_images=args.pictures, beta=args.beta, max_words=max_words)
        except (FileNotFoundError, ValueError) as e:
            print(f"karpalign-align: --pictures-split {args.pictures_split}: {e}", file=sys.stderr)
            return 2
        results["pictures"] = pictures
        _report_pictures(pictures)
    with open(os.path.join(args.out, "alignment.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return 0


def _report_pictures(r: dict) -> None:
    """One line on what was drawn, and a note naming why images were skipped (e.g. records without images)."""
    print(f"karpalign-align: {r['pictures']} alignment pictures of {r['images']} {r['split']} images in {r['dir']}"
          + (f" (page {r['html']})" if r["html"] else ""), file=sys.stderr)
    skipped = {"image file missing": r["missing_images"], "image unreadable": r["unreadable_images"],
               "no sentence": r["no_sentence"]}
    if any(skipped.values()):
        print("karpalign-align: note: skipped " + ", ".join(f"{n} ({why})" for why, n in skipped.items() if n)
              + "; e.g. " + "; ".join(r["skipped_examples"] or ["-"]), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
