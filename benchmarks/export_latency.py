"""Latency of the exported ``serving_default`` (loaded SavedModel) vs the in-process eager path, same inputs.

    .venv/bin/python benchmarks/export_latency.py [--backbone efficientnet_lite0] [--crop-size 128]
                                                  [--regions 4] [--batches 1,32] [--repeats 5]

Builds a throw-away export in a temporary folder (toy records whose manifest names the backbone, untrained
heads of the paper's sizes), then times, per batch size:

- ``exported``: ``loaded.signatures["serving_default"](images=...)``: decode, crop, CNN, beam search in one graph
  (TF2 object path, as an embedding TF program calls it);
- ``session``: the same signature run the way TF Serving runs it (``karpalign.serving.loading.SessionModel``: the
  SavedModel in a session restored by the graph's saver, one ``Session.run`` per call);
- ``eager``: ``karpalign.vision.region_features.decode_image_array`` + ``karpalign.vision.proposers.crop_regions``
  + the Keras backbone (the extraction path) + ``generator.initial_state`` + eager
  ``karpalign.decoding.beam_search`` + ``Vocabulary.decode``.

All paths see the same JPEG bytes and give the same captions (checked). One warm-up call each is not timed;
the table shows the median and the best of ``--repeats`` calls.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def _images(n: int, seed: int = 0) -> list[bytes]:
    """n JPEGs of different sizes (smooth gradients with a few shapes)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(200, 480)), int(rng.integers(200, 640))
        yy, xx = np.mgrid[0:h, 0:w]
        img = Image.fromarray(np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], -1)
                              .astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            draw.rectangle([x0, y0, x0 + w // 3, y0 + h // 3], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _build_export(root: str, args) -> tuple[str, dict, str]:
    """Toy records + untrained runs + karpalign-export -> (version folder, run folders, backbone spec)."""
    from karpalign.cli.export import main as export_main
    from karpalign.config import load_config, save_config
    from karpalign.data import features as F
    from karpalign.testing import make_toy_records
    from karpalign.training.tasks import AlignTask, CaptionTask
    from karpalign.vision.backbones import get_backbone

    spec = args.backbone
    dim = get_backbone(spec).feature_dim
    records = make_toy_records(os.path.join(root, "records"), feature_dim=dim, num_regions=args.regions + 1,
                               num_train=8, num_val=2, num_test=2, shards=1)
    manifest = F.read_manifest(records)
    manifest.cnn_spec, manifest.crop_size = spec, args.crop_size
    manifest.proposer = F.ProposerInfo(kind="grid", k=args.regions)
    manifest.write(records)
    sets = [f"data.records_dir={records}", "model.embed_dim=512", "model.word_dim=300", "model.brnn_hidden=300",
            "model.gen_hidden=512", "model.gen_word_dim=512", "model.dropout=0"]
    runs = {}
    for task, cls in (("align", AlignTask), ("caption", CaptionTask)):
        cfg = load_config(None, sets + [f"train.task={task}"])
        run = cls(cfg)
        model = run.build_model()
        runs[task] = os.path.join(root, task)
        os.makedirs(runs[task])
        save_config(cfg, runs[task])
        run.save_model(model, runs[task])
    rc = export_main(["--align-dir", runs["align"], "--caption-dir", runs["caption"], "--records-dir", records,
                      "--export-base", os.path.join(root, "models"), "--beam-size", str(args.beam_size),
                      "--max-length", str(args.max_length), "--top-k", "1", "--no-warmup"])
    if rc != 0:
        raise SystemExit(f"export failed with exit code {rc}")
    return os.path.join(root, "models", "karpalign", "1"), runs, spec


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up: tracing, kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0|size=128,128", help="backbone spec")
    p.add_argument("--crop-size", type=int, default=128)
    p.add_argument("--regions", type=int, default=4, help="grid boxes besides the full image")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--beam-size", type=int, default=7)
    p.add_argument("--max-length", type=int, default=20)
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    import keras
    import tensorflow as tf

    from karpalign.data.text import END_ID, START_ID, Vocabulary
    from karpalign.decoding.beam_search import beam_search
    from karpalign.serving.loading import SessionModel
    from karpalign.vision.backbones import get_backbone
    from karpalign.vision.region_features import decode_image_array
    from karpalign.vision.proposers import GridProposer, crop_regions

    with tempfile.TemporaryDirectory(prefix="karpalign-bench-") as root:
        export_dir, runs, spec = _build_export(root, args)
        loaded = tf.saved_model.load(export_dir)
        serving = loaded.signatures["serving_default"]
        session_model = SessionModel(export_dir)
        generator = keras.saving.load_model(os.path.join(runs["caption"], "generator.keras"), compile=False)
        vocab = Vocabulary.load(os.path.join(runs["caption"], "vocab.txt"))
        backbone = get_backbone(spec)
        boxes = GridProposer(args.regions).propose()
        size = args.crop_size

        def eager(images):
            crops = np.concatenate([crop_regions(decode_image_array(b), boxes, size) for b in images])  # (B*R, S, S, 3)
            feats = backbone(backbone.preprocess(crops, size=(size, size))).reshape(len(images), len(boxes), -1)
            state = generator.initial_state(tf.constant(feats[:, 0]))
            result = beam_search(generator.step, state, len(images), beam_size=args.beam_size,
                                 max_length=args.max_length, start_id=START_ID, end_id=END_ID, top_k=1)
            return [" ".join(vocab.decode(ids[0])) for ids in result.ids.numpy()]

        def exported(images):
            out = serving(images=tf.constant(images, dtype=tf.string))
            return [c.decode() for c in out["captions"][:, 0].numpy()]

        def session(images):
            out = session_model.run("serving_default", {"images": np.array(images, dtype=object)}, ["captions"])
            return [c.decode() for c in out["captions"][:, 0]]

        rows = []
        for batch in batches:
            images = _images(batch, seed=batch)
            same = eager(images) == exported(images) == session(images)
            for name, fn in (("exported", exported), ("session", session), ("eager", eager)):
                times = _timed(lambda: fn(images), args.repeats)
                rows.append((name, batch, statistics.median(times), min(times), same))

    print(f"\nbackbone {spec}, crop {size}, {args.regions + 1} regions/image, beam {args.beam_size}, "
          f"max length {args.max_length}, {args.repeats} timed calls, {os.cpu_count()} CPUs")
    print(f"{'path':<10} {'batch':>5} {'median ms':>10} {'best ms':>9} {'ms/image':>9} {'same captions':>14}")
    for name, batch, med, best, same in rows:
        print(f"{name:<10} {batch:>5} {med * 1e3:>10.1f} {best * 1e3:>9.1f} {med * 1e3 / batch:>9.1f} "
              f"{str(same):>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
