"""Where the extraction job's time goes besides the CNN: per-stage wall time inside one real job.

Runs ``karpalign.beam.job.run_extract`` (DirectRunner, in this process, CNN inline so every stage runs on the
job's own thread) on N synthetic scenes, with timers wrapped around the functions the job calls for each
image: decoding, crops, the backbone (network and preprocessing), encoding the ``tf.train.Example``, the
tokenizer and the gzip writer. The job runs twice (the first warms up) and the second is reported, with the
process CPU time over wall time. What no timer covers is Beam's own work plus the job's fixed start-up cost.

    .venv/bin/python benchmarks/extract_stages.py                        # 600 scenes, 256 px, crops 128
    .venv/bin/python benchmarks/extract_stages.py --image-size 128 --crop-size 96 --batch-size 32
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import tempfile
import time


class StageTimers:
    """Wraps attributes of modules/classes with wall-clock accumulators; restores them on exit."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()
        self._restore = []

    def wrap(self, owner, attr: str, stage: str):
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
                self.calls[stage] += 1

        setattr(owner, attr, timed)
        self._restore.append((owner, attr, original))

    def restore(self):
        for owner, attr, original in reversed(self._restore):
            setattr(owner, attr, original)
        self._restore.clear()

    def reset(self):
        self.seconds.clear()
        self.calls.clear()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--cnn", default="efficientnet_lite0")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import apache_beam.io.filesystem as beam_filesystem

    import karpalign.data.features as features
    import karpalign.data.text as text
    import karpalign.vision.backbones as backbones
    import karpalign.vision.images as images
    import karpalign.vision.proposers as proposers
    from karpalign.beam.job import extract_config, run_extract
    from karpalign.datasets.generate import generate_scenes

    timers = StageTimers()
    stages = [(backbones.Backbone, "__call__", "CNN (network)"),
              (backbones.Backbone, "preprocess", "preprocessing (scaling pixels)"),
              (proposers, "crop_regions", "crops (crop_and_resize)"),
              (images, "decode_image", "decoding"),
              (features, "encode_example", "encoding the Example"),
              (text, "python_tokenize", "tokenizing"),
              (beam_filesystem.CompressedFile, "write", "gzip (TFRecord writer)")]
    n = args.images
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        dataset = generate_scenes(os.path.join(tmp, "scenes"), n, seed=0, image_size=args.image_size,
                                  workers=1)["dataset_json"]
        for owner, attr, stage in stages:
            timers.wrap(owner, attr, stage)
        stack.callback(timers.restore)
        for run in ("warm-up", "measured"):
            timers.reset()
            config = extract_config(dataset, os.path.join(tmp, run), cnn=args.cnn,
                                   crop_size=args.crop_size, proposer="boxes", min_word_count=1,
                                   shards_per_split=2, batch_size=args.batch_size, cnn_in_flight=0,
                                   progress_every=0)
            cpu0, start = os.times(), time.perf_counter()
            result = run_extract(config, ["--runner=DirectRunner"])
            wall, cpu1 = time.perf_counter() - start, os.times()
            assert result.manifest.written == n, result.manifest
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    print(f"{n} scenes {args.image_size} px, {args.cnn} at {args.crop_size} px crops, batch {args.batch_size}, "
          f"CNN inline; job wall {wall:.2f}s ({1e3 * wall / n:.2f} ms/image), CPU {cpu:.2f}s = "
          f"{cpu / wall:.2f} cores on average, {os.cpu_count()} CPUs")
    print(f"{'stage':32s} {'seconds':>8s} {'ms/image':>9s} {'calls':>7s}")
    for stage, seconds in sorted(timers.seconds.items(), key=lambda kv: -kv[1]):
        print(f"{stage:32s} {seconds:8.2f} {1e3 * seconds / n:9.2f} {timers.calls[stage]:7d}")
    rest = wall - sum(timers.seconds.values())
    print(f"{'rest (Beam, start-up, finalizing)':32s} {rest:8.2f} {1e3 * rest / n:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
