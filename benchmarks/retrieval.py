"""Times the chunked BRNN score matrix at COCO 5K test size and compares it with a plain matmul.

The full 5,000 images × 25,000 sentences (R=20, H=1000, T=16) is 8·10^13 flops (2·R·T·H per pair), most
of an hour on a 2-core machine, so by default the inputs are allocated at full size (for a realistic memory
peak) but only the first ``--measure-sentences`` sentences are scored against all images, and the full time
is scaled from that.

The cores are shared, so throughput drifts during a run. The measurement therefore goes in rounds: each
round scores one block of sentences against all images end to end (``score_matrix``), then times single
chunk-sized calls of ``karpalign.models.scores.brnn_score`` (one matmul), of eq. 8 from einsum dots and of
a plain ``tf.linalg.matmul`` with the chunk's (I·R, H) × (H, S·T) shape. Ratios compare figures taken in
the same rounds. The end-to-end figure is also given as a share of the honest peak of ``_peak.py`` (best
square float32 matmul of 1024/2048/4096, median of 5 each, this run). Peak RSS is read from
``resource.getrusage``.

    .venv/bin/python benchmarks/retrieval.py                              # default subset
    .venv/bin/python benchmarks/retrieval.py --measure-sentences 25000   # the whole thing
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import tensorflow as tf

from _peak import measure_peak
from karpalign.evaluation.retrieval import score_matrix
from karpalign.models.scores import brnn_score, brnn_score_from_dots, region_word_dots


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def random_normal(shape: tuple[int, ...], dtype: str, rng: np.random.Generator,
                  block: int = 1000) -> np.ndarray:
    """Standard-normal array filled block by block, so a float16 array never has a float32 twin in memory."""
    out = np.empty(shape, dtype)
    for i in range(0, shape[0], block):
        out[i:i + block] = rng.standard_normal((min(block, shape[0] - i),) + shape[1:], dtype=np.float32)
    return out


@tf.autograph.experimental.do_not_convert
def plain_matmul(a, b):
    return tf.linalg.matmul(a, b)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--sentences", type=int, default=25000)
    p.add_argument("--regions", type=int, default=20)
    p.add_argument("--words", type=int, default=16)
    p.add_argument("--hidden", type=int, default=1000)
    p.add_argument("--measure-sentences", type=int, default=1000,
                   help="sentences actually scored against all images (the full time is scaled from these)")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--image-chunk", type=int, default=100)
    p.add_argument("--sentence-chunk", type=int, default=500)
    p.add_argument("--chunk-repeats", type=int, default=2, help="single-chunk timings per kernel per round")
    args = p.parse_args(argv)
    n_img, n_sent, r, t, h = args.images, args.sentences, args.regions, args.words, args.hidden
    m = min(args.measure_sentences, n_sent)
    ic, sc = min(args.image_chunk, n_img), min(args.sentence_chunk, m)

    rng = np.random.default_rng(0)
    v = random_normal((n_img, r, h), args.dtype, rng)  # (N_img, R, H)
    s = random_normal((n_sent, t, h), args.dtype, rng)  # (N_sent, T, H)
    v_mask = np.ones((n_img, r), np.float32)
    s_mask = (np.arange(t)[None, :] < rng.integers(8, t + 1, size=n_sent)[:, None]).astype(np.float32)
    rss_inputs = peak_rss_mb()

    # One chunk's worth of tensors for the single-call comparisons.
    cv, cvm = tf.constant(v[:ic], tf.float32), tf.constant(v_mask[:ic])  # (ic, R, H), (ic, R)
    cs, csm = tf.constant(s[:sc], tf.float32), tf.constant(s_mask[:sc])  # (sc, T, H), (sc, T)
    ma, mb = tf.reshape(cv, [ic * r, h]), tf.transpose(tf.reshape(cs, [sc * t, h]))  # (ic·R, H), (H, sc·T)
    kernels = {
        "chunk": (tf.function(brnn_score), (cv, cvm, cs, csm)),
        "einsum": (tf.function(lambda *a: brnn_score_from_dots(region_word_dots(a[0], a[2]), a[1], a[3])),
                   (cv, cvm, cs, csm)),
        "matmul": (tf.function(plain_matmul), (ma, mb)),
    }
    for fn, inputs in kernels.values():  # trace and warm up
        fn(*inputs).numpy()
    peak = measure_peak()  # the honest peak of _peak.py: before the rounds and after them, the better kept
    score_matrix(v[:ic], v_mask[:ic], s[:sc], s_mask[:sc], image_chunk=ic, sentence_chunk=sc)

    chunk_flops = 2.0 * ic * sc * r * t * h
    flops_per_pair = 2.0 * r * t * h
    end_to_end_sec = 0.0
    kernel_secs = {name: [] for name in kernels}
    for s0 in range(0, m, sc):
        block = slice(s0, min(s0 + sc, m))
        end_to_end_sec += seconds(lambda: score_matrix(v, v_mask, s[block], s_mask[block], image_chunk=ic,
                                                       sentence_chunk=sc))
        for name, (fn, inputs) in kernels.items():
            kernel_secs[name] += [seconds(lambda: fn(*inputs).numpy()) for _ in range(args.chunk_repeats)]
    rss_peak = peak_rss_mb()
    peak = measure_peak().better(peak)

    end_to_end = n_img * m * flops_per_pair / end_to_end_sec / 1e9
    mean_gflops = {k: chunk_flops * len(x) / sum(x) / 1e9 for k, x in kernel_secs.items()}
    best_gflops = {k: chunk_flops / min(x) / 1e9 for k, x in kernel_secs.items()}
    full_pairs = n_img * n_sent
    projected_sec = end_to_end_sec * full_pairs / (n_img * m)
    output_mb = lambda pairs: pairs * 4 / 2**20  # noqa: E731  (float32 score matrix)
    projected_rss = rss_peak + output_mb(full_pairs) - output_mb(n_img * m)

    rows = [
        ("inputs (allocated)", f"{n_img} img x {n_sent} sent, R={r} T={t} H={h}, {args.dtype}"),
        ("chunk (images x sentences)", f"{ic} x {sc} -> matmul ({ic * r}, {h}) x ({h}, {sc * t})"),
        ("measured end to end", f"{n_img} img x {m} sent = {n_img * m:,} pairs in {end_to_end_sec:.1f} s"),
        ("score_matrix end to end [GFLOP/s]", f"{end_to_end:.1f}"),
        ("chunk kernel, mean | best [GFLOP/s]", f"{mean_gflops['chunk']:.1f} | {best_gflops['chunk']:.1f}"),
        ("scores.brnn_score einsum, mean | best",
         f"{mean_gflops['einsum']:.1f} | {best_gflops['einsum']:.1f}"),
        ("plain tf.linalg.matmul, mean | best", f"{mean_gflops['matmul']:.1f} | {best_gflops['matmul']:.1f}"),
        ("ratio end to end / matmul mean",
         f"{100 * end_to_end / mean_gflops['matmul']:.0f}%  (target >= 50%)"),
        ("ratio chunk kernel / matmul, best", f"{100 * best_gflops['chunk'] / best_gflops['matmul']:.0f}%"),
        (f"honest peak [GFLOP/s] ({peak.size}^3 matmul)", f"{peak.gflops:.1f}  ({peak.describe().split('(', 1)[1]}"),
        ("end to end / honest peak", f"{peak.percent(end_to_end):.0f}%"),
        (f"projected full {n_img} x {n_sent} time", f"{projected_sec:.0f} s ({projected_sec / 60:.1f} min, scaled)"),
        ("peak RSS after inputs [MB]", f"{rss_inputs:.0f}"),
        ("peak RSS measured [MB]", f"{rss_peak:.0f}"),
        ("peak RSS projected, full run [MB]", f"{projected_rss:.0f}  (+ full float32 score matrix)"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"{'quantity':<{width}} | value")
    print(f"{'-' * width}-+-{'-' * 44}")
    for key, value in rows:
        print(f"{key:<{width}} | {value}")


if __name__ == "__main__":
    main()
