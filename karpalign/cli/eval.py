"""karpalign-eval: evaluate trained models.

  karpalign-eval retrieval --model-dir runs/align --records-dir runs/records --split test [--protocol full]
  karpalign-eval captions  --model-dir runs/gen   --records-dir runs/records --split test [--beam-size 7]
                           [--max-length 20] [--alpha 0] [--max-images N] [--baseline nn] [--dataset D]
  karpalign-eval region-captions --model-dir runs/gen_regions --records-dir runs/records_boxes
                           --dataset data/dataset.json --split test [--beam-size 7]

``captions`` generates one caption per image of the split (the mRNN from its region 0, the full frame; an updown
run from every region) and scores it against all the image's reference sentences (BLEU-1..4, METEOR, ROUGE-L,
CIDEr; SPICE is reported as unavailable), with novelty (share of generated sentences found verbatim among the
training captions) and, with ``--baseline nn``, the nearest-neighbour baseline (the caption of the most similar
training image). For datasets that list each image's objects (the synthetic scenes) it adds the grounded metric
(``grounding``: object precision and recall of the colour–shape pairs the captions name, count accuracy, novel
pairs named on test_novel), for the generator and the baseline; the objects come from ``--dataset`` or, by
default, from the dataset file the records were extracted from.
``region-captions`` captions every ground-truth box (records extracted with ``--proposer boxes``) and scores it
against the phrases that refer to that box (paper Table 3).

Results are printed as JSON and written to --out (default: <model-dir>/eval-<kind>-<split>.json).
Exit codes: 0 success, 1 evaluation failure (e.g. no Java for METEOR), 2 bad input (missing model, split or
dataset, feature size mismatch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


# ----------------------------------------------------------------------------------------------------------
# retrieval
# ----------------------------------------------------------------------------------------------------------

def _retrieval(args) -> dict:
    from karpalign.data import pipeline as P
    from karpalign.evaluation.retrieval import evaluate_retrieval
    from karpalign.training.run_dir import RunDir
    from karpalign.training.tasks import embed_split

    run = RunDir(args.model_dir, "align")
    model, cfg = run.load_alignment(), run.load_config()
    emb = embed_split(model, args.records_dir, args.split, P.vocab_table(args.records_dir),
                      max_words=cfg.data.max_words, max_images=args.max_images)
    result = evaluate_retrieval(emb["v"], emb["v_mask"], emb["s"], emb["s_mask"], emb["image_of_sentence"],
                                score=args.score or model.score, protocol=args.protocol)
    result.pop("per_fold", None)
    return {"kind": "retrieval", "split": args.split, "model_dir": args.model_dir, **result}


# ----------------------------------------------------------------------------------------------------------
# captions
# ----------------------------------------------------------------------------------------------------------

def _captions(args) -> dict:
    from karpalign.decoding.generate import load_generator
    from karpalign.evaluation.captions import evaluate_captions

    generator, vocab = load_generator(args.model_dir)
    result = evaluate_captions(generator, vocab, args.records_dir, args.split, beam_size=args.beam_size,
                               max_length=args.max_length, alpha=args.alpha, max_images=args.max_images,
                               baseline=args.baseline, samples=args.samples, min_length=args.min_length,
                               dataset=args.dataset)
    return {**result, "model_dir": args.model_dir}


def _region_captions(args) -> dict:
    from karpalign.decoding.generate import load_generator
    from karpalign.evaluation.region_captions import evaluate_region_captions

    if not os.path.isfile(args.dataset):
        raise FileNotFoundError(f"--dataset {args.dataset}: file not found")
    generator, vocab = load_generator(args.model_dir)
    result = evaluate_region_captions(generator, vocab, args.records_dir, args.dataset, args.split,
                                      beam_size=args.beam_size, max_length=args.max_length, alpha=args.alpha,
                                      max_images=args.max_images, samples=args.samples,
                                      min_length=args.min_length)
    return {"kind": "region-captions", "split": args.split, "model_dir": args.model_dir, **result}


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------

def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _add_decoding_args(p) -> None:
    p.add_argument("--model-dir", required=True, help="a `karpalign-train --task caption` run folder")
    p.add_argument("--records-dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--beam-size", type=_positive, default=7, help="paper: 7 (1 = greedy)")
    p.add_argument("--max-length", type=_positive, default=20, help="max generated words including <end>")
    p.add_argument("--alpha", type=_non_negative_float, default=0.0, help="length normalisation exponent")
    p.add_argument("--min-length", type=_non_negative_int, default=1,
                   help="words before <end> may be chosen (default 1: no empty captions)")
    p.add_argument("--max-images", type=_positive, default=None)
    p.add_argument("--samples", type=int, default=20, help="generated captions listed in the output")
    p.add_argument("--out", default=None)


def build_parser() -> argparse.ArgumentParser:
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
    c = sub.add_parser("captions", help="full-frame captions: BLEU, METEOR, ROUGE-L, CIDEr, novelty, nn baseline")
    _add_decoding_args(c)
    c.add_argument("--baseline", default=None, choices=["nn"], help="also score the nearest-neighbour baseline")
    c.add_argument("--dataset", default=None,
                   help="dataset.json listing each image's objects, for the grounded metric (default: the records' "
                        "own dataset file when it lists objects)")
    g = sub.add_parser("region-captions", help="captions of ground-truth boxes scored against their phrases")
    _add_decoding_args(g)
    g.add_argument("--dataset", required=True, help="dataset.json with image boxes and sentence phrases")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    run = {"retrieval": _retrieval, "captions": _captions, "region-captions": _region_captions}[args.kind]
    try:
        result = run(args)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"karpalign-eval: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a metric tool failed (no Java, METEOR died)
        print(f"karpalign-eval: error: {e}", file=sys.stderr)
        return 1
    from karpalign.training.run_dir import RunDir

    out = args.out or RunDir(args.model_dir).eval_path(args.kind, args.split)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
