"""karpalign-export: write a trained alignment model + generator as a versioned TF Serving SavedModel.

  karpalign-export --align-dir runs/align --caption-dir runs/caption --records-dir runs/records \\
                   --export-base models --model-name karpalign

writes models/karpalign/<next free version>/ with the signatures serving_default (image bytes -> captions),
caption_features, caption_examples, embed_images, embed_sentences, score and align, the vocabulary and
resolved config as assets and TF Serving warmup requests. Beam settings default to the caption run's
`decode` config. Prints the version folder. Exit code 0 on success, 2 on bad input (message on stderr).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="karpalign-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--align-dir", required=True, help="output folder of karpalign-train --task align")
    p.add_argument("--caption-dir", required=True, help="output folder of karpalign-train --task caption")
    p.add_argument("--records-dir", default=None,
                   help="records folder whose manifest names the backbone and crop size (default: the manifest "
                        "copy in --align-dir)")
    p.add_argument("--export-base", required=True, help="base folder; the model goes to BASE/NAME/VERSION")
    p.add_argument("--model-name", default="karpalign", help="model name (default karpalign)")
    p.add_argument("--version", type=int, default=None, help="version number (default: next free integer)")
    p.add_argument("--beam-size", type=int, default=None, help="beam size (default: caption run config, 7)")
    p.add_argument("--max-length", type=int, default=None, help="max generated words (default: config, 20)")
    p.add_argument("--alpha", type=float, default=None, help="length normalisation exponent (default: config, 0)")
    p.add_argument("--top-k", type=int, default=None, help="captions returned per image (default: config, 3)")
    p.add_argument("--min-length", type=int, default=None,
                   help="words before <end> may be chosen (default: config, 1 = never an empty caption)")
    p.add_argument("--proposer", default=None,
                   help="in-graph region proposer: grid, learned:RUN_DIR (a karpalign-train --task propose run) or "
                        "detector:SAVED_MODEL; default: the records' own proposer (records made with segments or "
                        "boxes need this flag). A proposer other than the records' is recorded in the config asset "
                        "and in serving_default's proposer / records_proposer outputs")
    p.add_argument("--regions", type=int, default=None,
                   help="boxes besides the full image (default: the records' proposer k)")
    p.add_argument("--crop-size", type=int, default=None, help="crop side (default: manifest crop_size)")
    p.add_argument("--no-warmup", action="store_true", help="do not write TF Serving warmup requests")
    p.add_argument("--no-xla", action="store_true",
                   help="plain-graph beam search: for a TF Serving started without --xla_cpu_compilation_enabled=true "
                        "(the default export XLA-compiles it, which that flag must allow)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("version", "beam_size", "max_length", "top_k", "crop_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.min_length is not None and args.min_length < 0:
        parser.error(f"--min-length must be >= 0, got {args.min_length}")
    if args.regions is not None and args.regions < 0:
        parser.error(f"--regions must be >= 0, got {args.regions}")
    if args.alpha is not None and not 0.0 <= args.alpha < float("inf"):
        parser.error(f"--alpha must be a finite number >= 0, got {args.alpha}")

    import dataclasses

    from karpalign.export.saved_model import export
    from karpalign.training.run_dir import RunDir

    try:
        decode = RunDir(args.caption_dir, "caption").check().load_config().decode
        overrides = {k: getattr(args, k) for k in ("beam_size", "max_length", "alpha", "top_k", "min_length")
                     if getattr(args, k) is not None}
        decode = dataclasses.replace(decode, **overrides)
        if decode.top_k > decode.beam_size:
            raise ValueError(f"top-k ({decode.top_k}) cannot exceed beam size ({decode.beam_size})")
        path = export(args.align_dir, args.caption_dir, args.export_base, records_dir=args.records_dir,
                      model_name=args.model_name, version=args.version, decode=decode, proposer=args.proposer,
                      regions=args.regions, crop_size=args.crop_size, warmup=not args.no_warmup,
                      jit_compile=not args.no_xla)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"karpalign-export: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
