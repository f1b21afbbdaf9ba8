"""Load test of the development gRPC server on loopback: latency percentiles and throughput.

    .venv/bin/python benchmarks/serve.py                          # the toy model (exported to a temp dir)
    .venv/bin/python benchmarks/serve.py runs/export --model-name karpalign --clients 8 --requests 50

Starts `karpalign.serving.server` in this process on a free loopback port, sends a few warm-up requests,
then runs N concurrent clients (one gRPC channel each) x M Predict requests of B JPEG images and prints
one table row. Client and server share this process (and its GIL), so the figures are a lower bound
for a separate server process; the load is bounded (clients x requests) so it finishes on a laptop.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

from karpalign.serving.client import CaptionClient
from karpalign.serving.server import ServerConfig, start_server
from karpalign.testing import export_toy_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_base_path", nargs="?", default=None,
                   help="folder with version folders (default: export the toy model to a temp dir)")
    p.add_argument("--model-name", default=None, help="model name (default: toy, or the folder name)")
    p.add_argument("--signature", default="serving_default")
    p.add_argument("--input-key", default="images")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=50, help="requests per client (default 50)")
    p.add_argument("--batch", type=int, default=1, help="images per request (default 1)")
    p.add_argument("--image-size", type=int, default=224, help="side of the random JPEG images (default 224)")
    p.add_argument("--workers", type=int, default=8, help="server request threads (default 8)")
    args = p.parse_args(argv)
    if min(args.clients, args.requests, args.batch, args.image_size, args.workers) < 1:
        p.error("--clients, --requests, --batch, --image-size and --workers must be >= 1")
    return args


def random_jpeg(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def run_load(address: str, model: str, args) -> tuple[list[float], int, float]:
    """Returns (per-request latencies in seconds, error count, wall time of the whole run)."""
    batch = np.array([random_jpeg(args.image_size, i) for i in range(args.batch)], dtype=object)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start_gate = threading.Barrier(args.clients + 1)

    def client_loop():
        with CaptionClient(address, model, signature=args.signature, timeout=60.0) as client:
            client.predict({args.input_key: batch})  # connect + per-client warm-up, not measured
            start_gate.wait()
            for _ in range(args.requests):
                started = time.perf_counter()
                try:
                    client.predict({args.input_key: batch})
                    elapsed = time.perf_counter() - started
                    with lock:
                        latencies.append(elapsed)
                except Exception as e:  # counted and reported; the benchmark keeps going
                    with lock:
                        errors[0] += 1
                    print(f"request failed: {e}", file=sys.stderr)

    threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
    for t in threads:
        t.start()
    start_gate.wait()
    wall_started = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, errors[0], time.perf_counter() - wall_started


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        base, name = args.model_base_path, args.model_name
        if base is None:
            base, name = tmp, "toy"
            export_toy_model(f"{tmp}/toy", version=1)
        config = ServerConfig(model_base_path=base, model_name=name, port=0, workers=args.workers,
                              max_request_bytes=64 * 1024 * 1024)
        with start_server(config) as running:
            if not running.repository.versions():
                print(f"no loadable version under {base}", file=sys.stderr)
                return 1
            latencies, errors, wall = run_load(running.address, running.repository.name, args)

    ms = np.array(latencies) * 1000.0
    done = len(latencies)
    print(f"model={running.repository.name} signature={args.signature} image={args.image_size}px JPEG "
          f"server workers={args.workers} (client and server in one process, loopback)")
    print("| clients | requests | batch | p50 ms | p90 ms | p99 ms | max ms | req/s | images/s | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    if done:
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        print(f"| {args.clients} | {done} | {args.batch} | {p50:.1f} | {p90:.1f} | {p99:.1f} "
              f"| {ms.max():.1f} | {done / wall:.1f} | {done * args.batch / wall:.1f} | {errors} |")
    else:
        print(f"| {args.clients} | 0 | {args.batch} | - | - | - | - | 0 | 0 | {errors} |")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
