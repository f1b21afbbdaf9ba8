"""The extraction job: plan it, build the Beam pipeline, run it, check the counts, write vocab and manifest.

Flow (every step labelled in the pipeline graph)::

    ReadRecords -> ReadImageBytes -> DecodeImages -> ProposeRegions -> ExtractFeatures -> EncodeExamples
        -> WriteSplits ({split}-SSSSS-of-NNNNN.tfrecord.gz)
    dead letters of every step -> WriteDeadLetters (dead_letters.jsonl)
    input / written / failed tallies -> CountOutcomes (_job/counts.jsonl)
    the files the three writers wrote -> OutputFiles (the last step: it depends on every output)

The launcher (this module, in the submitting process) reads the caption dataset with
:func:`karpalign.data.records.read_dataset`, builds the vocabulary from the training split only, and hands the
images to the pipeline as a JSONL file in ``<out>/_job/`` plus a ``Create`` of byte ranges of that file (a file
scales to any dataset size; a ``Create`` of 100k records would bloat the job graph past Dataflow's limit). An
image path the reader refuses (absolute, escaping the image root, a URL scheme) is kept as an item that becomes
a "path" dead letter, so one bad record never stops the job.

Runners. Without ``--runner`` the job runs on Beam's local ``FnApiRunner`` -- in this process, or, given
``--environment_type EXTERNAL --environment_config HOST:PORT``, on the SDK workers of a Beam worker pool
(``--direct_num_workers`` of them). ``--runner PortableRunner`` submits to a job service (``--job_endpoint
embed`` starts one in this process; Flink's and Spark's job servers are the same protocol). Every DoFn gets
what it needs from its constructor arguments and from paths the workers read, never from this process's memory.
Beam's experimental ``DaskRunner`` drops what ``finish_bundle`` emits and does not route tagged outputs; the
pipeline has no tagged outputs anywhere, and on that runner it batches images with a ``GroupByKey`` and runs the
CNN inline (:func:`runner_drops_finish_bundle_outputs`).

Counting choice: the manifest's numbers come from ``CountOutcomes``, an ordinary output file computed by the
pipeline itself, so they are exact on every runner (Direct, Dataflow, Flink, Spark, Dask). Beam counters are
queried too and reported alongside, but some runners report only attempted (not committed) values, so they
are informative, not authoritative. The job refuses to write a manifest unless
``input_records == written + failed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, PortableOptions, SetupOptions, StandardOptions
from apache_beam.utils import shared

from karpalign.beam import transforms as T
from karpalign.config import Config, save_config
from karpalign.beam.elements import STAGES, ImageItem
from karpalign.data import features as F
from karpalign.data.records import PATH_ERROR, Record, ReadReport, by_split, iter_train_tokens, read_dataset
from karpalign.data.text import Vocabulary
from karpalign.logs import dropped_messages

DEAD_LETTERS = "dead_letters.jsonl"
JOB_DIR = "_job"
MAX_ITEM_RANGES = 1000  # the Create of item-file byte ranges stays this small whatever the dataset size
# Runners that drop what DoFn.finish_bundle emits (Beam 2.77's DaskRunner collects a bundle's outputs before it).
DROPS_FINISH_BUNDLE_OUTPUTS = ("DaskRunner",)
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"  # Beam knows it by this path only
_log = logging.getLogger(__name__)
_FN_RUNNER_LOGGER = "apache_beam.runners.portability.fn_api_runner.fn_runner"


class ExtractError(RuntimeError):
    """A configuration or consistency problem that stops the job; the message says what and where."""


def extract_config(dataset: str, out: str, *, image_root: str = "", min_word_count: int = 5,
                   fold_restval: bool = False, **extract) -> Config:
    """A :class:`karpalign.config.Config` for :func:`run_extract` from keyword arguments: the ``data`` keys
    named here and any ``extract`` key (``cnn``, ``proposer``, ``regions``, ``batch_size``, ...; None keeps
    the default)."""
    cfg = Config()
    cfg.data.dataset, cfg.data.records_dir, cfg.data.image_root = dataset, out, image_root or ""
    cfg.data.min_word_count, cfg.data.fold_restval = min_word_count, fold_restval
    known = {f.name for f in dataclasses.fields(cfg.extract)}
    unknown = sorted(set(extract) - known)
    if unknown:
        raise ExtractError(f"unknown extract settings {unknown}; known: {sorted(known)}")
    for key, value in extract.items():
        if value is not None:
            setattr(cfg.extract, key, list(value) if key == "splits" else value)
    return cfg


def validate_config(cfg: Config) -> None:
    """Checks what the job reads (``data.dataset``, ``data.records_dir``, ``data.min_word_count`` and the
    ``extract`` section); raises :class:`ExtractError` naming the key."""
    e = cfg.extract

    def positive(name, value, lo=1):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ExtractError(f"{name} must be an integer >= {lo}, got {value!r}")

    if not cfg.data.dataset:
        raise ExtractError("data.dataset is empty: give the caption dataset (--dataset or data.dataset in --config)")
    if not cfg.data.records_dir:
        raise ExtractError("data.records_dir is empty: give the output folder (--out or data.records_dir in "
                           "--config)")
    positive("data.min_word_count", cfg.data.min_word_count)
    positive("extract.regions (K)", e.regions, 0)
    positive("extract.shards_per_split", e.shards_per_split)
    positive("extract.batch_size", e.batch_size)
    positive("extract.cnn_in_flight", e.cnn_in_flight, 0)
    positive("extract.max_image_pixels", e.max_image_pixels)
    positive("extract.progress_every", e.progress_every, 0)
    if e.crop_size:
        positive("extract.crop_size", e.crop_size, 8)
    positive("extract.min_batch_size", e.min_batch_size, 0)
    min_batch = e.min_batch_size or e.batch_size
    if min_batch > e.batch_size:
        raise ExtractError(f"extract.min_batch_size {min_batch} exceeds extract.batch_size {e.batch_size}")
    if min_batch < e.batch_size and e.cnn_in_flight > 0:
        raise ExtractError(
            f"adaptive batches (extract.min_batch_size {min_batch} < batch_size {e.batch_size}) need "
            f"extract.cnn_in_flight 0, got {e.cnn_in_flight}: Beam sizes the batches by timing each one, and "
            "the CNN running in the background would be left out of that time")
    if not 0.0 <= e.max_failure_fraction <= 1.0:
        raise ExtractError(f"extract.max_failure_fraction must be in [0, 1], got {e.max_failure_fraction}")
    if e.proposer.startswith("detector:") and not e.proposer[len("detector:"):]:
        raise ExtractError("extract.proposer 'detector:' needs a model path or hub handle after the colon")
    from karpalign.vision.proposers import proposer_name

    try:  # get_proposer's own checks (unknown spec, segments options) without loading a detector
        proposer_name(e.proposer, e.regions, e.detector_score_threshold, e.detector_iou_threshold)
    except ValueError as exc:
        raise ExtractError(f"extract.proposer: {exc}") from exc


@dataclasses.dataclass
class JobPlan:
    """What the launcher decided before the pipeline runs (see :func:`plan_job`)."""

    config: Config
    items: list[ImageItem]
    splits: tuple[str, ...]
    vocab: Vocabulary
    read_report: ReadReport
    cnn_spec: str
    crop_size: int
    feature_dim: int
    item_ranges: list = dataclasses.field(default_factory=list)  # (items file, start, end): prepare_output

    @property
    def out(self) -> str:
        return self.config.data.records_dir

    @property
    def job_dir(self) -> str:
        return FileSystems.join(self.out, JOB_DIR)

    @property
    def items_path(self) -> str:
        return FileSystems.join(self.job_dir, "items.jsonl")

    @property
    def counts_path(self) -> str:
        return FileSystems.join(self.job_dir, "counts.jsonl")

    @property
    def dead_letters_path(self) -> str:
        return FileSystems.join(self.out, DEAD_LETTERS)

    @property
    def tmp_dir(self) -> str:
        """Where the writers put files until they are complete (removed with ``_job/``)."""
        return FileSystems.join(self.job_dir, "tmp")

    @property
    def proposer(self) -> T.ProposerSpec:
        c = self.config.extract
        return T.ProposerSpec(c.proposer, c.regions, c.detector_score_threshold, c.detector_iou_threshold)


@dataclasses.dataclass
class ExtractResult:
    """The outcome: the manifest as written, where it is, and the runner's Beam counters (may be partial)."""

    manifest: F.Manifest
    manifest_path: str
    counters: dict

    @property
    def failure_fraction(self) -> float:
        return self.manifest.failed / max(1, self.manifest.input_records or 0)

    def acceptable(self, max_failure_fraction: float) -> bool:
        return self.failure_fraction <= max_failure_fraction


# ---- planning (in the launcher) -----------------------------------------------------------------------------


def _is_url(path: str) -> bool:
    return "://" in path


def _check_filesystem(path: str, what: str) -> None:
    """A URL whose scheme no installed Beam filesystem handles is a configuration error (before any work)."""
    if not _is_url(path):
        return
    try:
        FileSystems.get_filesystem(path)
    except ValueError as exc:
        scheme = path.split("://", 1)[0]
        raise ExtractError(f"{what} {path}: no Beam filesystem handles {scheme}:// here ({exc}); install the "
                           "matching Beam extra (apache-beam[gcp] for gs://, [aws] for s3://, [azure] for "
                           "azfs://; hdfs:// needs hdfs options) or register a FileSystem plugin") from None


def read_records(config: Config, report: ReadReport) -> list[Record]:
    """Reads the dataset without checking image files (missing ones become "read" dead letters, counted) and
    keeping records whose image path is refused (they become "path" dead letters, counted).

    An image root that is a URL (``gs://...``) is applied after reading: the reader resolves paths against a
    local placeholder root (which also enforces that no path escapes the root), then the placeholder is
    swapped for the URL.
    """
    d = config.data
    root = d.image_root or None
    if root is not None and _is_url(root):
        placeholder = os.path.join(os.sep, "karpalign-remote-image-root")
        records = read_dataset(d.dataset, placeholder, fold_restval=d.fold_restval,
                               check_images=False, report=report, keep_bad_paths=True)
        for r in records:
            if PATH_ERROR not in r.extra:
                r.path = root.rstrip("/") + "/" + os.path.relpath(r.path, placeholder).replace(os.sep, "/")
            else:  # the message names the placeholder; the user gave the URL
                r.extra[PATH_ERROR] = r.extra[PATH_ERROR].replace(repr(placeholder), repr(root))
        return records
    return read_dataset(d.dataset, root, fold_restval=d.fold_restval, check_images=False, report=report,
                        keep_bad_paths=True)


def plan_job(config: Config) -> JobPlan:
    """Validates the config, reads the dataset, builds the vocabulary (train split only), loads the backbone
    once to learn its feature dim and check the crop size, and lists the images to extract."""
    from karpalign.vision.backbones import get_backbone

    validate_config(config)
    d, e = config.data, config.extract
    _check_filesystem(d.image_root, "data.image_root")
    _check_filesystem(d.records_dir, "data.records_dir")
    report = ReadReport()
    records = read_records(config, report)
    groups = by_split(records)
    if not groups.get("train"):
        raise ExtractError(f"{d.dataset} has no 'train' images: the vocabulary is built from the training "
                           f"split only (splits present: {sorted(groups) or 'none'}"
                           + ("" if d.fold_restval else "; COCO 'restval' counts as train with --fold-restval")
                           + ")")
    vocab = Vocabulary.build(iter_train_tokens(records), min_count=d.min_word_count)

    splits = tuple(e.splits) if e.splits else tuple(sorted(groups))
    unknown = [s for s in splits if s not in groups]
    if unknown:
        raise ExtractError(f"{d.dataset} has no images in split(s) {unknown}; it has {sorted(groups)}")
    if len(set(splits)) != len(splits):
        raise ExtractError(f"splits {list(splits)} name a split twice")
    items = [ImageItem.from_record(r, seq) for seq, r in enumerate(r for r in records if r.split in splits)]

    try:
        backbone = get_backbone(e.cnn)
    except (ValueError, FileNotFoundError) as exc:
        raise ExtractError(f"cannot load the CNN {e.cnn!r}: {exc}") from exc
    crop = e.crop_size or backbone.input_size[0]
    if backbone.fixed_size and backbone.input_size != (crop, crop):
        raise ExtractError(f"CNN {backbone.name} only accepts {backbone.input_size} inputs; the crop size is "
                           f"{crop}x{crop} (choose --crop-size {backbone.input_size[0]} or a variable-size model)")
    if e.proposer.startswith("detector:"):
        model = e.proposer[len("detector:"):]
        if not _is_url(model) and not os.path.exists(model) and os.sep in model:
            raise ExtractError(f"detector model {model} does not exist")
    return JobPlan(config=config, items=items, splits=splits, vocab=vocab, read_report=report,
                   cnn_spec=backbone.name, crop_size=int(crop), feature_dim=int(backbone.feature_dim))


def _existing_outputs(out: str) -> list[str]:
    patterns = [FileSystems.join(out, "*.tfrecord.gz"), FileSystems.join(out, F.MANIFEST),
                FileSystems.join(out, DEAD_LETTERS), FileSystems.join(out, F.VOCAB),
                FileSystems.join(out, F.EXTRACT_CONFIG)]
    found = []
    for result in FileSystems.match(patterns):
        found += [m.path for m in result.metadata_list]
    return sorted(found)


def _item_ranges(path: str, line_ends: list[int], per_range: int) -> list[tuple[str, int, int]]:
    """Byte ranges ``(path, start, end)`` of ``per_range`` whole lines each (``line_ends``: cumulative ends)."""
    ranges, start = [], 0
    for i in range(per_range - 1, len(line_ends) + per_range - 1, per_range):
        end = line_ends[min(i, len(line_ends) - 1)]
        ranges.append((path, start, end))
        start = end
    return ranges


def prepare_output(plan: JobPlan) -> None:
    """Creates ``out`` (refusing to mix with an earlier run unless ``overwrite``), writes the item file and
    splits it into byte ranges for :func:`karpalign.beam.transforms.ReadItems` (one CNN batch of lines each, at
    most :data:`MAX_ITEM_RANGES` ranges)."""
    out = plan.out
    existing = _existing_outputs(out)
    if existing:
        if not plan.config.extract.overwrite:
            raise ExtractError(f"{out} already holds outputs of an earlier run ({len(existing)} files, e.g. "
                               f"{existing[0]}); stale shards would be read together with new ones. Choose a "
                               "new folder or pass --overwrite")
        FileSystems.delete(existing)
    if not _is_url(out):
        os.makedirs(out, exist_ok=True)
        os.makedirs(plan.job_dir, exist_ok=True)
    line_ends, offset = [], 0
    with FileSystems.create(plan.items_path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for item in plan.items:
            line = (T.item_to_json(item) + "\n").encode("utf-8")
            f.write(line)
            offset += len(line)
            line_ends.append(offset)
    per_range = max(plan.config.extract.batch_size, -(-len(plan.items) // MAX_ITEM_RANGES))
    plan.item_ranges = _item_ranges(plan.items_path, line_ends, per_range)


# ---- the pipeline -------------------------------------------------------------------------------------------


def runner_drops_finish_bundle_outputs(runner) -> bool:
    """Whether ``runner`` (a PipelineRunner object) drops what ``DoFn.finish_bundle`` emits
    (:data:`DROPS_FINISH_BUNDLE_OUTPUTS`): then the job batches with a GroupByKey and runs the CNN inline."""
    return any(cls.__name__ in DROPS_FINISH_BUNDLE_OUTPUTS for cls in type(runner).__mro__)


def filesystem_plugins(plan: JobPlan, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """Modules the workers must import for the job's paths: the module of every non-Beam filesystem that
    handles ``image_root`` or ``out`` (a scheme registered by a plugin), plus ``extra`` (``--beam_plugins``)."""
    found = [name.strip() for entry in extra for name in entry.split(",") if name.strip()]  # "a,b" or repeated
    for path in (plan.config.data.image_root, plan.out):
        if _is_url(path):
            module = type(FileSystems.get_filesystem(path)).__module__
            if not module.startswith("apache_beam.") and module not in found:
                found.append(module)
    return tuple(found)


def build_pipeline(p: beam.Pipeline, plan: JobPlan, plugins: Sequence[str] | None = None,
                   group_batches: bool | None = None) -> dict:
    """Adds the extraction steps to ``p``; returns the main PCollections (for tests and extensions):
    ``items``, ``encoded`` ((split, example bytes)), ``dead_letters``, ``shards``, ``counts`` and ``outputs``
    (every file written; the last step, so a runner that runs only the graph behind its last step runs all).

    ``plugins``: filesystem plugin modules every I/O step imports (default :func:`filesystem_plugins`).
    ``group_batches``: batch with a GroupByKey and run the CNN inline (default: when ``p``'s runner drops
    ``finish_bundle`` outputs).
    """
    c = plan.config.extract
    if not plan.item_ranges:
        raise ExtractError("build_pipeline needs the item file: call prepare_output(plan) first")
    plugins = filesystem_plugins(plan) if plugins is None else tuple(plugins)
    if group_batches is None:
        group_batches = runner_drops_finish_bundle_outputs(p.runner)
    in_flight = 0 if group_batches else c.cnn_in_flight
    if group_batches and (c.cnn_in_flight or (c.min_batch_size and c.min_batch_size < c.batch_size)):
        _log.info("karpalign-extract: %s drops what finish_bundle emits: batches of %d images by a GroupByKey, "
                  "CNN inline (extract.cnn_in_flight and extract.min_batch_size do not apply)",
                  type(p.runner).__name__, c.batch_size)
    # One backbone and one proposer per worker process, shared by its DoFn threads (one handle each: a Shared
    # handle caches one object, and a second tag on it would rebuild the first object).
    backbones, proposers = shared.Shared(), shared.Shared()
    items = p | "ReadRecords" >> T.ReadItems(plan.item_ranges, plugins)
    images, dead_read = items | "ReadImageBytes" >> T.ReadImageBytes(plugins)
    decoded, dead_decode = images | "DecodeImages" >> T.DecodeImages(c.max_image_pixels, c.progress_every)
    proposed, dead_propose = decoded | "ProposeRegions" >> T.ProposeRegions(proposers, plan.proposer)
    featurized, dead_features = proposed | "ExtractFeatures" >> T.ExtractFeatures(
        backbones, plan.cnn_spec, plan.crop_size, c.min_batch_size or c.batch_size, c.batch_size, in_flight,
        group_batches)
    encoded, dead_encode = featurized | "EncodeExamples" >> T.EncodeExamples()
    shards = encoded | "WriteSplits" >> T.WriteSplits(plan.out, plan.splits, c.shards_per_split, plan.tmp_dir,
                                                      plugins)
    dead = ((dead_read, dead_decode, dead_propose, dead_features, dead_encode)
            | "FlattenDeadLetters" >> beam.Flatten())
    dead_file = dead | "WriteDeadLetters" >> T.WriteDeadLetters(plan.dead_letters_path, plan.tmp_dir, plugins)
    counts = (items, encoded, dead) | "CountOutcomes" >> T.CountOutcomes(plan.counts_path, plan.tmp_dir, plugins)
    outputs = (shards, dead_file, counts) | "OutputFiles" >> beam.Flatten()
    return {"items": items, "encoded": encoded, "dead_letters": dead, "shards": shards, "counts": counts,
            "outputs": outputs}


def query_counters(result) -> dict:
    """The runner's ``karpalign.extract`` counters: committed values where reported, else attempted."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(T.NAMESPACE))["counters"]
    except Exception as exc:  # some runners do not implement metrics queries
        _log.warning("karpalign-extract: the runner reports no metrics (%s); relying on the count file", exc)
        return {}
    out = {}
    for c in found:
        try:
            value = c.committed
        except Exception:  # committed metrics unsupported by this runner
            value = None
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value if value is not None else c.attempted)
    return out


def read_counts(path: str) -> tuple[int, dict, dict]:
    """``_job/counts.jsonl`` -> (input, {split: written}, {stage: failed})."""
    n_input, written, failed = 0, {}, {}
    with FileSystems.open(path) as f:
        for lineno, line in enumerate(f.read().decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                key, count = obj["key"], int(obj["count"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ExtractError(f"{path}:{lineno}: bad count line {line!r} ({exc})") from None
            kind, _, name = key.partition("/")
            if kind == "input":
                n_input += count
            elif kind == "written":
                written[name] = written.get(name, 0) + count
            elif kind == "failed":
                failed[name] = failed.get(name, 0) + count
            else:
                raise ExtractError(f"{path}:{lineno}: unknown count key {key!r}")
    return n_input, written, failed


def _publish(local_path: str, dest: str) -> None:
    """Uploads a file written locally to ``dest`` (a Beam filesystem path), replacing it. (Not
    ``FileSystems.copy``: it hands both paths to the source's filesystem, which for a local source writes
    ``gs://...`` as a local path.)"""
    with open(local_path, "rb") as src:
        with FileSystems.create(dest, compression_type=CompressionTypes.UNCOMPRESSED) as dst:
            shutil.copyfileobj(src, dst)


def _write_side_files(plan: JobPlan, manifest: F.Manifest, folder: str) -> str:
    """vocab.txt, manifest.json and the job's resolved config (``extract.yaml``: ``karpalign-extract --config``
    repeats the run) in a local folder; returns the manifest's path."""
    plan.vocab.save(os.path.join(folder, F.VOCAB))
    save_config(plan.config, folder, F.EXTRACT_CONFIG, sections=("data", "extract"))
    return manifest.write(folder)


def finalize(plan: JobPlan, counters: dict) -> ExtractResult:
    """Checks ``input == written + failed``, writes ``vocab.txt`` and ``manifest.json``, removes ``_job/``."""
    from karpalign.vision.proposers import proposer_name

    c, d, out = plan.config.extract, plan.config.data, plan.out
    n_input, written, failed = read_counts(plan.counts_path)
    n_written, n_failed = sum(written.values()), sum(failed.values())
    if n_input != len(plan.items):
        raise ExtractError(f"the pipeline read {n_input} images from {plan.items_path}, the launcher wrote "
                           f"{len(plan.items)}: images were lost before extraction")
    if n_input != n_written + n_failed:
        raise ExtractError(f"counts do not add up: input {n_input} != written {n_written} + failed {n_failed} "
                           f"(see {plan.counts_path}); not writing a manifest")
    manifest = F.Manifest(
        feature_dim=plan.feature_dim,
        num_regions=c.regions + 1,
        counts={split: written.get(split, 0) for split in plan.splits},
        proposer=F.ProposerInfo.from_spec(c.proposer, c.regions, proposer_name(
            c.proposer, c.regions, c.detector_score_threshold, c.detector_iou_threshold)),
        cnn=plan.cnn_spec.split("|")[0],
        cnn_spec=plan.cnn_spec,
        crop_size=plan.crop_size,
        vocab_size=len(plan.vocab),
        input_records=n_input,
        written=n_written,
        failed=n_failed,
        failures_by_stage={stage: failed[stage] for stage in STAGES if failed.get(stage)},
        dead_letters=DEAD_LETTERS,
        extra={
            "dataset": os.path.abspath(d.dataset),
            "image_root": d.image_root or None,
            "min_word_count": d.min_word_count,
            "fold_restval": d.fold_restval,
            "vocab": F.VOCAB,
            "max_image_pixels": c.max_image_pixels,
            "shards_per_split": c.shards_per_split,
            "empty_captions_dropped": plan.read_report.empty_captions,
        })
    side_files = (F.VOCAB, F.MANIFEST, F.EXTRACT_CONFIG)
    if _is_url(out):
        with tempfile.TemporaryDirectory() as tmp:
            _write_side_files(plan, manifest, tmp)
            for name in side_files:
                _publish(os.path.join(tmp, name), FileSystems.join(out, name))
        manifest_path = FileSystems.join(out, F.MANIFEST)
    else:
        manifest_path = _write_side_files(plan, manifest, out)
        manifest = F.read_manifest(out)
    # An object store deletes a "folder" only as a prefix ending in "/" (gs://b/out/_job alone names no object).
    FileSystems.delete([plan.job_dir + "/" if _is_url(out) else plan.job_dir])
    return ExtractResult(manifest=manifest, manifest_path=manifest_path, counters=counters)


def _runner(options: PipelineOptions):
    """(runner object or None, its name for the log) for ``beam.Pipeline``.

    A ``--runner`` in the Beam arguments is used as given (None: Beam builds it from the options). Without
    one, the job runs on Beam's local batch runner, the ``FnApiRunner``, chosen here explicitly: Beam's default
    ``DirectRunner`` first tries the Prism runner, which downloads a binary from GitHub on first use (and logs
    a failed download and a fallback offline), and then falls back to this same ``FnApiRunner``. The
    ``--direct_num_workers`` / ``--direct_running_mode`` options apply to it as to the ``DirectRunner``, and
    the options are handed to its workers the way the ``DirectRunner`` does. Given ``--environment_type`` (e.g.
    ``EXTERNAL`` with ``--environment_config HOST:PORT`` of a Beam worker pool), its SDK workers run the
    Python steps -- ``--direct_num_workers`` of them (Beam's ``FnApiRunner`` otherwise ignores the option and
    runs everything in this process; the ``PortableRunner`` with ``--job_endpoint embed`` starts one worker).
    """
    name = options.view_as(StandardOptions).runner
    if name == "DaskRunner":  # Beam's short names do not include it
        name = DASK_RUNNER
    if name == DASK_RUNNER:
        try:
            from apache_beam.runners.dask.dask_runner import DaskRunner
        except (ImportError, AttributeError) as exc:  # AttributeError: its module without dask.distributed
            raise ExtractError(f"--runner DaskRunner needs dask and distributed ({type(exc).__name__}: {exc}); "
                               "pip install 'apache-beam[dask]==2.77.*'") from None
        return DaskRunner(), "DaskRunner"
    if name:
        return None, name
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    from apache_beam.transforms import environments

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    portable = options.view_as(PortableOptions)
    if not portable.environment_type:
        return fn_runner.FnApiRunner(provision_info=provision), "FnApiRunner (local)"
    environment = environments.Environment.from_options(portable)
    return (fn_runner.FnApiRunner(provision_info=provision, default_environment=environment),
            f"FnApiRunner with {portable.environment_type} SDK workers ({portable.environment_config or ''})")


DASK_PARTITIONS_PER_THREAD = 2


def _dask_threads(address: str | None) -> int:
    """Worker threads of the dask.distributed cluster at ``address`` (None: the local cluster the DaskRunner
    starts, one worker per core)."""
    if not address:
        return os.cpu_count() or 1
    from distributed import Client

    with Client(address, timeout=60) as client:
        return sum(int(w["nthreads"]) for w in client.scheduler_info()["workers"].values()) or 1


def _dask_options(pipeline_args: Sequence[str], plan: JobPlan, options: PipelineOptions) -> PipelineOptions:
    """The DaskRunner keeps the partitions of its first ``Create`` for the whole job (its ``Reshuffle`` is a
    no-op) and puts up to 128 elements in one, so by default one worker would do everything; every partition
    costs a task per step. Unless ``--dask_npartitions`` or ``--dask_partition_size`` is given, the job asks the
    scheduler for its worker threads and makes :data:`DASK_PARTITIONS_PER_THREAD` partitions per thread (at
    most one per item range)."""
    args = list(pipeline_args)
    if any(a.split("=")[0] in ("--dask_npartitions", "--dask_partition_size") for a in args):
        return PipelineOptions(args)
    from apache_beam.runners.dask.dask_runner import DaskOptions

    threads = _dask_threads(options.view_as(DaskOptions).address)
    partitions = max(1, min(len(plan.item_ranges), DASK_PARTITIONS_PER_THREAD * threads))
    _log.info("karpalign-extract: %d Dask worker threads: --dask_npartitions=%d", threads, partitions)
    return PipelineOptions(args + [f"--dask_npartitions={partitions}"])


def run_extract(config: Config, pipeline_args: Sequence[str] = ()) -> ExtractResult:
    """Plans, runs the pipeline with the given Beam options (runner, project, ...), and finalizes.

    Raises :class:`ExtractError` for configuration problems and broken invariants, and
    :class:`karpalign.data.records.DatasetError` for malformed datasets. A high failure fraction is not an
    exception: check ``result.acceptable(config.extract.max_failure_fraction)``.
    """
    plan = plan_job(config)
    if not plan.items:
        raise ExtractError(f"{config.data.dataset} has no images in the chosen splits {list(plan.splits)}")
    options = PipelineOptions(list(pipeline_args))
    runner, runner_name = _runner(options)
    try:
        p = beam.Pipeline(runner=runner, options=options)
    except ValueError as exc:  # an unknown --runner
        raise ExtractError(f"--runner {runner_name}: {exc}") from None
    prepare_output(plan)
    if runner_drops_finish_bundle_outputs(p.runner):
        p = beam.Pipeline(runner=p.runner, options=_dask_options(pipeline_args, plan, options))
    _log.info("karpalign-extract: %d images (%s) -> %s with %s, %s regions, runner %s", len(plan.items),
              ", ".join(plan.splits), plan.out, plan.cnn_spec, plan.proposer.tag, runner_name)
    build_pipeline(p, plan, filesystem_plugins(plan, options.view_as(SetupOptions).beam_plugins or ()))
    external = runner is not None and options.view_as(PortableOptions).environment_type
    # The FnApiRunner warns that --direct_num_workers needs a multi-process running mode; with an environment
    # of separate SDK workers (a worker pool) it does not.
    with (dropped_messages([logging.getLogger(_FN_RUNNER_LOGGER)], ["direct_running_mode should be"])
          if external else contextlib.nullcontext()):
        result = p.run()
    try:
        result.wait_until_finish()
    finally:
        client = getattr(result, "client", None)  # the DaskRunner's dask.distributed client, left open by Beam
        if client is not None and hasattr(client, "close"):
            client.close()
    return finalize(plan, query_counters(result))
