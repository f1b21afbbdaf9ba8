"""Times karpalign-make-scenes: the same dataset rendered with 1 worker and with 2, in one run.

    .venv/bin/python benchmarks/make_scenes.py [--num-images 10000] [--image-size 256]

Prints a table of images/s (target: 10,000 images at 256 px in under 60 s with 2 workers) and the CPU time
of all processes per image, which does not depend on how busy the machine is. Output goes to a temporary
directory that is deleted afterwards; both runs must produce byte-identical dataset.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

from karpalign.datasets import generate_scenes


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished (joined) worker processes."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _run(out_dir: str, num_images: int, image_size: int, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all processes) for one generation."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    generate_scenes(out_dir, num_images, seed=0, image_size=image_size, workers=workers)
    return time.perf_counter() - wall, _cpu_seconds() - cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=10000)
    p.add_argument("--image-size", type=int, default=256)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="karpalign-bench-scenes-")
    try:
        rows = []
        for workers in (1, 2):
            out = os.path.join(root, f"w{workers}")
            wall, cpu = _run(out, args.num_images, args.image_size, workers)
            size = sum(e.stat().st_size for e in os.scandir(os.path.join(out, "images")))
            rows.append((workers, wall, cpu, size))
        with open(os.path.join(root, "w1", "dataset.json"), "rb") as a, \
                open(os.path.join(root, "w2", "dataset.json"), "rb") as b:
            identical = a.read() == b.read()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"karpalign-make-scenes: {args.num_images} images of {args.image_size}x{args.image_size}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'workers':>7} | {'seconds':>8} | {'images/s':>8} | {'speed-up':>8} | {'JPEG MB':>7} | "
          f"{'CPU s':>7} | {'CPU ms/image':>12}")
    print(f"{'-' * 7}-+-{'-' * 8}-+-{'-' * 8}-+-{'-' * 8}-+-{'-' * 7}-+-{'-' * 7}-+-{'-' * 12}")
    base = rows[0][1]
    for workers, wall, cpu, size in rows:
        print(f"{workers:>7} | {wall:>8.1f} | {args.num_images / wall:>8.0f} | {base / wall:>7.2f}x | "
              f"{size / 1e6:>7.1f} | {cpu:>7.1f} | {1000 * cpu / args.num_images:>12.2f}")
    print(f"dataset.json identical for 1 and 2 workers: {identical}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} (a busy machine lowers images/s, "
          f"not CPU ms/image)")


if __name__ == "__main__":
    main()
