"""The one matrix-multiply reference behind every "% of peak" in this folder's benchmarks.

**Peak** (:func:`measure_peak`): the best of square float32 ``tf.linalg.matmul`` products at n = 1024, 2048 and
4096, each the median of at least 5 timed calls, measured in the same run as the figure it is compared with
(the cores are shared, so a peak from another run would not be the same machine). Which n gave it is printed
with it (:meth:`Peak.describe`): on the 2-core development machine 1024 is well below 2048, so a 1024-only
"peak" made several tables show more than 100%. Other jobs come and go on a shared machine, so a benchmark that
times its work in rounds measures the peak in every round too and keeps the best (:meth:`Peak.better`): the
peak is then what the machine did at its least disturbed moment of the run, never a disturbed one.

**Same-shape matmul** (:func:`same_shape_matmul`): a workload whose biggest product is small (one image's
output layer is a (1, 512) x (512, 2500) product) cannot reach the square peak however little else it does,
so it is also reported against a product of its own shape: the better of plain TensorFlow and XLA, many
products per call so that the call overhead does not count.

Benchmarks import this module (``from _peak import measure_peak, same_shape_matmul``); its name starts with
``_`` so ``run_all.py`` does not run it as a benchmark of its own.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import tensorflow as tf

SIZES = (1024, 2048, 4096)
MIN_REPEATS = 5


def timed_calls(fn, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call (tracing, kernels)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@dataclasses.dataclass(frozen=True)
class Peak:
    """The honest peak: ``gflops`` from the n x n x n product that gave the best median (``size``)."""

    gflops: float
    size: int
    medians: dict  # {n: median GFLOP/s} of the measurement that gave the peak
    repeats: int
    measurements: int = 1  # how many times the peak was measured in this run (the best is kept)

    def percent(self, gflops: float) -> float:
        return 100.0 * gflops / self.gflops

    def better(self, other: "Peak | None") -> "Peak":
        """The higher of two measurements of this run (``other`` may be None), counting both."""
        if other is None:
            return self
        best = self if self.gflops >= other.gflops else other
        return dataclasses.replace(best, measurements=self.measurements + other.measurements)

    def describe(self) -> str:
        others = ", ".join(f"{n}^3 {g:.1f}" for n, g in self.medians.items() if n != self.size)
        times = f"; best of {self.measurements} measurements in this run" if self.measurements > 1 else ""
        return (f"honest peak {self.gflops:.1f} GFLOP/s = float32 matmul {self.size}^3 (best of "
                f"{', '.join(str(n) for n in self.medians)}; median of {self.repeats} calls each; {others}{times})")


def square_matmul_gflops(n: int, repeats: int = MIN_REPEATS) -> float:
    """Median GFLOP/s of one float32 (n, n) x (n, n) ``tf.linalg.matmul`` per call."""
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])

    @tf.function
    def product(a, b):
        return tf.reduce_sum(tf.linalg.matmul(a, b)[:1, :1])  # a scalar out: no copy of the result timed

    seconds = statistics.median(timed_calls(lambda: product(a, b).numpy(), repeats))
    return 2.0 * n ** 3 / seconds / 1e9


def measure_peak(repeats: int = MIN_REPEATS, sizes=SIZES) -> Peak:
    """Best of the square products' medians (see the module docstring)."""
    if repeats < MIN_REPEATS:
        raise ValueError(f"the peak is a median of at least {MIN_REPEATS} calls per size, got {repeats}")
    medians = {n: square_matmul_gflops(n, repeats) for n in sizes}
    size = max(medians, key=medians.get)
    return Peak(gflops=medians[size], size=size, medians=medians, repeats=repeats)


@dataclasses.dataclass(frozen=True)
class ShapeMatmul:
    """GFLOP/s of (m, k) x (k, n) products: plain TensorFlow, XLA, and the better of the two."""

    m: int
    k: int
    n: int
    tf_gflops: float
    xla_gflops: float

    @property
    def gflops(self) -> float:
        return max(self.tf_gflops, self.xla_gflops)

    @property
    def shape(self) -> str:
        return f"({self.m}, {self.k}) x ({self.k}, {self.n})"

    def better(self, other: "ShapeMatmul | None") -> "ShapeMatmul":
        """The better of two measurements of the same shape, path by path (``other`` may be None)."""
        if other is None:
            return self
        return dataclasses.replace(self, tf_gflops=max(self.tf_gflops, other.tf_gflops),
                                   xla_gflops=max(self.xla_gflops, other.xla_gflops))


def same_shape_matmul(m: int, k: int, n: int, repeats: int = MIN_REPEATS,
                      flops_per_call: float = 2e9) -> ShapeMatmul:
    """Median GFLOP/s of (m, k) x (k, n) float32 products, ``~flops_per_call`` of them per call in a
    ``tf.while_loop`` (each product's input depends on the one before, so none can be hoisted or skipped)."""
    a = tf.random.normal([m, k])
    b = tf.random.normal([k, n])
    count = int(min(2000, max(1, flops_per_call // (2 * m * k * n))))

    def loop(a, b):
        def body(i, total):
            out = tf.linalg.matmul(a + total * 1e-30, b)  # (m, n); total is ~0, the dependency is what counts
            return i + 1, total + out[0, 0] * 1e-30

        return tf.while_loop(lambda i, total: i < count, body, (tf.constant(0), tf.constant(0.0)))[1]

    results = {}
    for jit in (False, True):
        fn = tf.function(loop, jit_compile=jit)
        seconds = statistics.median(timed_calls(lambda: fn(a, b).numpy(), repeats))
        results[jit] = 2.0 * m * k * n * count / seconds / 1e9
    return ShapeMatmul(m, k, n, tf_gflops=results[False], xla_gflops=results[True])
