"""Caption decoding speed: karpalign's compiled beam search against NumPy neuraltalk and against the matmul peak.

An untrained MRNNDecoder at paper size (vocabulary 2,500, hidden 512, word vectors 512, image 4,096-d) with
random weights decodes random image vectors at beam 1 and 7, batch 1 and 64, both XLA-compiled (the default:
``CaptionGenerator(jit_compile=True)``, the exported signatures) and as a plain graph (``jit_compile=False``,
``karpalign-export --no-xla``). The output bias of <end> is set very negative so no hypothesis ever ends: every
caption runs to ``--max-length`` words and every run does the same work.

**neuraltalk** rows: Karpathy's NumPy/float64 decoder, one image at a time (``_neuraltalk.py``: a Python 3
re-implementation of its ``predict``, same sizes, also never ending early), run in a child process that imports
only NumPy, with its BLAS on every core and on one thread (on a shared machine the second thread can cost it
most of its speed; the ratio uses whichever was faster), in the same run, round after round with karpalign's and
with the reference matmuls, so that all see the same machine; the best of each is compared. Targets (issue 17):
one image at beam 1 at least 3x neuraltalk's images/s, at beam 7 at least 8x; 64 images at beam 7 at least 40%
of a matmul of the output layer's own shape.

GFLOP/s counts only the step's matrix products, per step for N = B·K rows (the embedding gather is free): input
projection 2·N·E·H, recurrence 2·N·H·H (LSTM: 2·N·H·4H input kernel + 2·N·H·4H recurrent), output layer
2·N·H·V; plus the image projection 2·B·D·H once. "% of peak" is against the honest peak of ``_peak.py`` (best
square float32 matmul of 1024/2048/4096 in this run); a (N, 512) x (512, 2500) output layer cannot reach it at
small N, so each row is also compared with a matmul of that shape (the better of plain TF and XLA).

    .venv/bin/python benchmarks/decode.py                         # both cells, the issue's targets
    .venv/bin/python benchmarks/decode.py --cells rnn --beams 7 --batches 1 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from _peak import measure_peak, same_shape_matmul, timed_calls
from karpalign.data.text import END_ID, SPECIAL_TOKENS, Vocabulary
from karpalign.decoding.generate import CaptionGenerator
from karpalign.models.mrnn_decoder import MRNNDecoder

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = {1: 3.0, 7: 8.0}  # one image at beam K: at least this many times neuraltalk's images/s
BATCHED_TARGET = 0.40  # 64 images at beam 7: at least this fraction of the output-layer-shape matmul


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


BLAS_THREADS = ("all", "1")  # the reference's BLAS on every core, and on one thread


def neuraltalk_images_per_s(cell: str, beam: int, threads: str, args) -> float:
    """Best images/s of the NumPy reference in a child process (NumPy only, no TensorFlow threads)."""
    cmd = [sys.executable, os.path.join(HERE, "_neuraltalk.py"), "--cell", cell, "--beam", str(beam),
           "--images", str(args.neuraltalk_images), "--repeats", "1", "--vocab", str(args.vocab),
           "--feature-dim", str(args.feature_dim), "--hidden", str(args.hidden), "--word-dim", str(args.word_dim),
           "--max-length", str(args.max_length)]
    env = dict(os.environ)
    if threads != "all":
        env.update(OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=2500)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--word-dim", type=int, default=512)
    p.add_argument("--feature-dim", type=int, default=4096)
    p.add_argument("--max-length", type=int, default=20)
    p.add_argument("--cells", default="rnn,lstm")
    p.add_argument("--beams", default="1,7")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per round (batch 1: 4x as many)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of peak + reference matmuls + neuraltalk + karpalign; the best of each is kept")
    p.add_argument("--neuraltalk-images", type=int, default=8, help="images the reference decodes per round")
    p.add_argument("--no-graph", action="store_true", help="skip the plain-graph (jit_compile=False) rows")
    args = p.parse_args(argv)
    V, H, E, D, L = args.vocab, args.hidden, args.word_dim, args.feature_dim, args.max_length
    cells, beams = args.cells.split(","), [int(b) for b in args.beams.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    paths = [("XLA", True)] + ([] if args.no_graph else [("graph", False)])
    tf.random.set_seed(0)
    load_start = os.getloadavg()

    # Compile everything first (the first call of each is traced and compiled; its time is reported).
    runs, first_call = {}, {}
    for cell in cells:
        generator, vocab = build_decoder(V, D, H, E, cell)
        for beam in beams:
            for batch in batches:
                vecs = tf.random.normal([batch, D])
                for path, jit in paths:
                    captioner = CaptionGenerator(generator, vocab, beam_size=beam, max_length=L, batch_size=batch,
                                                 jit_compile=jit)
                    start = time.perf_counter()
                    lengths = captioner.decode_fn(vecs).lengths.numpy()
                    first_call[cell, beam, batch, path] = time.perf_counter() - start
                    if not np.all(lengths == L):
                        raise RuntimeError(f"captions ended early (lengths {np.unique(lengths)}): not comparable")
                    runs[cell, beam, batch, path] = (lambda c=captioner, v=vecs: c.decode_fn(v).ids.numpy())

    best, nt, mm, peak = {}, {}, {}, None
    all_rows = sorted({beam * batch for beam in beams for batch in batches})
    for _ in range(args.rounds):
        peak = measure_peak().better(peak)
        for rows in all_rows:
            mm[rows] = same_shape_matmul(rows, H, V).better(mm.get(rows))
        for cell in cells:
            for beam in beams:
                for threads in BLAS_THREADS:
                    ips = neuraltalk_images_per_s(cell, beam, threads, args)
                    nt[cell, beam, threads] = max(nt.get((cell, beam, threads), 0.0), ips)
        for key, fn in runs.items():
            repeats = args.repeats * (4 if key[2] == 1 else 1)
            seconds = min(timed_calls(fn, repeats))
            best[key] = min(best.get(key, float("inf")), seconds)

    print(f"V={V} H={H} E={E} D={D} max_length={L}; {os.cpu_count()} CPUs; TF {tf.__version__}")
    print(peak.describe())
    print(f"load average (1 min) {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; best of "
          f"{args.rounds} rounds; out-layer mm = (N, {H}) x ({H}, {V}) matmul, the better of plain TF and XLA")
    print()
    print("| cell | beam | batch | path | images/s | ms/image | vs neuraltalk | GFLOP/s | % of peak | out-layer mm "
          "GFLOP/s | % of it | first call s |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    checks = []
    for cell in cells:
        for beam in beams:
            ref = max(nt[cell, beam, threads] for threads in BLAS_THREADS)
            for threads in BLAS_THREADS:
                ips = nt[cell, beam, threads]
                label = "BLAS on every core" if threads == "all" else f"BLAS on {threads} thread"
                print(f"| {cell} | {beam} | 1 | neuraltalk (NumPy float64, {label}) | {ips:.1f} | {1000 / ips:.2f} | "
                      f"{ips / ref:.2f}x | - | - | - | - | - |")
            for batch in batches:
                rows = beam * batch
                for path, _ in paths:
                    secs = best[cell, beam, batch, path]
                    achieved = (L * step_flops(rows, E, H, V, cell) + 2 * batch * D * H) / secs / 1e9
                    ratio = batch / secs / ref
                    print(f"| {cell} | {beam} | {batch} | karpalign {path} | {batch / secs:.1f} | "
                          f"{1000 * secs / batch:.2f} | {ratio:.2f}x | {achieved:.1f} | {peak.percent(achieved):.1f}% "
                          f"| {mm[rows].gflops:.1f} | {100 * achieved / mm[rows].gflops:.0f}% | "
                          f"{first_call[cell, beam, batch, path]:.1f} |")
                    if path == "XLA" and batch == 1 and beam in TARGETS:
                        checks.append((f"{cell} beam {beam}, one image: {ratio:.2f}x neuraltalk "
                                       f"(target >= {TARGETS[beam]:.0f}x)", ratio >= TARGETS[beam]))
                    if path == "XLA" and batch == 64 and beam == 7:
                        share = achieved / mm[rows].gflops
                        checks.append((f"{cell} beam 7, 64 images: {100 * share:.0f}% of the {mm[rows].shape} "
                                       f"matmul (target >= {100 * BATCHED_TARGET:.0f}%)", share >= BATCHED_TARGET))
    print()
    for text, ok in checks:
        print(f"- {'met' if ok else 'NOT met'}: {text}")


if __name__ == "__main__":
    main()
