"""karpalign-align: MRF (Viterbi) alignment of sentence words to image regions with a trained model.

  karpalign-align --model-dir runs/align --records-dir runs/records --out runs/align/regions \
      [--dataset data/scenes/dataset.json] [--beta 1.0] [--splits train,val,test]

Writes snippets-<split>.jsonl, region–snippet TFRecords (for karpalign-train --task caption --on regions),
alignment.json (counts and, with --dataset holding phrase links, word/snippet alignment accuracy).
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
    p.add_argument("--splits", default="train,val,test")
    p.add_argument("--max-words", type=int, default=None, help="default: the model's data.max_words")
    p.add_argument("--min-snippet-words", type=int, default=1)
    p.add_argument("--keep-full-image", action="store_true", help="also emit snippets aligned to region 0")
    p.add_argument("--max-images", type=int, default=None, help="per split")
    args = p.parse_args(argv)

    import keras

    from karpalign.alignment.job import align_split, write_region_manifest
    from karpalign.config import load_config
    from karpalign.data.records import DatasetError, read_karpathy_json
    from karpalign.training.tasks import ALIGN_MODEL

    model_path = os.path.join(args.model_dir, ALIGN_MODEL)
    if not os.path.exists(model_path):
        print(f"karpalign-align: {model_path} not found (train with karpalign-train --task align first)",
              file=sys.stderr)
        return 2
    cfg = load_config(os.path.join(args.model_dir, "config.yaml"))
    max_words = args.max_words or cfg.data.max_words
    gt = None
    if args.dataset:
        try:
            gt = {r.image_id: r for r in read_karpathy_json(args.dataset, check_images=False)}
        except DatasetError as e:
            print(f"karpalign-align: {e}", file=sys.stderr)
            return 2
    model = keras.saving.load_model(model_path)
    results, counts = {}, {}
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
    with open(os.path.join(args.out, "alignment.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
