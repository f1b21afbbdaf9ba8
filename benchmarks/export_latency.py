"""Latency of the exported ``serving_default`` (loaded SavedModel) vs the in-process paths, same inputs.

    .venv/bin/python benchmarks/export_latency.py [--backbone efficientnet_lite0] [--crop-size 128]
                                                  [--regions 4] [--batches 1,32] [--repeats 5]

Builds a throw-away export in a temporary folder (toy records whose manifest names the backbone, untrained
heads of the paper's sizes), then times, per batch size:

- ``exported``: ``loaded.signatures["serving_default"](images=...)``: decode, crop, CNN, beam search in one graph
  (TF2 object path, as an embedding TF program calls it); the beam search XLA-compiled (the default export);
- ``session``: the same signature run the way TF Serving runs it (``karpalign.serving.loading.SessionModel``: the
  SavedModel in a session restored by the graph's saver, one ``Session.run`` per call);
- ``session, no XLA``: the same through a session, of the ``karpalign-export --no-xla`` SavedModel (what a TF
  Serving started without ``--xla_cpu_compilation_enabled=true`` can run);
- ``in-process``: the extraction path (``karpalign.vision.region_features.decode_image_array`` +
  ``karpalign.vision.proposers.crop_regions`` + the Keras backbone) + the in-process decoder
  (``karpalign.decoding.generate.CaptionGenerator``, compiled, XLA) + ``Vocabulary.decode``;
- ``eager``: the extraction path + ``generator.initial_state`` + eager ``karpalign.decoding.beam_search`` +
  ``Vocabulary.decode``.

All paths see the same JPEG bytes; whether they give the same captions is checked and shown (XLA may round a
near-tie differently from the plain graph; with the untrained heads here it does not). One warm-up call each is
not timed (the first call traces and compiles); the table shows the median and the best of ``--repeats`` calls.
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
    for version, extra in (("1", []), ("2", ["--no-xla"])):
        rc = export_main(["--align-dir", runs["align"], "--caption-dir", runs["caption"], "--records-dir", records,
                          "--export-base", os.path.join(root, "models"), "--beam-size", str(args.beam_size),
                          "--max-length", str(args.max_length), "--top-k", "1", "--no-warmup", "--version",
                          version, *extra])
        if rc != 0:
            raise SystemExit(f"export failed with exit code {rc}")
    return os.path.join(root, "models", "karpalign"), runs, spec


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
    from karpalign.decoding.generate import CaptionGenerator
    from karpalign.serving.loading import SessionModel
    from karpalign.vision.backbones import get_backbone
    from karpalign.vision.region_features import decode_image_array
    from karpalign.vision.proposers import GridProposer, crop_regions

    with tempfile.TemporaryDirectory(prefix="karpalign-bench-") as root:
        model_dir, runs, spec = _build_export(root, args)
        loaded = tf.saved_model.load(os.path.join(model_dir, "1"))
        serving = loaded.signatures["serving_default"]
        session_model = SessionModel(os.path.join(model_dir, "1"))
        session_no_xla = SessionModel(os.path.join(model_dir, "2"))
        generator = keras.saving.load_model(os.path.join(runs["caption"], "generator.keras"), compile=False)
        vocab = Vocabulary.load(os.path.join(runs["caption"], "vocab.txt"))
        backbone = get_backbone(spec)
        boxes = GridProposer(args.regions).propose()
        size = args.crop_size

        captioner = CaptionGenerator(generator, vocab, beam_size=args.beam_size, max_length=args.max_length, top_k=1)

        def features(images):
            """The extraction path: (B, R, D) region features of encoded images."""
            crops = np.concatenate([crop_regions(decode_image_array(b), boxes, size) for b in images])  # (B*R, S, S, 3)
            return backbone(backbone.preprocess(crops, size=(size, size))).reshape(len(images), len(boxes), -1)

        def in_process(images):
            return [caption[0][0] for caption in captioner(features(images)[:, 0])]

        def eager(images):
            feats = features(images)
            state = generator.initial_state(tf.constant(feats[:, 0]))
            result = beam_search(generator.step, state, len(images), beam_size=args.beam_size,
                                 max_length=args.max_length, start_id=START_ID, end_id=END_ID, top_k=1)
            return [" ".join(vocab.decode(ids[0])) for ids in result.ids.numpy()]

        def exported(images):
            out = serving(images=tf.constant(images, dtype=tf.string))
            return [c.decode() for c in out["captions"][:, 0].numpy()]

        def session_with(model):
            def run(images):
                out = model.run("serving_default", {"images": np.array(images, dtype=object)}, ["captions"])
                return [c.decode() for c in out["captions"][:, 0]]
            return run

        paths = (("exported", exported), ("session", session_with(session_model)),
                 ("session, no XLA", session_with(session_no_xla)), ("in-process", in_process), ("eager", eager))
        load_start = os.getloadavg()
        rows = []
        for batch in batches:
            images = _images(batch, seed=batch)
            reference = eager(images)
            same = {name: fn(images) == reference for name, fn in paths}
            times = {name: [] for name, _ in paths}
            for _ in range(args.repeats):  # paths interleaved, so drifting load hits them alike
                for name, fn in paths:
                    start = time.perf_counter()
                    fn(images)
                    times[name].append(time.perf_counter() - start)
            rows += [(name, batch, statistics.median(times[name]), min(times[name]), same[name]) for name, _ in paths]

    print(f"\nbackbone {spec}, crop {size}, {args.regions + 1} regions/image, beam {args.beam_size}, "
          f"max length {args.max_length}, {args.repeats} timed calls, {os.cpu_count()} CPUs, load average (1 min) "
          f"{load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"{'path':<16} {'batch':>5} {'median ms':>10} {'best ms':>9} {'ms/image':>9} {'captions as eager':>18}")
    for name, batch, med, best, same in rows:
        print(f"{name:<16} {batch:>5} {med * 1e3:>10.1f} {best * 1e3:>9.1f} {med * 1e3 / batch:>9.1f} "
              f"{str(same):>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
