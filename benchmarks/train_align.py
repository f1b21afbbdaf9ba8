"""Training throughput of the alignment task's train step at paper sizes, against a matmul peak.

Paper sizes (Karpathy & Fei-Fei 2015): batches of B=100 image–sentence pairs, R=20 regions of D=4096 CNN
features, multimodal size h=1000, 300-d words, BRNN hidden 300; here T=16 words and a 2,500-word vocabulary
(Flickr8K's is 2,538). Batches are synthetic and live in memory (no disk IO, no tf.data), so the figures are
the train step alone.

The step is the real one: the model and the loss come from ``karpalign.training.tasks.AlignTask``
(``build_model`` and ``loss``, which scores local images × all sentences and local sentences × all images),
the optimizer from ``karpalign.training.loop.make_optimizer`` (SGD, momentum 0.9), and the step body repeats
the loop's ``replica_step`` on one device: gradient tape, dense gradients, element-wise clipping at 5, apply,
inside a ``tf.function``. Nothing is factored out of ``karpalign/training``; AlignTask only needs a manifest and
a vocabulary file, which are written to a temporary folder.

Flops are counted from the shapes (multiply-adds count 2):

  region projection        2·B·R·D·h
  BRNN word projection     2·B·T·w·hr
  BRNN recurrences         2 · 2·B·T·hr·hr   (forward and backward direction)
  BRNN output projection   2·B·T·hr·h
  all-pairs score einsum   2·B·B·R·T·h       (eq. 8, once)

"model GFLOP" is forward × 3 (forward + backward), the usual convention. The loss as written computes the
(B, B) score matrix twice on one device (images × sentences and sentences × images, the second a transpose of
the first), so the step *executes* one more einsum forward and backward; "executed GFLOP" counts that, and
counts the region projection's backward once, not twice (the CNN features need no gradient).

The peak is the honest one of ``_peak.py``, measured in this run: the best of square float32 matmuls at
1024, 2048 and 4096 (median of 5 calls each; the table names the size that gave it). The cores are shared,
so speed drifts during a run: the step is timed in rounds of ``--steps`` calls, keeping the fastest call of
each round (the one least disturbed by other processes), and the median round is reported; the peak is
measured after every round and the best of those is kept. A breakdown times
forward + backward of the three parts (region embedding, BRNN encoder, score + loss) on their own, to show
where the time goes.

    .venv/bin/python benchmarks/train_align.py                 # paper sizes
    .venv/bin/python benchmarks/train_align.py --rounds 5 --steps 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from _peak import measure_peak
from karpalign.config import load_config
from karpalign.data import features as F
from karpalign.data.text import SPECIAL_TOKENS, Vocabulary
from karpalign.losses import bidirectional_loss
from karpalign.training.loop import make_optimizer
from karpalign.training.tasks import AlignTask


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=100, help="image–sentence pairs per step (paper: 100)")
    p.add_argument("--regions", type=int, default=20, help="R (paper: 19 boxes + the full image)")
    p.add_argument("--feature-dim", type=int, default=4096, help="D, CNN feature size (paper: 4096)")
    p.add_argument("--embed-dim", type=int, default=1000, help="h, multimodal size (paper: 1000-1600)")
    p.add_argument("--word-dim", type=int, default=300)
    p.add_argument("--hidden", type=int, default=300, help="BRNN hidden size (paper: 300-600)")
    p.add_argument("--words", type=int, default=16, help="T, words per sentence (padded)")
    p.add_argument("--vocab", type=int, default=2500, help="vocabulary size including the special tokens")
    p.add_argument("--dropout", type=float, default=0.5, help="model.dropout (the config default)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="train steps timed per round")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-part timing")
    return p.parse_args(argv)


def flop_counts(a) -> dict:
    """Forward flops of each part of the step, from the shapes."""
    B, R, D, H, W, Hr, T = a.batch, a.regions, a.feature_dim, a.embed_dim, a.word_dim, a.hidden, a.words
    return {
        "region projection": 2 * B * R * D * H,
        "BRNN word projection": 2 * B * T * W * Hr,
        "BRNN recurrences": 2 * (2 * B * T * Hr * Hr),
        "BRNN output projection": 2 * B * T * Hr * H,
        "score einsum": 2 * B * B * R * T * H,
    }


def model_and_executed_flops(a) -> tuple[float, float]:
    """(model flops = 3 × forward, flops the step really executes) per train step; see the module docstring."""
    fwd = flop_counts(a)
    model = 3 * sum(fwd.values())
    executed = model - fwd["region projection"] + 3 * fwd["score einsum"]
    return float(model), float(executed)


def write_fake_records_dir(folder: str, a) -> None:
    """The manifest and vocabulary AlignTask reads (no shards: the benchmark feeds batches from memory)."""
    words = list(SPECIAL_TOKENS) + [f"w{i}" for i in range(a.vocab - len(SPECIAL_TOKENS))]
    Vocabulary(words).save(os.path.join(folder, F.VOCAB))
    F.Manifest(feature_dim=a.feature_dim, num_regions=a.regions, counts={"train": 0}, cnn="synthetic",
               proposer=F.ProposerInfo(kind="synthetic", k=a.regions - 1)).write(folder)


def synthetic_batch(a, seed: int = 0) -> dict:
    """One batch shaped like pair_dataset's: B distinct images, sentences of 8..T words."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, a.words // 2), a.words + 1, size=a.batch)  # (B,)
    mask = (np.arange(a.words)[None, :] < lengths[:, None]).astype("float32")  # (B, T)
    ids = rng.integers(len(SPECIAL_TOKENS), a.vocab, size=(a.batch, a.words)) * mask  # (B, T)
    return {
        "region_features": tf.constant(rng.normal(size=(a.batch, a.regions, a.feature_dim)), tf.float32),
        "region_mask": tf.ones([a.batch, a.regions]),  # (B, R)
        "image_key": tf.range(a.batch, dtype=tf.int64),  # (B,)
        "token_ids": tf.constant(ids, tf.int32),  # (B, T)
        "token_mask": tf.constant(mask),  # (B, T)
    }


def build_train_step(task, model, optimizer, cfg):
    """The loop's replica_step on one device, in a tf.function (no distribution: nothing to all-reduce)."""
    clip = cfg.train.clip_value
    global_batch = cfg.train.batch_size

    @tf.function
    def train_step(batch):
        with tf.GradientTape() as tape:
            loss = task.loss(model, batch, global_batch, training=True)
            scaled = optimizer.scale_loss(loss)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, model.trainable_variables)]  # dense
        if clip:
            grads = [tf.clip_by_value(g, -clip, clip) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return train_step


def time_calls(fn, n: int) -> tuple[float, float, float]:
    """(fastest call in seconds, CPU seconds used per wall second, CPU seconds per call) over n calls of fn.

    fn must return a tensor (.numpy() waits for the result). The fastest call is the one least disturbed by
    the other processes on the shared cores; the CPU share shows how many cores the process actually got, and
    flops per CPU second are a second efficiency figure that does not depend on how busy the machine is.
    """
    times = []
    cpu0, wall0 = sum(os.times()[:2]), time.perf_counter()
    for _ in range(n):
        start = time.perf_counter()
        fn().numpy()
        times.append(time.perf_counter() - start)
    cpu = sum(os.times()[:2]) - cpu0
    return min(times), cpu / (time.perf_counter() - wall0), cpu / n


def part_functions(task, model, batch):
    """Forward + backward of each part alone: region embedding, BRNN encoder, score matrices + loss."""
    v, s = model(batch, training=False)
    emb, enc = model.region_embedding, model.sentence_encoder

    @tf.function
    def regions():
        with tf.GradientTape() as tape:
            out = model.embed_images(batch["region_features"], batch["region_mask"], training=True)
            y = tf.reduce_sum(out)
        return tf.add_n([tf.reduce_sum(g) for g in tape.gradient(y, emb.trainable_variables)])

    @tf.function
    def sentences():
        with tf.GradientTape() as tape:
            out = model.embed_sentences(batch["token_ids"], batch["token_mask"], training=True)
            y = tf.reduce_sum(out)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(y, enc.trainable_variables)]
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    @tf.function
    def score():
        # What AlignTask.loss does after the model call, on one device: both score matrices, both directions.
        with tf.GradientTape() as tape:
            tape.watch([v, s])
            i2s = model.score_matrix(v, batch["region_mask"], s, batch["token_mask"])  # (B, B)
            s2i = tf.transpose(model.score_matrix(v, batch["region_mask"], s, batch["token_mask"]))  # (B, B)
            own = tf.range(tf.shape(v)[0])
            loss = bidirectional_loss(i2s, s2i, own, batch["image_key"], batch["image_key"])
        gv, gs = tape.gradient(loss, [v, s])
        return tf.reduce_sum(gv) + tf.reduce_sum(gs)

    return {"region embedding": regions, "BRNN encoder": sentences, "score matrices + loss": score}


def main(argv=None) -> None:
    a = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="karpalign-bench-")
    write_fake_records_dir(tmp, a)
    cfg = load_config(None, [f"data.records_dir={tmp}", f"data.max_words={a.words}", f"train.batch_size={a.batch}",
                             f"model.embed_dim={a.embed_dim}", f"model.word_dim={a.word_dim}",
                             f"model.brnn_hidden={a.hidden}", f"model.dropout={a.dropout}", "train.optimizer=sgd"])
    task = AlignTask(cfg)
    model = task.build_model()
    shutil.rmtree(tmp)  # AlignTask has read the manifest and vocabulary; batches come from memory
    optimizer = make_optimizer(cfg)
    optimizer.build(model.trainable_variables)
    batch = synthetic_batch(a)
    train_step = build_train_step(task, model, optimizer, cfg)
    model_flops, executed_flops = model_and_executed_flops(a)
    load_start = os.getloadavg()

    train_step(batch).numpy()  # trace and warm up
    step_s, peak = [], None
    for r in range(a.rounds):
        t, cores, _ = time_calls(lambda: train_step(batch), a.steps)
        step_s.append(t)
        peak = measure_peak().better(peak)  # every round: the best of the run is kept
        print(f"round {r + 1}/{a.rounds}: fastest step {t * 1e3:.0f} ms (process used {cores:.2f} cores)")
    print(peak.describe())
    print(f"load average (1 min) {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end")

    med = statistics.median
    t = med(step_s)
    print()
    print(f"alignment train step: B={a.batch} R={a.regions} D={a.feature_dim} h={a.embed_dim} "
          f"word={a.word_dim} hidden={a.hidden} T={a.words} V={a.vocab} dropout={a.dropout} "
          f"(TF {tf.__version__}, {os.cpu_count()} CPUs, intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'})")
    print(f"{'':34}{'value':>12}")
    rows = [
        ("step time (ms, median of fastest)", f"{t * 1e3:.0f}"),
        ("pairs/s", f"{a.batch / t:.1f}"),
        ("model GFLOP per step (3 x fwd)", f"{model_flops / 1e9:.1f}"),
        ("executed GFLOP per step", f"{executed_flops / 1e9:.1f}"),
        ("achieved GFLOP/s (model)", f"{model_flops / t / 1e9:.1f}"),
        ("achieved GFLOP/s (executed)", f"{executed_flops / t / 1e9:.1f}"),
        (f"honest peak GFLOP/s ({peak.size}^3)", f"{peak.gflops:.1f}"),
        ("% of peak (model)", f"{peak.percent(model_flops / t / 1e9):.0f}%"),
        ("% of peak (executed)", f"{peak.percent(executed_flops / t / 1e9):.0f}%"),
        ("target", ">= 30%"),
    ]
    for name, value in rows:
        print(f"{name:34}{value:>12}")

    fwd = flop_counts(a)
    print()
    print(f"{'forward flops by part':34}{'GFLOP':>12}{'share':>8}")
    total = sum(fwd.values())
    for name, f in fwd.items():
        print(f"{name:34}{f / 1e9:>12.2f}{100 * f / total:>7.0f}%")

    if not a.no_breakdown:
        parts = part_functions(task, model, batch)
        part_flops = {
            "region embedding": 2 * fwd["region projection"],  # forward + weight gradient
            "BRNN encoder": 3 * (fwd["BRNN word projection"] + fwd["BRNN recurrences"]
                                 + fwd["BRNN output projection"]),
            "score matrices + loss": 2 * 3 * fwd["score einsum"],  # computed twice by the loss
        }
        print()
        print(f"{'fwd + bwd of each part alone':34}{'ms':>12}{'GFLOP/s':>10}{'% peak':>8}")
        for name, fn in parts.items():
            fn().numpy()
            ms = med([time_calls(fn, a.steps)[0] for _ in range(a.rounds)]) * 1e3
            gf = part_flops[name] / ms / 1e6
            print(f"{name:34}{ms:>12.0f}{gf:>10.1f}{peak.percent(gf):>7.0f}%")


if __name__ == "__main__":
    main()
