"""karpalign-caption-regions: describe boxes of one image with a (region-trained) caption generator.

  karpalign-caption-regions --model-dir runs/gen_regions --records-dir runs/records photo.jpg \\
      --boxes '0.1,0.2,0.6,0.7;0,0,1,1'
  karpalign-caption-regions --model-dir runs/gen_regions --records-dir runs/records photo.jpg \\
      --proposer grid --regions 8

The backbone (manifest ``cnn_spec``) and crop size (``crop_size``) come from the records the generator's
features were extracted into, and the region features are computed exactly as ``karpalign-extract`` computes
them. Prints one tab-separated line per box: ``ymin,xmin,ymax,xmax``, the best caption and its score (then the
next ``--top-k`` - 1 captions and scores); ``--json`` prints one JSON object instead. Exit code 0 on success,
2 on bad input (missing model or image, undecodable image, bad boxes, records without extraction settings).
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="karpalign-caption-regions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a `karpalign-train --task caption` run folder")
    p.add_argument("--records-dir", required=True,
                   help="records written by karpalign-extract (their manifest names the CNN and crop size)")
    p.add_argument("image", metavar="IMAGE", help="image file (JPEG, PNG, GIF, BMP, WebP)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--boxes", help="'ymin,xmin,ymax,xmax;...' normalised to [0, 1]")
    where.add_argument("--proposer", help="'grid', 'segments' or 'detector:<SavedModel or hub handle>' "
                                              "(full image first)")
    p.add_argument("--regions", type=int, default=19, help="K boxes from --proposer besides the full image")
    p.add_argument("--beam-size", type=int, default=7)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--alpha", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=1, help="captions per box")
    p.add_argument("--min-length", type=int, default=1, help="words before <end> may be chosen (1: never empty)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text lines")
    return p


def caption_image_regions(args) -> dict:
    """Reads the image, picks the boxes, computes their features and captions them (see the module doc)."""
    from karpalign.decoding.generate import CaptionGenerator, load_generator
    from karpalign.evaluation.region_captions import caption_boxes, extraction_settings, parse_boxes
    from karpalign.vision.backbones import get_backbone
    from karpalign.vision.region_features import decode_image_array
    from karpalign.vision.proposers import get_proposer

    cnn_spec, crop_size, _ = extraction_settings(args.records_dir)
    generator, vocab = load_generator(args.model_dir)
    captioner = CaptionGenerator(generator, vocab, beam_size=args.beam_size, max_length=args.max_length,
                                 alpha=args.alpha, top_k=args.top_k, min_length=args.min_length)
    with open(args.image, "rb") as f:
        image = decode_image_array(f.read(), source=args.image)  # (H, W, 3) uint8, as extraction decodes it
    if args.boxes is not None:
        boxes = parse_boxes(args.boxes)
    elif args.proposer == "boxes":
        raise ValueError("--proposer boxes needs a dataset's boxes; give them with --boxes instead")
    else:
        boxes = get_proposer(args.proposer, args.regions).propose(image, source=args.image)  # (1 + K, 4)
    regions = caption_boxes(captioner, get_backbone(cnn_spec), image, boxes, crop_size)
    return {"image": args.image, "cnn_spec": cnn_spec, "crop_size": crop_size, "model_dir": args.model_dir,
            "beam_size": args.beam_size, "max_length": args.max_length, "alpha": args.alpha,
            "min_length": args.min_length,
            "regions": [{"box": r["box"], "captions": [{"text": t, "score": s} for t, s in r["captions"]]}
                        for r in regions]}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.regions < 0 or args.beam_size < 1 or args.max_length < 1 or not 1 <= args.top_k <= args.beam_size:
        parser.error("--regions must be >= 0, --beam-size and --max-length >= 1, 1 <= --top-k <= --beam-size")
    if args.alpha < 0:
        parser.error("--alpha must be >= 0")
    if not 0 <= args.min_length <= args.max_length:
        parser.error("--min-length must be between 0 and --max-length")
    try:
        result = caption_image_regions(args)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"karpalign-caption-regions: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for region in result["regions"]:
        fields = [",".join(f"{v:.4f}" for v in region["box"])]
        for caption in region["captions"]:
            fields += [caption["text"], f"{caption['score']:.4f}"]
        print("\t".join(fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
