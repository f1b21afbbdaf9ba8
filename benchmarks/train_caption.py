"""Caption training speed: tokens/s of the caption task's train step, and how close it gets to matmul speed.

Times the step ``karpalign-train --task caption`` runs (CaptionTask.token_losses: teacher-forced MRNNDecoder
forward, masked cross-entropy, gradients, element-wise clipping at 5, RMSprop update), compiled with
``tf.function``, on random batches at paper size: batch 100 sentences of T = 20 words, vocabulary 2,500,
hidden 512, word vectors 512, image features 4096.

Forward flops per batch (matrix products only; the embedding gather is free): image projection 2·B·D·H, and for
each of T steps input projection 2·B·E·H, recurrence 2·B·H·H (LSTM: 2·B·H·4H input kernel + 2·B·H·4H
recurrent) and output layer 2·B·H·V. A training step is counted as 3× forward (backward ≈ 2× forward). The
reference is a ``tf.linalg.matmul`` peak measured in the same run: a large square product and the output
layer's own shape (B·T, H) × (H, V).

    .venv/bin/python benchmarks/train_caption.py
    .venv/bin/python benchmarks/train_caption.py --cell lstm --steps 10
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from karpalign.data.text import END_ID, PAD_ID, START_ID
from karpalign.models.mrnn_decoder import MRNNDecoder
from karpalign.training.tasks import CaptionTask


def matmul_gflops(m: int, k: int, n: int, repeats: int, inner: int = 10) -> float:
    """GFLOP/s of ``inner`` independent (m, k) x (k, n) products inside one tf.function (best of repeats)."""
    a, b = tf.random.normal([m, k]), tf.random.normal([k, n])

    @tf.function
    def run(a, b):
        total = tf.zeros([])
        for i in range(inner):
            total += tf.reduce_sum(tf.linalg.matmul(a + float(i), b)[:1, :1])
        return total

    run(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * m * k * n * inner / best / 1e9


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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--words", type=int, default=20)
    p.add_argument("--vocab", type=int, default=2500)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--word-dim", type=int, default=512)
    p.add_argument("--feature-dim", type=int, default=4096)
    p.add_argument("--cell", default="rnn", choices=["rnn", "lstm"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    B, T, V, H, E, D = args.batch, args.words, args.vocab, args.hidden, args.word_dim, args.feature_dim

    keras.utils.set_random_seed(0)
    model = MRNNDecoder(V, D, hidden_dim=H, word_dim=E, cell=args.cell)
    model({"image": tf.zeros([1, D]), "tokens": tf.zeros([1, 2], tf.int32)})
    optimizer = keras.optimizers.RMSprop(learning_rate=1e-4)
    optimizer.build(model.trainable_variables)
    batch = random_batch(B, T, D, V, np.random.default_rng(0))

    @tf.function
    def train_step(batch):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(CaptionTask.token_losses(model, batch, training=True)) / B
        grads = tape.gradient(loss, model.trainable_variables)
        grads = [tf.clip_by_value(tf.convert_to_tensor(g), -5.0, 5.0) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    train_step(batch).numpy()  # trace + warm up
    flops = 3 * forward_flops(B, T, D, E, H, V, args.cell)
    print(f"B={B} T={T} V={V} H={H} E={E} D={D} cell={args.cell}; {flops / 1e9:.2f} GFLOP per step (3x forward)")
    header = (f"{'round':>5} {'ms/step':>8} {'tokens/s':>9} {'GFLOP/s':>8} {'square mm':>9} {'% of it':>7} "
              f"{'out-layer mm':>12} {'% of it':>7}")
    print(header)
    print("-" * len(header))
    for r in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = train_step(batch)
        loss.numpy()
        secs = (time.perf_counter() - start) / args.steps
        achieved = flops / secs / 1e9
        square = matmul_gflops(1024, 1024, 1024, 2)
        out_layer = matmul_gflops(B * T, H, V, 2)
        print(f"{r:>5} {1000 * secs:>8.1f} {B * T / secs:>9.0f} {achieved:>8.2f} {square:>9.1f} "
              f"{100 * achieved / square:>6.1f}% {out_layer:>12.1f} {100 * achieved / out_layer:>6.1f}%")


if __name__ == "__main__":
    main()
