"""Caption training speed: sentences/s of the caption task's train step, against neuraltalk and the matmul peak.

Times the step ``karpalign-train --task caption`` runs (CaptionTask.token_losses: teacher-forced MRNNDecoder
forward, masked cross-entropy, gradients, element-wise clipping at 5, RMSprop update), compiled with
``tf.function`` as a plain graph (what training uses) and with XLA (``jit_compile=True``, tried for issue 17),
on random batches at paper size: batch 100 sentences of T = 20 words, vocabulary 2,500, hidden 512, word
vectors 512, image features 4096. Both paths run round after round in one process, with the reference matmuls
measured in every round; the best round of each is reported (the step time with its median too).

neuraltalk: Karpathy's NumPy neuraltalk trains 49.7 (RNN) and 8.1 (LSTM) sentences/s at batch 100 on the
2-core development machine (issue 17, measured side by side with karpalign there); the targets are at least
15x (RNN) and 40x (LSTM) those figures.

Forward flops per batch (matrix products only; the embedding gather is free): image projection 2·B·D·H, and for
each of T steps input projection 2·B·E·H, recurrence 2·B·H·H (LSTM: 2·B·H·4H input kernel + 2·B·H·4H
recurrent) and output layer 2·B·H·V. A training step is counted as 3x forward (backward ~ 2x forward). "% of
peak" is against the honest peak of ``_peak.py`` (best square float32 matmul of 1024/2048/4096, this run); the
output layer's own shape (B·T, H) x (H, V) is the second reference.

    .venv/bin/python benchmarks/train_caption.py
    .venv/bin/python benchmarks/train_caption.py --cells lstm --steps 10 --paths graph
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from _peak import measure_peak, same_shape_matmul
from karpalign.data.text import END_ID, PAD_ID, START_ID
from karpalign.models.mrnn_decoder import MRNNDecoder
from karpalign.training.tasks import CaptionTask

NEURALTALK = {"rnn": 49.7, "lstm": 8.1}  # sentences/s at batch 100 (issue 17)
TARGETS = {"rnn": 15.0, "lstm": 40.0}  # at least this many times neuraltalk's sentences/s


def random_batch(B: int, T: int, D: int, V: int, rng: np.random.Generator) -> dict:
    """A caption batch shaped like karpalign.data.pipeline.to_caption_batch output, every sentence T words."""
    words = rng.integers(4, V, size=(B, T)).astype("int32")
    tokens = np.concatenate([np.full((B, 1), START_ID, "int32"), words[:, :-1]], axis=1)  # (B, T)
    targets = words.copy()
    targets[:, -1] = END_ID
    return {"image": tf.constant(rng.normal(size=(B, D)).astype("f4")), "tokens": tf.constant(tokens),
            "targets": tf.constant(targets),
            "target_mask": tf.constant((targets != PAD_ID).astype("f4"))}


def forward_flops(B: int, T: int, D: int, E: int, H: int, V: int, cell: str) -> float:
    recurrent = 2 * B * H * H if cell == "rnn" else 2 * B * H * 4 * H * 2
    return 2 * B * D * H + T * (2 * B * E * H + recurrent + 2 * B * H * V)


def train_step_fn(cell: str, B: int, D: int, E: int, H: int, V: int, jit_compile: bool):
    """A fresh model + optimizer and its compiled train step (the loop's replica step on one device)."""
    keras.utils.set_random_seed(0)
    model = MRNNDecoder(V, D, hidden_dim=H, word_dim=E, cell=cell)
    model({"image": tf.zeros([1, D]), "tokens": tf.zeros([1, 2], tf.int32)})
    optimizer = keras.optimizers.RMSprop(learning_rate=1e-4)
    optimizer.build(model.trainable_variables)

    def train_step(batch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(CaptionTask.token_losses(model, batch, training=True)) / B
        grads = tape.gradient(loss, model.trainable_variables)
        grads = [tf.clip_by_value(tf.convert_to_tensor(g), -5.0, 5.0) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return tf.function(train_step, jit_compile=jit_compile)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--words", type=int, default=20)
    p.add_argument("--vocab", type=int, default=2500)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--word-dim", type=int, default=512)
    p.add_argument("--feature-dim", type=int, default=4096)
    p.add_argument("--cells", default="rnn,lstm")
    p.add_argument("--paths", default="graph,xla", help="graph (tf.function, what training runs) and/or xla")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    B, T, V, H, E, D = args.batch, args.words, args.vocab, args.hidden, args.word_dim, args.feature_dim
    cells, paths = args.cells.split(","), args.paths.split(",")
    load_start = os.getloadavg()

    batch = random_batch(B, T, D, V, np.random.default_rng(0))
    steps, first_call = {}, {}
    for cell in cells:
        for path in paths:
            fn = train_step_fn(cell, B, D, E, H, V, jit_compile=path == "xla")
            start = time.perf_counter()
            fn(batch).numpy()  # trace (+ compile)
            first_call[cell, path] = time.perf_counter() - start
            steps[cell, path] = fn
    seconds = {key: [] for key in steps}
    peak = out_layer = None
    for _ in range(args.rounds):  # the references are measured in every round too; the best is kept
        peak = measure_peak().better(peak)
        out_layer = same_shape_matmul(B * T, H, V).better(out_layer)
        for key, fn in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = fn(batch)
            loss.numpy()
            seconds[key].append((time.perf_counter() - start) / args.steps)

    print(f"B={B} T={T} V={V} H={H} E={E} D={D}; {os.cpu_count()} CPUs; TF {tf.__version__}")
    print(peak.describe())
    print(f"out-layer mm {out_layer.shape}: {out_layer.gflops:.1f} GFLOP/s (plain TF {out_layer.tf_gflops:.1f}, "
          f"XLA {out_layer.xla_gflops:.1f})")
    print(f"load average (1 min) {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; {args.rounds} rounds "
          f"of {args.steps} steps; a step = 3x forward")
    print()
    print("| cell | path | ms/step (best) | ms/step (median) | sentences/s | vs neuraltalk | tokens/s | GFLOP/s | "
          "% of peak | % of out-layer mm | first call s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    checks = []
    for (cell, path), secs in seconds.items():
        best = min(secs)
        achieved = 3 * forward_flops(B, T, D, E, H, V, cell) / best / 1e9
        ratio = B / best / NEURALTALK[cell]
        print(f"| {cell} | {path} | {1000 * best:.1f} | {1000 * statistics.median(secs):.1f} | {B / best:.0f} | "
              f"{ratio:.1f}x | {B * T / best:.0f} | {achieved:.1f} | {peak.percent(achieved):.1f}% | "
              f"{100 * achieved / out_layer.gflops:.0f}% | {first_call[cell, path]:.1f} |")
        if path == "graph":
            checks.append((f"{cell}: {B / best:.0f} sentences/s = {ratio:.1f}x neuraltalk's {NEURALTALK[cell]} "
                           f"(target >= {TARGETS[cell]:.0f}x)", ratio >= TARGETS[cell]))
    print()
    for text, ok in checks:
        print(f"- {'met' if ok else 'NOT met'}: {text}")


if __name__ == "__main__":
    main()
