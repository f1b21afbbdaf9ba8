"""karpalign-caption: caption image files with a model served by TF Serving or karpalign-serve.

    karpalign-caption --server localhost:8500 --model karpalign dog.jpg cat.png

Prints one tab-separated line per image: path, best caption, its score (and, with --top-k K, the next
K-1 captions and scores on the same line). Exit code 0 on success, 1 on any error (message on stderr),
2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="karpalign-caption", description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True, help="HOST:PORT of the gRPC endpoint")
    p.add_argument("--model", required=True, help="model name (model_spec.name)")
    p.add_argument("--signature", default="serving_default", help="signature name (default serving_default)")
    p.add_argument("--version", type=int, default=None, help="model version (default: newest)")
    p.add_argument("--top-k", type=int, default=1, help="captions printed per image (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="images per request (default 8)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1 or args.timeout <= 0 or args.retries < 0:
        parser.error("--top-k and --batch-size must be >= 1, --timeout > 0, --retries >= 0")
    if ":" not in args.server:
        parser.error(f"--server {args.server!r}: expected HOST:PORT")

    from karpalign.serving.client import CaptionClient, ServingError, read_image_files

    try:
        blobs = read_image_files(args.images)  # refuse missing files before talking to the server
        with CaptionClient(args.server, args.model, signature=args.signature, timeout=args.timeout,
                           retries=args.retries, version=args.version) as client:
            for start in range(0, len(blobs), args.batch_size):
                results = client.caption(blobs[start:start + args.batch_size])
                for path, captions in zip(args.images[start:start + args.batch_size], results):
                    fields = [path]
                    for text, score in captions[:args.top_k]:
                        fields += [text, f"{score:.4f}"]
                    print("\t".join(fields), flush=True)
    except ServingError as e:
        print(f"karpalign-caption: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
