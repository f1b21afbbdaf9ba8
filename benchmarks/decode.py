"""Caption decoding speed: captions/s of the compiled beam search, and how close it gets to matmul speed.

An untrained MRNNDecoder at paper size (vocabulary 2,500, hidden 512, word vectors 512) with random weights
decodes random image vectors at beam 1 and 7, batch 1 and 64. The output bias of <end> is set very negative so
no hypothesis ever ends: every caption runs to ``--max-length`` words and every run does the same work.

Achieved GFLOP/s counts only the step's matrix products, per step for N = B·K rows (the embedding gather is
free): input projection 2·N·E·H, recurrence 2·N·H·H (LSTM: 2·N·H·4H for its input kernel plus 2·N·H·4H
recurrent), output layer 2·N·H·V; the image projection 2·B·D·H once. The reference peak is a plain
``tf.linalg.matmul`` measured in the same run, both as a large square product and with the decoder's own output
layer shape (N, H) × (H, V) — the figure the decoder could reach if it did nothing but its biggest matmul.

    .venv/bin/python benchmarks/decode.py                    # paper sizes, plain ReLU RNN
    .venv/bin/python benchmarks/decode.py --cell lstm --repeats 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tensorflow as tf

from karpalign.data.text import END_ID, SPECIAL_TOKENS, Vocabulary
from karpalign.decoding.generate import CaptionGenerator
from karpalign.models.mrnn_decoder import MRNNDecoder


def best_seconds(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up (the cores are shared; the minimum is the signal)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(m: int, k: int, n: int, repeats: int, inner: int = 10) -> float:
    """GFLOP/s of ``inner`` independent (m, k) x (k, n) products inside one tf.function (best of repeats)."""
    a = tf.random.normal([m, k])
    b = tf.random.normal([k, n])

    @tf.function
    def run(a, b):
        total = tf.zeros([])
        for i in range(inner):  # unrolled; each product is independent work
            total += tf.reduce_sum(tf.linalg.matmul(a + float(i), b)[:1, :1])
        return total

    secs = best_seconds(lambda: run(a, b).numpy(), repeats)
    return 2.0 * m * k * n * inner / secs / 1e9


def step_flops(rows: int, E: int, H: int, V: int, cell: str) -> float:
    recurrent = 2 * rows * H * H if cell == "rnn" else 2 * rows * H * 4 * H * 2
    return 2 * rows * E * H + recurrent + 2 * rows * H * V


def build_decoder(V: int, D: int, H: int, E: int, cell: str) -> tuple[MRNNDecoder, Vocabulary]:
    vocab = Vocabulary(list(SPECIAL_TOKENS) + [f"w{i}" for i in range(len(SPECIAL_TOKENS), V)])
    bias = np.zeros(V, "f4")
    bias[END_ID] = -1e9  # no caption ever ends: all runs do max_length steps
    generator = MRNNDecoder(V, D, hidden_dim=H, word_dim=E, cell=cell, output_bias=bias)
    generator({"image": tf.zeros([1, D]), "tokens": tf.zeros([1, 2], tf.int32)})
    return generator, vocab


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=2500)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--word-dim", type=int, default=512)
    p.add_argument("--feature-dim", type=int, default=4096)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--cell", default="rnn", choices=["rnn", "lstm"])
    p.add_argument("--beams", default="1,7")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    V, H, E, D, L = args.vocab, args.hidden, args.word_dim, args.feature_dim, args.max_length
    tf.random.set_seed(0)
    generator, vocab = build_decoder(V, D, H, E, args.cell)
    print(f"threads: intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}; "
          f"V={V} H={H} E={E} D={D} max_length={L} cell={args.cell}")

    peak_square = matmul_gflops(1024, 1024, 1024, args.repeats)
    print(f"matmul peak (1024x1024x1024): {peak_square:.1f} GFLOP/s")
    header = (f"{'beam':>4} {'batch':>5} {'captions/s':>11} {'ms/caption':>10} {'steps':>5} {'GFLOP/s':>8} "
              f"{'% square peak':>13} {'out-layer mm GFLOP/s':>20} {'% of it':>7}")
    print(header)
    print("-" * len(header))
    for beam in (int(b) for b in args.beams.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            captioner = CaptionGenerator(generator, vocab, beam_size=beam, max_length=L, batch_size=batch)
            vecs = tf.random.normal([batch, D])
            result = captioner.decode_fn(vecs)
            lengths = result.lengths.numpy()
            if not np.all(lengths == L):
                raise RuntimeError(f"some captions ended early (lengths {np.unique(lengths)}): runs not comparable")
            secs = best_seconds(lambda: captioner.decode_fn(vecs).ids.numpy(), args.repeats)
            rows = batch * beam
            flops = L * step_flops(rows, E, H, V, args.cell) + 2 * batch * D * H
            achieved = flops / secs / 1e9
            out_layer = matmul_gflops(rows, H, V, args.repeats)  # the same run, the decoder's biggest product
            print(f"{beam:>4} {batch:>5} {batch / secs:>11.1f} {1000 * secs / batch:>10.2f} {L:>5} "
                  f"{achieved:>8.2f} {100 * achieved / peak_square:>12.1f}% {out_layer:>20.1f} "
                  f"{100 * achieved / out_layer:>6.1f}%")


if __name__ == "__main__":
    main()
