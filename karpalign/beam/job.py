"""The extraction job: plan it, build the Beam pipeline, run it, check the counts, write vocab and manifest.

Flow (every step labelled in the pipeline graph)::

    ReadRecords -> ReadImageBytes -> DecodeImages -> ProposeRegions -> ExtractFeatures -> EncodeExamples
        -> WriteSplits ({split}-SSSSS-of-NNNNN.tfrecord.gz)
    dead letters of every step -> WriteDeadLetters (dead_letters.jsonl)
    input / written / failed tallies -> CountOutcomes (_job/counts.jsonl)

The launcher (this module, in the submitting process) reads the caption dataset with
:func:`karpalign.data.records.read_dataset`, builds the vocabulary from the training split only, and hands the
images to the pipeline as a JSONL file in ``<out>/_job/`` (a file scales to any dataset size; a ``Create`` of
100k records would bloat the job graph past Dataflow's limit).

Counting choice: the manifest's numbers come from ``CountOutcomes``, an ordinary output file computed by the
pipeline itself, so they are exact on every runner (Direct, Dataflow, Flink, Spark). Beam counters are
queried too and reported alongside, but some runners report only attempted (not committed) values, so they
are informative, not authoritative. The job refuses to write a manifest unless
``input_records == written + failed``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.utils import shared

from karpalign.beam import transforms as T
from karpalign.beam.elements import STAGES, ImageItem
from karpalign.data import features as F
from karpalign.data.records import Record, ReadReport, by_split, iter_train_tokens, read_dataset
from karpalign.data.text import Vocabulary
from karpalign.vision.images import DEFAULT_MAX_PIXELS

DEAD_LETTERS = "dead_letters.jsonl"
JOB_DIR = "_job"
DEFAULT_CNN = "efficientnet_lite0"
_log = logging.getLogger(__name__)


class ExtractError(RuntimeError):
    """A configuration or consistency problem that stops the job; the message says what and where."""


@dataclasses.dataclass
class ExtractConfig:
    """Everything the job needs besides the Beam pipeline options.

    Attributes:
      dataset: Karpathy ``dataset.json``, COCO captions json or ``.jsonl`` (a local file).
      out: output folder (local or any Beam filesystem URL, e.g. ``gs://bucket/records``).
      image_root: folder the dataset's image paths are relative to (local or URL); default: the dataset's folder.
      cnn: backbone spec for :func:`karpalign.vision.backbones.get_backbone`.
      crop_size: side of the square region crops; default the backbone's input height.
      proposer: ``boxes`` (the dataset's own boxes), ``grid``, ``segments`` (Selective Search-style, no model;
        options as ``segments|scale=80|max_side=256``, see :class:`karpalign.vision.proposers.SegmentsProposer`)
        or ``detector:<SavedModel or hub handle>``.
      regions: K, boxes per image besides the full image (manifest ``num_regions`` = K + 1).
      min_word_count: training-split count a word needs to enter the vocabulary.
      fold_restval: COCO ``restval`` images count as ``train``.
      shards_per_split: TFRecord files per split.
      batch_size: images per CNN batch (upper bound of ``beam.BatchElements``).
      min_batch_size: lower bound of ``beam.BatchElements`` (default ``batch_size``: fixed batches).
      cnn_in_flight: batches the CNN may hold in a background thread while the worker prepares the next ones
        (reading, decoding, proposing) and encodes the previous ones; 0 runs the CNN inline, without overlap
        (needed with adaptive batches, ``min_batch_size < batch_size``).
      max_image_pixels: decompression-bomb limit, width * height.
      max_failure_fraction: the run counts as failed when failed / input exceeds this.
      splits: splits to extract (default: every split in the dataset).
      detector_score_threshold: for ``detector:`` proposers.
      detector_iou_threshold: NMS IoU threshold of ``detector:`` and ``segments`` proposers.
      progress_every: each worker logs a line per this many decoded images (0: never).
      overwrite: replace earlier outputs in ``out`` (otherwise existing shards/manifest are an error).
    """

    dataset: str
    out: str
    image_root: Optional[str] = None
    cnn: str = DEFAULT_CNN
    crop_size: Optional[int] = None
    proposer: str = "grid"
    regions: int = 19
    min_word_count: int = 5
    fold_restval: bool = False
    shards_per_split: int = 4
    batch_size: int = 16
    min_batch_size: Optional[int] = None
    cnn_in_flight: int = 1
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_failure_fraction: float = 0.05
    splits: Optional[Sequence[str]] = None
    detector_score_threshold: float = 0.3
    detector_iou_threshold: float = 0.5
    progress_every: int = 100
    overwrite: bool = False

    def validate(self) -> None:
        def positive(name, value, lo=1):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ExtractError(f"{name} must be an integer >= {lo}, got {value!r}")

        positive("regions (K)", self.regions, 0)
        positive("min_word_count", self.min_word_count)
        positive("shards_per_split", self.shards_per_split)
        positive("batch_size", self.batch_size)
        positive("cnn_in_flight", self.cnn_in_flight, 0)
        positive("max_image_pixels", self.max_image_pixels)
        positive("progress_every", self.progress_every, 0)
        if self.crop_size is not None:
            positive("crop_size", self.crop_size, 8)
        if self.min_batch_size is not None:
            positive("min_batch_size", self.min_batch_size)
            if self.min_batch_size > self.batch_size:
                raise ExtractError(f"min_batch_size {self.min_batch_size} exceeds batch_size {self.batch_size}")
            if self.min_batch_size < self.batch_size and self.cnn_in_flight > 0:
                raise ExtractError(
                    f"adaptive batches (min_batch_size {self.min_batch_size} < batch_size {self.batch_size}) need "
                    f"cnn_in_flight 0, got {self.cnn_in_flight}: Beam sizes the batches by timing each one, and "
                    "the CNN running in the background would be left out of that time")
        if not 0.0 <= self.max_failure_fraction <= 1.0:
            raise ExtractError(f"max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}")
        if self.proposer.startswith("detector:") and not self.proposer[len("detector:"):]:
            raise ExtractError("proposer 'detector:' needs a model path or hub handle after the colon")
        from karpalign.vision.proposers import proposer_name

        try:  # get_proposer's own checks (unknown spec, segments options) without loading a detector
            proposer_name(self.proposer, self.regions, self.detector_score_threshold, self.detector_iou_threshold)
        except ValueError as exc:
            raise ExtractError(str(exc)) from exc


@dataclasses.dataclass
class JobPlan:
    """What the launcher decided before the pipeline runs (see :func:`plan_job`)."""

    config: ExtractConfig
    items: list[ImageItem]
    splits: tuple[str, ...]
    vocab: Vocabulary
    read_report: ReadReport
    cnn_spec: str
    crop_size: int
    feature_dim: int

    @property
    def job_dir(self) -> str:
        return FileSystems.join(self.config.out, JOB_DIR)

    @property
    def items_path(self) -> str:
        return FileSystems.join(self.job_dir, "items.jsonl")

    @property
    def counts_path(self) -> str:
        return FileSystems.join(self.job_dir, "counts.jsonl")

    @property
    def dead_letters_path(self) -> str:
        return FileSystems.join(self.config.out, DEAD_LETTERS)

    @property
    def proposer(self) -> T.ProposerSpec:
        c = self.config
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


def read_records(config: ExtractConfig, report: ReadReport) -> list[Record]:
    """Reads the dataset without checking image files (missing ones become "read" dead letters, counted).

    An image root that is a URL (``gs://...``) is applied after reading: the reader resolves paths against a
    local placeholder root (which also enforces that no path escapes the root), then the placeholder is
    swapped for the URL.
    """
    root = config.image_root
    if root is not None and _is_url(root):
        placeholder = os.path.join(os.sep, "karpalign-remote-image-root")
        records = read_dataset(config.dataset, placeholder, fold_restval=config.fold_restval,
                               check_images=False, report=report)
        for r in records:
            r.path = root.rstrip("/") + "/" + os.path.relpath(r.path, placeholder).replace(os.sep, "/")
        return records
    return read_dataset(config.dataset, root, fold_restval=config.fold_restval, check_images=False,
                        report=report)


def plan_job(config: ExtractConfig) -> JobPlan:
    """Validates the config, reads the dataset, builds the vocabulary (train split only), loads the backbone
    once to learn its feature dim and check the crop size, and lists the images to extract."""
    from karpalign.vision.backbones import get_backbone

    config.validate()
    report = ReadReport()
    records = read_records(config, report)
    groups = by_split(records)
    if not groups.get("train"):
        raise ExtractError(f"{config.dataset} has no 'train' images: the vocabulary is built from the training "
                           f"split only (splits present: {sorted(groups) or 'none'}"
                           + ("" if config.fold_restval else "; COCO 'restval' counts as train with --fold-restval")
                           + ")")
    vocab = Vocabulary.build(iter_train_tokens(records), min_count=config.min_word_count)

    splits = tuple(config.splits) if config.splits else tuple(sorted(groups))
    unknown = [s for s in splits if s not in groups]
    if unknown:
        raise ExtractError(f"{config.dataset} has no images in split(s) {unknown}; it has {sorted(groups)}")
    if len(set(splits)) != len(splits):
        raise ExtractError(f"splits {list(splits)} name a split twice")
    items = [ImageItem.from_record(r) for r in records if r.split in splits]

    try:
        backbone = get_backbone(config.cnn)
    except (ValueError, FileNotFoundError) as exc:
        raise ExtractError(f"cannot load the CNN {config.cnn!r}: {exc}") from exc
    crop = config.crop_size or backbone.input_size[0]
    if backbone.fixed_size and backbone.input_size != (crop, crop):
        raise ExtractError(f"CNN {backbone.name} only accepts {backbone.input_size} inputs; the crop size is "
                           f"{crop}x{crop} (choose --crop-size {backbone.input_size[0]} or a variable-size model)")
    if config.proposer.startswith("detector:"):
        model = config.proposer[len("detector:"):]
        if not _is_url(model) and not os.path.exists(model) and os.sep in model:
            raise ExtractError(f"detector model {model} does not exist")
    return JobPlan(config=config, items=items, splits=splits, vocab=vocab, read_report=report,
                   cnn_spec=backbone.name, crop_size=int(crop), feature_dim=int(backbone.feature_dim))


def _existing_outputs(out: str) -> list[str]:
    patterns = [FileSystems.join(out, "*.tfrecord.gz"), FileSystems.join(out, F.MANIFEST),
                FileSystems.join(out, DEAD_LETTERS), FileSystems.join(out, F.VOCAB)]
    found = []
    for result in FileSystems.match(patterns):
        found += [m.path for m in result.metadata_list]
    return sorted(found)


def prepare_output(plan: JobPlan) -> None:
    """Creates ``out`` (refusing to mix with an earlier run unless ``overwrite``) and writes the item file."""
    out = plan.config.out
    existing = _existing_outputs(out)
    if existing:
        if not plan.config.overwrite:
            raise ExtractError(f"{out} already holds outputs of an earlier run ({len(existing)} files, e.g. "
                               f"{existing[0]}); stale shards would be read together with new ones. Choose a "
                               "new folder or pass --overwrite")
        FileSystems.delete(existing)
    if not _is_url(out):
        os.makedirs(out, exist_ok=True)
        os.makedirs(plan.job_dir, exist_ok=True)
    with FileSystems.create(plan.items_path) as f:
        for item in plan.items:
            f.write((T.item_to_json(item) + "\n").encode("utf-8"))


# ---- the pipeline -------------------------------------------------------------------------------------------


def build_pipeline(p: beam.Pipeline, plan: JobPlan) -> dict:
    """Adds the extraction steps to ``p``; returns the main PCollections (for tests and extensions):
    ``items``, ``encoded`` ((split, example bytes)), ``dead_letters``, ``shards``, ``counts``."""
    c = plan.config
    models = shared.Shared()  # one backbone / proposer per worker process, shared by its DoFn threads
    items = p | "ReadRecords" >> T.ReadItems(plan.items_path)
    images, dead_read = items | "ReadImageBytes" >> T.ReadImageBytes()
    decoded, dead_decode = images | "DecodeImages" >> T.DecodeImages(c.max_image_pixels, c.progress_every)
    proposed, dead_propose = decoded | "ProposeRegions" >> T.ProposeRegions(models, plan.proposer)
    featurized, dead_features = proposed | "ExtractFeatures" >> T.ExtractFeatures(
        models, plan.cnn_spec, plan.crop_size, c.min_batch_size or c.batch_size, c.batch_size,
        c.cnn_in_flight)
    encoded, dead_encode = featurized | "EncodeExamples" >> T.EncodeExamples()
    shards = encoded | "WriteSplits" >> T.WriteSplits(c.out, plan.splits, c.shards_per_split)
    dead = ((dead_read, dead_decode, dead_propose, dead_features, dead_encode)
            | "FlattenDeadLetters" >> beam.Flatten())
    dead | "WriteDeadLetters" >> T.WriteDeadLetters(plan.dead_letters_path)
    counts = (items, encoded, dead) | "CountOutcomes" >> T.CountOutcomes(plan.counts_path)
    return {"items": items, "encoded": encoded, "dead_letters": dead, "shards": shards, "counts": counts}


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
    """Copies a file written locally to ``dest`` (a Beam filesystem path), replacing it."""
    if FileSystems.exists(dest):
        FileSystems.delete([dest])
    FileSystems.copy([local_path], [dest])


def finalize(plan: JobPlan, counters: dict) -> ExtractResult:
    """Checks ``input == written + failed``, writes ``vocab.txt`` and ``manifest.json``, removes ``_job/``."""
    from karpalign.vision.proposers import proposer_name

    c = plan.config
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
            "dataset": os.path.abspath(c.dataset),
            "image_root": c.image_root,
            "min_word_count": c.min_word_count,
            "fold_restval": c.fold_restval,
            "vocab": F.VOCAB,
            "max_image_pixels": c.max_image_pixels,
            "shards_per_split": c.shards_per_split,
            "empty_captions_dropped": plan.read_report.empty_captions,
        })
    if _is_url(c.out):
        with tempfile.TemporaryDirectory() as tmp:
            plan.vocab.save(os.path.join(tmp, F.VOCAB))
            manifest.write(tmp)
            _publish(os.path.join(tmp, F.VOCAB), FileSystems.join(c.out, F.VOCAB))
            _publish(os.path.join(tmp, F.MANIFEST), FileSystems.join(c.out, F.MANIFEST))
        manifest_path = FileSystems.join(c.out, F.MANIFEST)
    else:
        plan.vocab.save(os.path.join(c.out, F.VOCAB))
        manifest_path = manifest.write(c.out)
        manifest = F.read_manifest(c.out)
    FileSystems.delete([plan.job_dir])
    return ExtractResult(manifest=manifest, manifest_path=manifest_path, counters=counters)


def _runner(options: PipelineOptions):
    """(runner object or None, its name for the log) for ``beam.Pipeline``.

    A ``--runner`` in the Beam arguments is used as given (None: Beam builds it from the options). Without
    one, the job runs on Beam's local batch runner, the ``FnApiRunner``, chosen here explicitly: Beam's default
    ``DirectRunner`` first tries the Prism runner, which downloads a binary from GitHub on first use (and logs
    a failed download and a fallback offline), and then falls back to this same ``FnApiRunner``. The
    ``--direct_num_workers`` / ``--direct_running_mode`` options apply to it as to the ``DirectRunner``, and
    the options are handed to its workers the way the ``DirectRunner`` does.
    """
    name = options.view_as(StandardOptions).runner
    if name:
        return None, name
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=provision), "FnApiRunner (local)"


def run_extract(config: ExtractConfig, pipeline_args: Sequence[str] = ()) -> ExtractResult:
    """Plans, runs the pipeline with the given Beam options (runner, project, ...), and finalizes.

    Raises :class:`ExtractError` for configuration problems and broken invariants, and
    :class:`karpalign.data.records.DatasetError` for malformed datasets. A high failure fraction is not an
    exception: check ``result.acceptable(config.max_failure_fraction)``.
    """
    plan = plan_job(config)
    if not plan.items:
        raise ExtractError(f"{config.dataset} has no images in the chosen splits {list(plan.splits)}")
    prepare_output(plan)
    options = PipelineOptions(list(pipeline_args))
    runner, runner_name = _runner(options)
    _log.info("karpalign-extract: %d images (%s) -> %s with %s, %s regions, runner %s", len(plan.items),
              ", ".join(plan.splits), config.out, plan.cnn_spec, plan.proposer.tag, runner_name)
    p = beam.Pipeline(runner=runner, options=options)
    build_pipeline(p, plan)
    result = p.run()
    result.wait_until_finish()
    return finalize(plan, query_counters(result))
