"""Region captions: describe boxes of an image, and score a generator on ground-truth boxes (paper Table 3).

Two uses of a (region-trained or full-frame) generator on single regions:

- :func:`caption_boxes` captions given boxes of one image. The region features are computed exactly as the
  extraction job computes them (:func:`karpalign.vision.proposers.region_features`: one batched
  ``crop_and_resize`` at the records' ``crop_size``, the backbone's preprocessing, the CNN), with the backbone
  named by the records' manifest (``cnn_spec``), so a region seen here gets the features it would get in the
  records. This is ``karpalign-caption-regions``.
- :func:`evaluate_region_captions` is the paper's region-level evaluation on data with box-level phrase
  annotations (the synthetic scenes, or any Karpathy ``dataset.json`` with ``boxes`` and sentence ``phrases``).
  The records must come from the ``boxes`` proposer, so region r of an image is its ground-truth box r - 1;
  each such region is captioned from its own features and scored (coco-caption BLEU-1..4, METEOR, ROUGE-L,
  CIDEr) against every phrase of the image's sentences that refers to exactly that box. Comparing a
  region-trained generator with a full-frame one on this is the paper's Table 3 (region model BLEU-1 35.2 vs
  full-frame 14.2 on COCO snippets).
"""

from __future__ import annotations

import numpy as np

from karpalign.data import features as F
from karpalign.data import pipeline as P
from karpalign.decoding.generate import CaptionGenerator

GROUND_TRUTH_PROPOSER = "boxes"
BOX_TOLERANCE = 1e-4  # records store float32 boxes; dataset.json files round to 6 decimals


# ----------------------------------------------------------------------------------------------------------
# Captioning given boxes of one image
# ----------------------------------------------------------------------------------------------------------

def parse_boxes(text: str) -> np.ndarray:
    """``'y0,x0,y1,x1;y0,x0,y1,x1'`` -> float32 (N, 4) normalised boxes; ValueError names the bad box."""
    from karpalign.vision.proposers import check_boxes

    parts = [p.strip() for p in text.split(";") if p.strip()]
    if not parts:
        raise ValueError(f"--boxes {text!r}: no boxes; expected 'ymin,xmin,ymax,xmax;...' with values in [0, 1]")
    rows = []
    for n, part in enumerate(parts):
        try:
            values = [float(v) for v in part.split(",")]
        except ValueError:
            values = []
        if len(values) != 4:
            raise ValueError(f"--boxes: box {n} {part!r} is not four comma-separated numbers "
                             "'ymin,xmin,ymax,xmax'")
        rows.append(values)
    return check_boxes(rows, "--boxes")


def extraction_settings(records_dir: str) -> tuple[str, int, dict]:
    """(backbone spec, crop size, manifest) of the records written by ``karpalign-extract``."""
    manifest = F.read_manifest(records_dir)
    missing = [k for k in ("cnn_spec", "crop_size") if getattr(manifest, k) is None]
    if missing:
        hint = (f"; these look like region-snippet records, use their source records {manifest.source_records}"
                if manifest.source_records else "")
        raise ValueError(f"{records_dir}/{F.MANIFEST} has no {' / '.join(missing)}: pass the records folder "
                         f"written by karpalign-extract{hint}")
    return manifest.cnn_spec, manifest.crop_size, manifest


def caption_boxes(captioner: CaptionGenerator, backbone, image: np.ndarray, boxes, crop_size: int) -> list[dict]:
    """Captions each box of one image -> ``[{"box": [4 floats], "captions": [(text, score), ...]}, ...]``.

    ``image`` is uint8 (H, W, 3) as :func:`karpalign.vision.region_features.decode_image_array` (the extraction job's decoder) returns it; ``boxes`` (N, 4)
    normalised [ymin, xmin, ymax, xmax]; ``crop_size`` the records' manifest value.
    """
    from karpalign.vision.proposers import check_boxes, region_features

    boxes = check_boxes(boxes, "boxes")
    if len(boxes) == 0:
        raise ValueError("no boxes to caption")
    if backbone.feature_dim != captioner.feature_dim:
        raise ValueError(f"backbone {backbone.name} gives {backbone.feature_dim}-d features but the generator "
                         f"takes {captioner.feature_dim}-d ones: were its records extracted with another CNN?")
    feats = region_features(backbone, image, boxes, crop_size)  # (N, D)
    return [{"box": [float(v) for v in box], "captions": caps} for box, caps in zip(boxes, captioner(feats))]


# ----------------------------------------------------------------------------------------------------------
# Ground-truth boxes of a split
# ----------------------------------------------------------------------------------------------------------

def box_phrases(record, box_index: int) -> list[str]:
    """Texts of all phrases of ``record``'s sentences that refer to exactly box ``box_index`` (and no other)."""
    return [" ".join(s.tokens[p.start:p.end]) for s in record.sentences for p in s.phrases
            if list(p.boxes) == [box_index]]


def ground_truth_regions(records_dir: str, dataset_json: str, split: str, *, max_images: int | None = None,
                         batch_size: int = 64) -> dict:
    """Every extracted ground-truth box of a split that has phrases: its region features and reference phrases.

    Returns ``{"keys": ["<image id>/box<b>", ...], "features": (N, D), "references": {key: [phrases]},
    "boxes": {key: [4 floats]}, "images": int, "boxes_total": int, "boxes_without_phrases": int,
    "boxes_not_extracted": int}``. Raises ValueError when the records were not made with the ``boxes`` proposer
    or do not match ``dataset_json`` (an image id it lacks, or a region whose box differs from the dataset's).
    """
    from karpalign.data.records import read_karpathy_json

    manifest = F.read_manifest(records_dir)
    proposer = manifest.proposer.kind
    if proposer != GROUND_TRUTH_PROPOSER:
        raise ValueError(f"{records_dir}/{F.MANIFEST}: proposer is {proposer!r}, but region "
                         f"caption evaluation needs records extracted with --proposer {GROUND_TRUTH_PROPOSER} "
                         "(region r = ground-truth box r-1)")
    truth = {r.image_id: r for r in read_karpathy_json(dataset_json, check_images=False)}
    out = {"keys": [], "features": [], "references": {}, "boxes": {}, "images": 0, "boxes_total": 0,
           "boxes_without_phrases": 0, "boxes_not_extracted": 0}
    for batch in P.image_dataset(records_dir, split, batch_size=batch_size, max_images=max_images):
        feats, boxes = batch["region_features"].numpy(), batch["boxes"].numpy()  # (B, R, D), (B, R, 4)
        n_regions = batch["region_mask"].numpy().sum(axis=1).astype(int)  # (B,)
        for i, image_id in enumerate(x.decode() for x in batch["image_id"].numpy()):
            record = truth.get(image_id)
            if record is None:
                raise ValueError(f"image {image_id!r} of {records_dir} (split {split!r}) is not in {dataset_json}")
            gt_boxes = np.asarray(record.boxes or [], np.float32).reshape(-1, 4)
            out["images"] += 1
            out["boxes_total"] += len(gt_boxes)
            out["boxes_not_extracted"] += max(0, len(gt_boxes) - (n_regions[i] - 1))
            for r in range(1, n_regions[i]):
                b = r - 1
                if b >= len(gt_boxes) or not np.allclose(boxes[i, r], gt_boxes[b], atol=BOX_TOLERANCE):
                    given = gt_boxes[b].tolist() if b < len(gt_boxes) else "no such box"
                    raise ValueError(f"image {image_id!r}: region {r} of {records_dir} has box "
                                     f"{boxes[i, r].tolist()}, but box {b} in {dataset_json} is {given}; "
                                     "were the records extracted from this dataset?")
                refs = box_phrases(record, b)
                if not refs:
                    out["boxes_without_phrases"] += 1
                    continue
                key = f"{image_id}/box{b}"
                out["keys"].append(key)
                out["features"].append(feats[i, r])
                out["references"][key] = refs
                out["boxes"][key] = [float(v) for v in gt_boxes[b]]
        if max_images is not None and out["images"] >= max_images:
            break
    if out["images"] == 0:
        raise ValueError(f"split {split!r} in {records_dir} has no images")
    if not out["keys"]:
        raise ValueError(f"no ground-truth box of split {split!r} has a phrase in {dataset_json}: nothing to "
                         "evaluate (the dataset needs sentence 'phrases' that link spans to 'boxes')")
    out["features"] = np.stack(out["features"]).astype(np.float32)  # (N, D)
    return out


def evaluate_region_captions(generator, vocab, records_dir: str, dataset_json: str, split: str = "test", *,
                             beam_size: int = 7, max_length: int = 20, alpha: float = 0.0,
                             max_images: int | None = None, batch_size: int = 64, samples: int = 20,
                             min_length: int = 1) -> dict:
    """Captions every ground-truth box (that has phrases) of a split and scores against the box's phrases.

    Args:
        generator, vocab: the caption model and its vocabulary (:func:`karpalign.decoding.generate.load_generator`).
        records_dir: records extracted with ``--proposer boxes`` from ``dataset_json``.
        dataset_json: Karpathy-format file with image ``boxes`` and sentence ``phrases``.
        split: which split to evaluate.
        beam_size, max_length, alpha, min_length: beam search settings.
        max_images: evaluate only the first images of the split.
        samples: how many (box, generated, references) examples to return.

    Returns:
        ``{"metrics": score_captions(...) result (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE None, notes),
        "counts": {images, boxes_total, boxes_evaluated, boxes_without_phrases, boxes_not_extracted,
        empty_captions},
        "samples": [...], "settings": {...}}``.
    """
    from karpalign.evaluation.captions import score_captions

    if len(vocab) != int(generator.vocab_size):
        raise ValueError(f"the vocabulary has {len(vocab)} words but the generator predicts {generator.vocab_size}")
    manifest = F.read_manifest(records_dir)
    if manifest.feature_dim != int(generator.feature_dim):
        raise ValueError(f"{records_dir} holds {manifest.feature_dim}-d region features but the generator takes "
                         f"{generator.feature_dim}-d ones")
    regions = ground_truth_regions(records_dir, dataset_json, split, max_images=max_images, batch_size=batch_size)
    captioner = CaptionGenerator(generator, vocab, beam_size=beam_size, max_length=max_length, alpha=alpha,
                                 top_k=1, batch_size=batch_size, min_length=min_length)
    generated = {key: caps[0][0] if caps else "" for key, caps in zip(regions["keys"], captioner(regions["features"]))}
    metrics = score_captions(regions["references"], generated)
    return {
        "metrics": metrics,
        "counts": {"images": regions["images"], "boxes_total": regions["boxes_total"],
                   "boxes_evaluated": len(regions["keys"]),
                   "boxes_without_phrases": regions["boxes_without_phrases"],
                   "boxes_not_extracted": regions["boxes_not_extracted"],
                   "empty_captions": sum(not text.strip() for text in generated.values())},
        "samples": [{"key": key, "box": regions["boxes"][key], "generated": generated[key],
                     "references": regions["references"][key]} for key in regions["keys"][:samples]],
        "settings": {"split": split, "beam_size": beam_size, "max_length": max_length, "alpha": alpha,
                     "min_length": min_length, "max_images": max_images, "records_dir": records_dir, "dataset": dataset_json},
    }
