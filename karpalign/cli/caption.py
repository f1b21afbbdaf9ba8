"""karpalign-caption: caption image files with a model served by TF Serving or karpalign-serve.

    karpalign-caption --server localhost:8500 --model karpalign dog.jpg cat.png

Prints one tab-separated line per captioned image on stdout: path, best caption, its score (and, with
--top-k K, the next K-1 captions and scores on the same line). Every file is tried: one that cannot be
captioned (missing, unreadable, not an image in a supported format, over the pixel limit, or refused by the
server, e.g. a truncated JPEG) gets one line "karpalign-caption: error: PATH: REASON" on stderr and the
others are still captioned; a batch the server refuses because of one image is split and the rest retried.
With --json, stdout has one JSON object per image instead, in input order:
{"path": ..., "captions": [{"text": ..., "score": ...}, ...], "error": null} or
{"path": ..., "captions": null, "error": "REASON"}.

Exit code 0 when every image was captioned, 1 when any failed or the server could not be used (unreachable,
unknown model or signature; message on stderr), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys

from karpalign.serving.images import DEFAULT_MAX_IMAGE_PIXELS

PROG = "karpalign-caption"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--server", required=True, help="HOST:PORT of the gRPC endpoint")
    p.add_argument("--model", required=True, help="model name (model_spec.name)")
    p.add_argument("--signature", default="serving_default", help="signature name (default serving_default)")
    p.add_argument("--version", type=int, default=None, help="model version (default: newest)")
    p.add_argument("--top-k", type=int, default=1, help="captions printed per image (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="images per request (default 8)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument("--retries", type=int, default=3, help="retries when the server is unavailable")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help=f"refuse images above this many pixels (width * height) locally "
                        f"(default {DEFAULT_MAX_IMAGE_PIXELS}, the server's default)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per image (path, captions with scores, or the error)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, GIF, BMP, WebP)")
    return p


def _text_line(result, top_k: int) -> str:
    fields = [result.path]
    for text, score in result.captions[:top_k]:
        fields += [text, f"{score:.4f}"]
    return "\t".join(fields)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1 or args.timeout <= 0 or args.retries < 0 \
            or args.max_image_pixels < 1:
        parser.error("--top-k, --batch-size and --max-image-pixels must be >= 1, --timeout > 0, "
                     "--retries >= 0")
    if ":" not in args.server:
        parser.error(f"--server {args.server!r}: expected HOST:PORT")

    from karpalign.serving.client import CaptionClient, ServingError

    failed = done = 0
    try:
        with CaptionClient(args.server, args.model, signature=args.signature, timeout=args.timeout,
                           retries=args.retries, version=args.version) as client:
            for result in client.iter_captions(args.images, batch_size=args.batch_size,
                                               max_image_pixels=args.max_image_pixels):
                done += 1
                if not result.ok:
                    failed += 1
                if args.json:
                    print(json.dumps(result.to_dict(top_k=args.top_k)), flush=True)
                elif result.ok:
                    print(_text_line(result, args.top_k), flush=True)
                else:
                    print(f"{PROG}: error: {result.path}: {result.error}", file=sys.stderr, flush=True)
    except ServingError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        if done < len(args.images):
            print(f"{PROG}: {len(args.images) - done} of {len(args.images)} images not captioned",
                  file=sys.stderr)
        return 1
    if failed:
        print(f"{PROG}: {failed} of {len(args.images)} images failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
