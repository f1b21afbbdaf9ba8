"""Beam extraction throughput against the bare CNN forward pass on the same crops, in the same run.

Generates 3N synthetic scene images, then measures, interleaved:

1. **pipeline**: ``karpalign.beam.job.run_extract`` -- planning (dataset, vocabulary), reading files,
   decoding, region proposal, crops, CNN, tokenizing, encoding, gzip TFRecord writing, counts and manifest --
   on the first N, 2N and 3N images, on every runner of ``--runners``:

   - ``direct``: Beam's local runner in this process, once for every ``--in-flight`` value (0: the CNN runs
     inline; 1, the default: one batch in a background thread, overlapped with the rest);
   - ``portable1``: ``--runner PortableRunner --job_endpoint embed --environment_type EXTERNAL`` against a Beam
     worker pool started here (``worker_pool_main``, a separate process): the job service gives it 1 SDK worker;
   - ``portable2``: the same worker pool under the local FnApiRunner with ``--direct_num_workers 2``: 2 SDK
     workers (the job service of ``--job_endpoint embed`` always starts one);
   - ``dask1``, ``dask2``: Beam's DaskRunner against a dask.distributed cluster started here, a scheduler and
     1 or 2 worker processes (on Dask the CNN runs inline and batches come from a GroupByKey).
2. **bare CNN**: the same backbone on the same crops (decoded and cropped beforehand, not timed), in batches
   of the same number of images, i.e. only ``backbone(preprocess(crops))``, on the same N, 2N, 3N images.

A job pays fixed costs once (building the Beam graph, loading and tracing the model, finalizing the files); a
corpus of 100k images pays them once too. What matters at scale is the **per-image cost**: the slope of a
least-squares line through (images, seconds) of all runs of one kind; its intercept is the fixed cost. The
slopes of pipeline and bare CNN come from runs interleaved in time, so a change in machine speed (the cores
may be shared) moves both; the standard errors of the slopes give the ratio's +- (delta method).

Worker processes started for a runner warm up with one small job before the measured runs. The machine's
load average (``/proc/loadavg``) is sampled before every run and printed: the cores may be shared.

Target: pipeline images/s (1 / slope) >= 80% of the bare CNN's.

    .venv/bin/python benchmarks/extract.py                       # 200/400/600 images, 256 px, crops 128
    .venv/bin/python benchmarks/extract.py --images 300 --image-size 128 --crop-size 96 --batch-size 32
    .venv/bin/python benchmarks/extract.py --in-flight 0,1 --repeats 3     # inline vs overlapped CNN
    .venv/bin/python benchmarks/extract.py --runners direct,portable1,portable2,dask1,dask2 --images 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
import time

import numpy as np

RUNNERS = ("direct", "portable1", "portable2", "dask1", "dask2")
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


def load_average() -> tuple[float, float, float]:
    with open("/proc/loadavg", encoding="utf-8") as f:
        one, five, fifteen = (float(v) for v in f.read().split()[:3])
    return one, five, fifteen


def bare_cnn_seconds(backbone, crops_per_image, batch_size, crop_size) -> float:
    start = time.perf_counter()
    for i in range(0, len(crops_per_image), batch_size):
        crops = np.concatenate(crops_per_image[i:i + batch_size])  # (sum R, S, S, 3)
        backbone(backbone.preprocess(crops, size=(crop_size, crop_size)))
    return time.perf_counter() - start


def subset_dataset(dataset_json: str, n: int, out_path: str) -> str:
    """The first ``n`` images of a Karpathy-format dataset.json (paths stay relative to the same folder)."""
    with open(dataset_json) as f:
        data = json.load(f)
    data["images"] = data["images"][:n]
    with open(out_path, "w") as f:
        json.dump(data, f)
    return out_path


def fit_line(points: list[tuple[int, float]]) -> tuple[float, float, float]:
    """Least squares ``seconds = fixed + per_image * images`` -> (per_image, its standard error, fixed)."""
    n = np.array([p[0] for p in points], float)
    t = np.array([p[1] for p in points], float)
    design = np.stack([np.ones_like(n), n], axis=1)
    (fixed, slope), *_ = np.linalg.lstsq(design, t, rcond=None)
    dof = len(n) - 2
    if dof <= 0:
        return float(slope), float("nan"), float(fixed)
    sigma2 = float(np.sum((t - design @ [fixed, slope]) ** 2)) / dof
    se = float(np.sqrt(sigma2 / np.sum((n - n.mean()) ** 2)))
    return float(slope), se, float(fixed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="N: every measurement runs on N, 2N and 3N images")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--regions", type=int, default=19, help="K (the scenes have at most a few boxes each)")
    p.add_argument("--cnn", default="efficientnet_lite0")
    p.add_argument("--repeats", type=int, default=2, help="times the interleaved sequence runs")
    p.add_argument("--in-flight", default="1",
                   help="comma-separated cnn_in_flight values to measure side by side (0: CNN inline, no overlap)")
    p.add_argument("--beam-args", default="--runner=DirectRunner",
                   help="Beam pipeline options for the 'direct' runs, e.g. '--runner=DirectRunner "
                        "--direct_num_workers=2 --direct_running_mode=multi_threading'")
    p.add_argument("--runners", default="direct", help=f"comma-separated, of {', '.join(RUNNERS)} (see above)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    unknown = sorted(set(runners) - set(RUNNERS))
    if unknown:
        p.error(f"unknown --runners {unknown}; choose from {', '.join(RUNNERS)}")

    from karpalign.beam.job import extract_config, run_extract
    from karpalign.data.records import read_dataset
    from karpalign.datasets.generate import generate_scenes
    from karpalign.vision.backbones import get_backbone
    from karpalign.vision.images import decode_image
    from karpalign.vision.proposers import BoxesProposer, crop_regions

    from karpalign.beam import local_clusters

    n = args.images
    sizes = [n, 2 * n, 3 * n]
    depths = [int(v) for v in args.in_flight.split(",")]
    loadavg_start = load_average()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        # measurement label -> (Beam options, cnn_in_flight, SDK / Dask worker processes)
        measured: dict[str, tuple[list[str], int, str]] = {}
        if "direct" in runners:
            for d in depths:
                label = "Direct, CNN inline" if d == 0 else f"Direct, {d} in flight"
                measured[label] = (args.beam_args.split(), d, "in process")
        if "portable1" in runners or "portable2" in runners:
            address, _ = stack.enter_context(local_clusters.worker_pool(tmp))
            external = ["--environment_type=EXTERNAL", f"--environment_config={address}"]
            if "portable1" in runners:
                measured["portable (embed job server)"] = (
                    ["--runner=PortableRunner", "--job_endpoint=embed", *external], 1, "1 SDK")
            if "portable2" in runners:
                measured["portable (FnApiRunner)"] = ([*external, "--direct_num_workers=2"], 1, "2 SDK")
        for workers in (1, 2):
            if f"dask{workers}" in runners:
                address = stack.enter_context(local_clusters.dask_cluster(tmp, workers=workers))
                measured[f"Dask, {workers} worker{'s' if workers > 1 else ''}"] = (
                    [f"--runner={DASK_RUNNER}", f"--dask_client_address={address}"], 0, f"{workers} Dask")

        full = generate_scenes(os.path.join(tmp, "scenes"), 3 * n, seed=0, image_size=args.image_size,
                               workers=1)["dataset_json"]
        datasets = {m: subset_dataset(full, m, os.path.join(tmp, "scenes", f"first_{m}.json")) for m in sizes}
        proposer = BoxesProposer(args.regions)
        crops = []
        for r in read_dataset(full):
            with open(r.path, "rb") as f:
                crops.append(crop_regions(decode_image(f.read()), proposer.propose(boxes=r.boxes), args.crop_size))
        n_regions = sum(len(c) for c in crops)

        load_start = time.perf_counter()
        backbone = get_backbone(args.cnn)
        load_seconds = time.perf_counter() - load_start
        bare_cnn_seconds(backbone, crops[:args.batch_size * 2], args.batch_size, args.crop_size)  # warm up

        loads: list[float] = []

        def pipeline_seconds(dataset, count, label, name):
            beam_args, in_flight, _ = measured[label]
            config = extract_config(dataset, os.path.join(tmp, name), cnn=args.cnn,
                                    crop_size=args.crop_size, proposer="boxes", regions=args.regions,
                                    min_word_count=1, shards_per_split=2, batch_size=args.batch_size,
                                    cnn_in_flight=in_flight, progress_every=0)
            loads.append(load_average()[0])
            start = time.perf_counter()
            result = run_extract(config, beam_args)
            seconds = time.perf_counter() - start
            assert result.manifest.written == count, result.manifest
            return seconds

        warm_up = subset_dataset(full, 2 * args.batch_size, os.path.join(tmp, "scenes", "warm_up.json"))
        for i, label in enumerate(measured):  # start-up of worker processes, first imports and traces
            pipeline_seconds(warm_up, 2 * args.batch_size, label, f"warm_up_{i}")
        bare: list[tuple[int, float]] = []
        runs: dict[str, list[tuple[int, float]]] = {label: [] for label in measured}
        per_repeat: dict[str, list[float]] = {label: [] for label in measured}  # bare slope / pipeline slope
        for r in range(args.repeats):
            bare_r: list[tuple[int, float]] = []
            runs_r: dict[str, list[tuple[int, float]]] = {label: [] for label in measured}
            for m in sizes[r % 3:] + sizes[:r % 3]:  # a different size order every repeat
                for i, label in enumerate(measured):  # each pipeline run right after a bare-CNN pass
                    bare_r.append((m, bare_cnn_seconds(backbone, crops[:m], args.batch_size, args.crop_size)))
                    runs_r[label].append((m, pipeline_seconds(datasets[m], m, label, f"out_{r}_{m}_{i}")))
            bare += bare_r
            for label in measured:
                runs[label] += runs_r[label]
                per_repeat[label].append(fit_line(bare_r)[0] / fit_line(runs_r[label])[0])

    loadavg_end = load_average()
    print(f"{3 * n} images {args.image_size} px, {n_regions} regions ({n_regions / (3 * n):.1f}/image), "
          f"{args.cnn} at {args.crop_size} px crops, batch {args.batch_size} images, model load "
          f"{load_seconds:.1f}s, {os.cpu_count()} CPUs, Beam options of 'direct': {args.beam_args}")
    print(f"runs on {', '.join(map(str, sizes))} images, {args.repeats} repeats; per-image cost = slope of the "
          "least-squares line through (images, seconds)")
    print(f"load average (/proc/loadavg, 1/5/15 min): {loadavg_start[0]:.2f} / {loadavg_start[1]:.2f} / "
          f"{loadavg_start[2]:.2f} at the start, {loadavg_end[0]:.2f} / {loadavg_end[1]:.2f} / "
          f"{loadavg_end[2]:.2f} at the "
          f"end; 1-min value before each pipeline run: min {min(loads):.2f}, mean {np.mean(loads):.2f}, "
          f"max {max(loads):.2f}")
    bare_slope, bare_se, bare_fixed = fit_line(bare)
    header = (f"{'measurement':28s} {'workers':>9s} {'runs':>4s} {'ms/image':>9s} {'+-':>5s} {'fixed s':>8s} "
              f"{'images/s':>9s} {'vs bare CNN':>12s} {'+-':>4s} {'per repeat':>11s} {'+-':>4s} "
              f"{'fastest ' + str(3 * n):>13s}")
    print(header)
    print("-" * len(header))

    def fastest(points):
        return min(t for m, t in points if m == 3 * n)

    print(f"{'bare CNN':28s} {'in process':>9s} {len(bare):4d} {1e3 * bare_slope:9.2f} {1e3 * bare_se:5.2f} "
          f"{bare_fixed:8.2f} {1 / bare_slope:9.1f} {'100%':>12s} {'':>4s} {'':>11s} {'':>4s} "
          f"{fastest(bare):12.1f}s")
    for label, (_, _, workers) in measured.items():
        slope, se, fixed = fit_line(runs[label])
        ratio = bare_slope / slope
        spread = ratio * float(np.hypot(se / slope, bare_se / bare_slope))
        ratios = np.array(per_repeat[label])
        ratios_se = ratios.std(ddof=1) / np.sqrt(len(ratios)) if len(ratios) > 1 else float("nan")
        print(f"{label:28s} {workers:>9s} {len(runs[label]):4d} {1e3 * slope:9.2f} {1e3 * se:5.2f} {fixed:8.2f} "
              f"{1 / slope:9.1f} {ratio:12.0%} {spread:4.0%} {ratios.mean():11.0%} {ratios_se:4.0%} "
              f"{fastest(runs[label]):12.1f}s")
    print("vs bare CNN: ratio of the slopes fitted to all runs, +- by the delta method from their standard errors "
          "(which assume independent, equal-variance run noise); per repeat: the mean of the ratios of slopes "
          "fitted within each repeat, +- its standard error over the repeats (uses the pairing, no such "
          "assumption)")
    print("target: pipeline images/s >= 80% of the bare CNN's (the per-image cost a large corpus pays)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
