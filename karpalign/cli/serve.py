"""karpalign-serve: run the development gRPC server (TF Serving protocol) on a model folder.

    karpalign-serve --model-base-path runs/export --model-name karpalign --port 8500

Serves `<base>/<name>/<version>/` (or `<base>/<version>/`), picks up new versions every --poll-seconds,
and stops cleanly on Ctrl-C / SIGTERM. For production use TF Serving itself: see export/README.md.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1,
          "K": 1000, "KB": 1000, "KI": 1024, "KIB": 1024,
          "M": 1000 ** 2, "MB": 1000 ** 2, "MI": 1024 ** 2, "MIB": 1024 ** 2,
          "G": 1000 ** 3, "GB": 1000 ** 3, "GI": 1024 ** 3, "GIB": 1024 ** 3}


def parse_size(text: str) -> int:
    """'16MiB' -> 16777216, '4MB' -> 4000000, '1024' -> 1024. Raises argparse.ArgumentTypeError."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 16MiB, 4MB, 1048576)")
    number, unit = float(match.group(1)), (match.group(2) or "").upper()
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


def build_parser() -> argparse.ArgumentParser:
    from karpalign.serving.images import DEFAULT_MAX_IMAGE_PIXELS

    p = argparse.ArgumentParser(prog="karpalign-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-base-path", required=True,
                   help="folder with <name>/<version>/ or <version>/ SavedModel folders")
    p.add_argument("--model-name", default=None,
                   help="model name clients send (default: the model folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8500, help="gRPC port; 0 picks a free one (default 8500)")
    p.add_argument("--poll-seconds", type=float, default=2.0, help="seconds between version-folder scans")
    p.add_argument("--max-request-bytes", type=parse_size, default="16MiB",
                   help="largest accepted request message (default 16MiB)")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
                   help=f"width*height limit per image (default {DEFAULT_MAX_IMAGE_PIXELS})")
    p.add_argument("--image-inputs", default="images",
                   help="comma-separated input names that must hold encoded images (default: images)")
    p.add_argument("--num-versions", type=int, default=2, help="newest versions kept loaded (default 2)")
    p.add_argument("--workers", type=int, default=8, help="request threads (default 8)")
    p.add_argument("--no-warmup", action="store_true",
                   help="do not replay assets.extra/tf_serving_warmup_requests on load")
    p.add_argument("--loader", default="session", choices=["session", "object"],
                   help="'session' loads versions as TF Serving does (a session restored by the graph's saver; "
                        "default); 'object' uses tf.saved_model.load (TF2 object graph)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="'debug' logs one line per request")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from karpalign.serving.server import ServerConfig, start_server

    try:
        config = ServerConfig(
            model_base_path=args.model_base_path, model_name=args.model_name, host=args.host,
            port=args.port, poll_seconds=args.poll_seconds, max_request_bytes=args.max_request_bytes,
            max_image_pixels=args.max_image_pixels,
            image_inputs=tuple(name for name in args.image_inputs.split(",") if name),
            num_versions=args.num_versions, workers=args.workers, run_warmup=not args.no_warmup,
            loader=args.loader)
        running = start_server(config)
    except (ValueError, OSError) as e:
        print(f"karpalign-serve: error: {e}", file=sys.stderr)
        return 1

    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():  # signal handlers need the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    print(f"karpalign-serve: serving model {running.repository.name!r} on {running.address} "
          f"(Ctrl-C to stop)", file=sys.stderr, flush=True)
    stop.wait()
    running.stop(grace=5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
