"""karpalign-eval: evaluate trained models.

  karpalign-eval retrieval --model-dir runs/align --records-dir runs/records --split test [--protocol full]
  karpalign-eval captions  --model-dir runs/gen   --records-dir runs/records --split test [--beam-size 7]
                           [--max-length 20] [--alpha 0] [--max-images N] [--baseline nn]
  karpalign-eval region-captions --model-dir runs/gen_regions --records-dir runs/records_boxes
                           --dataset data/dataset.json --split test [--beam-size 7]

``captions`` generates one caption per image of the split from its region 0 (full frame) features and scores it
against all the image's reference sentences (BLEU-1..4, METEOR, ROUGE-L, CIDEr; SPICE is reported as
unavailable), with novelty (share of generated sentences found verbatim among the training captions) and, with
``--baseline nn``, the nearest-neighbour baseline (the caption of the most similar training image).
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


# ----------------------------------------------------------------------------------------------------------
# captions
# ----------------------------------------------------------------------------------------------------------

def read_split_images(records_dir: str, split: str, *, with_features: bool = True,
                      max_images: int | None = None, batch_size: int = 64) -> dict:
    """A split's images in file order: ``image_ids`` (N,), ``features`` (N, D) region 0 (or None), ``captions``
    (N lists of raw reference sentences)."""
    import numpy as np

    from karpalign.data import features as F
    from karpalign.data import pipeline as P

    manifest = F.read_manifest(records_dir)
    out = {"image_ids": [], "features": [], "captions": []}
    for batch in P.image_dataset(records_dir, split, feature_dim=int(manifest["feature_dim"]),
                                 num_regions=int(manifest["num_regions"]), batch_size=batch_size):
        take = len(batch["image_id"])
        if max_images is not None:
            take = min(take, max_images - len(out["image_ids"]))
        out["image_ids"].extend(x.decode() for x in batch["image_id"][:take].numpy())
        out["captions"].extend([s.decode() for s in caps] for caps in batch["sentences_raw"][:take].to_list())
        if with_features:
            out["features"].append(batch["region_features"][:take, 0].numpy())  # (b, D) full frame
        if max_images is not None and len(out["image_ids"]) >= max_images:
            break
    if not out["image_ids"]:
        raise ValueError(f"split {split!r} in {records_dir} has no images")
    for image_id, caps in zip(out["image_ids"], out["captions"]):
        if not caps:
            raise ValueError(f"image {image_id!r} of split {split!r} in {records_dir} has no reference sentences")
    out["features"] = np.concatenate(out["features"]).astype(np.float32) if with_features else None
    return out


def evaluate_captions(generator, vocab, records_dir: str, split: str = "test", *, beam_size: int = 7,
                      max_length: int = 20, alpha: float = 0.0, max_images: int | None = None,
                      baseline: str | None = None, samples: int = 20, batch_size: int = 64) -> dict:
    """Full-frame captions of a split, scored against the references; novelty; optional nn baseline."""
    from karpalign.data import features as F
    from karpalign.decoding.generate import generate_captions
    from karpalign.evaluation.captions import nearest_neighbour_captions, score_captions

    manifest = F.read_manifest(records_dir)
    if int(manifest["feature_dim"]) != int(generator.feature_dim):
        raise ValueError(f"{records_dir} holds {manifest['feature_dim']}-d features (cnn "
                         f"{manifest.get('cnn', '?')}) but the generator takes {generator.feature_dim}-d ones")
    test = read_split_images(records_dir, split, max_images=max_images, batch_size=batch_size)
    train = read_split_images(records_dir, "train", with_features=baseline == "nn", batch_size=batch_size)
    train_captions = [c for caps in train["captions"] for c in caps]

    decoded = generate_captions(generator, vocab, test["features"], beam_size=beam_size, max_length=max_length,
                                alpha=alpha, top_k=1, batch_size=batch_size)
    generated = [caps[0][0] if caps else "" for caps in decoded]
    references = dict(zip(test["image_ids"], test["captions"]))
    result = {
        "kind": "captions", "split": split,
        "metrics": score_captions(references, dict(zip(test["image_ids"], generated))),
        "novelty": _novelty(generated, train_captions),
    }
    nn = None
    if baseline == "nn":
        nn = nearest_neighbour_captions(train["features"], train["captions"], test["features"])
        result["baseline"] = {"kind": "nn", "metrics": score_captions(references, dict(zip(test["image_ids"], nn))),
                              "novelty": _novelty(nn, train_captions)}
    elif baseline is not None:
        raise ValueError(f"unknown baseline {baseline!r}; the only one is 'nn'")
    result["samples"] = [{"image_id": image_id, "generated": generated[n], "references": test["captions"][n],
                          **({"nn": nn[n]} if nn is not None else {})}
                         for n, image_id in enumerate(test["image_ids"][:samples])]
    result["settings"] = {"beam_size": beam_size, "max_length": max_length, "alpha": alpha,
                          "max_images": max_images, "n_images": len(generated), "n_train_images":
                          len(train["image_ids"]), "records_dir": records_dir, "image_vector": "region 0 (full frame)"}
    return result


def _novelty(generated, train_captions) -> dict:
    from karpalign.evaluation.captions import novelty

    found = novelty(generated, train_captions)
    return {"in_training_set": found, "novel": 1.0 - found}


def _captions(args) -> dict:
    from karpalign.decoding.generate import load_generator

    generator, vocab = load_generator(args.model_dir)
    result = evaluate_captions(generator, vocab, args.records_dir, args.split, beam_size=args.beam_size,
                               max_length=args.max_length, alpha=args.alpha, max_images=args.max_images,
                               baseline=args.baseline, samples=args.samples)
    return {**result, "model_dir": args.model_dir}


def _region_captions(args) -> dict:
    from karpalign.decoding.generate import load_generator
    from karpalign.evaluation.region_captions import evaluate_region_captions

    if not os.path.isfile(args.dataset):
        raise FileNotFoundError(f"--dataset {args.dataset}: file not found")
    generator, vocab = load_generator(args.model_dir)
    result = evaluate_region_captions(generator, vocab, args.records_dir, args.dataset, args.split,
                                      beam_size=args.beam_size, max_length=args.max_length, alpha=args.alpha,
                                      max_images=args.max_images, samples=args.samples)
    return {"kind": "region-captions", "split": args.split, "model_dir": args.model_dir, **result}


# ----------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------

def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
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
    out = args.out or os.path.join(args.model_dir, f"eval-{args.kind}-{args.split}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
