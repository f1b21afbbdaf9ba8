"""karpalign-eval: evaluate trained models.

  karpalign-eval retrieval --model-dir runs/align --records-dir runs/records --split test [--protocol full]
  karpalign-eval captions  --model-dir runs/gen   --records-dir runs/records --split test [--beam-size 7]

Results are printed as JSON and written to --out (default: <model-dir>/eval-<kind>-<split>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _retrieval(args) -> dict:
    import keras

    from karpalign.config import load_config
    from karpalign.data import features as F
    from karpalign.data import pipeline as P
    from karpalign.evaluation.retrieval import evaluate_retrieval
    from karpalign.training.tasks import ALIGN_MODEL, embed_split

    model = keras.saving.load_model(os.path.join(args.model_dir, ALIGN_MODEL))
    cfg = load_config(os.path.join(args.model_dir, "config.yaml"))
    manifest = F.read_manifest(args.records_dir)
    emb = embed_split(model, args.records_dir, args.split, P.vocab_table(args.records_dir),
                      feature_dim=int(manifest["feature_dim"]), num_regions=int(manifest["num_regions"]),
                      max_words=cfg.data.max_words, max_images=args.max_images)
    result = evaluate_retrieval(emb["v"], emb["v_mask"], emb["s"], emb["s_mask"], emb["image_of_sentence"],
                                score=args.score or model.score, protocol=args.protocol)
    result.pop("per_fold", None)
    return {"kind": "retrieval", "split": args.split, "model_dir": args.model_dir, **result}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="karpalign-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="kind", required=True)
    r = sub.add_parser("retrieval", help="image<->sentence retrieval R@1/5/10, median and mean rank")
    r.add_argument("--model-dir", required=True)
    r.add_argument("--records-dir", required=True)
    r.add_argument("--split", default="test")
    r.add_argument("--protocol", default="full", choices=["full", "1k", "5k"])
    r.add_argument("--score", default=None, choices=["brnn", "defrag", "global"],
                   help="default: the score the model was trained with")
    r.add_argument("--max-images", type=int, default=None)
    r.add_argument("--out", default=None)
    args = p.parse_args(argv)
    try:
        result = _retrieval(args)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"karpalign-eval: {e}", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.model_dir, f"eval-{args.kind}-{args.split}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
