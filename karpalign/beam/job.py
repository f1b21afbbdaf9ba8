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
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.utils import shared

from karpalign.beam import transforms as T
from karpalign.config import Config, save_config
from karpalign.beam.elements import STAGES, ImageItem
from karpalign.data import features as F
from karpalign.data.records import Record, ReadReport, by_split, iter_train_tokens, read_dataset
from karpalign.data.text import Vocabulary

DEAD_LETTERS = "dead_letters.jsonl"
JOB_DIR = "_job"
_log = logging.getLogger(__name__)


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


def read_records(config: Config, report: ReadReport) -> list[Record]:
    """Reads the dataset without checking image files (missing ones become "read" dead letters, counted).

    An image root that is a URL (``gs://...``) is applied after reading: the reader resolves paths against a
    local placeholder root (which also enforces that no path escapes the root), then the placeholder is
    swapped for the URL.
    """
    d = config.data
    root = d.image_root or None
    if root is not None and _is_url(root):
        placeholder = os.path.join(os.sep, "karpalign-remote-image-root")
        records = read_dataset(d.dataset, placeholder, fold_restval=d.fold_restval,
                               check_images=False, report=report)
        for r in records:
            r.path = root.rstrip("/") + "/" + os.path.relpath(r.path, placeholder).replace(os.sep, "/")
        return records
    return read_dataset(d.dataset, root, fold_restval=d.fold_restval, check_images=False, report=report)


def plan_job(config: Config) -> JobPlan:
    """Validates the config, reads the dataset, builds the vocabulary (train split only), loads the backbone
    once to learn its feature dim and check the crop size, and lists the images to extract."""
    from karpalign.vision.backbones import get_backbone

    validate_config(config)
    d, e = config.data, config.extract
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
    items = [ImageItem.from_record(r) for r in records if r.split in splits]

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


def prepare_output(plan: JobPlan) -> None:
    """Creates ``out`` (refusing to mix with an earlier run unless ``overwrite``) and writes the item file."""
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
    with FileSystems.create(plan.items_path) as f:
        for item in plan.items:
            f.write((T.item_to_json(item) + "\n").encode("utf-8"))


# ---- the pipeline -------------------------------------------------------------------------------------------


def build_pipeline(p: beam.Pipeline, plan: JobPlan) -> dict:
    """Adds the extraction steps to ``p``; returns the main PCollections (for tests and extensions):
    ``items``, ``encoded`` ((split, example bytes)), ``dead_letters``, ``shards``, ``counts``."""
    c = plan.config.extract
    models = shared.Shared()  # one backbone / proposer per worker process, shared by its DoFn threads
    items = p | "ReadRecords" >> T.ReadItems(plan.items_path)
    images, dead_read = items | "ReadImageBytes" >> T.ReadImageBytes()
    decoded, dead_decode = images | "DecodeImages" >> T.DecodeImages(c.max_image_pixels, c.progress_every)
    proposed, dead_propose = decoded | "ProposeRegions" >> T.ProposeRegions(models, plan.proposer)
    featurized, dead_features = proposed | "ExtractFeatures" >> T.ExtractFeatures(
        models, plan.cnn_spec, plan.crop_size, c.min_batch_size or c.batch_size, c.batch_size,
        c.cnn_in_flight)
    encoded, dead_encode = featurized | "EncodeExamples" >> T.EncodeExamples()
    shards = encoded | "WriteSplits" >> T.WriteSplits(plan.out, plan.splits, c.shards_per_split)
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


def run_extract(config: Config, pipeline_args: Sequence[str] = ()) -> ExtractResult:
    """Plans, runs the pipeline with the given Beam options (runner, project, ...), and finalizes.

    Raises :class:`ExtractError` for configuration problems and broken invariants, and
    :class:`karpalign.data.records.DatasetError` for malformed datasets. A high failure fraction is not an
    exception: check ``result.acceptable(config.extract.max_failure_fraction)``.
    """
    plan = plan_job(config)
    if not plan.items:
        raise ExtractError(f"{config.data.dataset} has no images in the chosen splits {list(plan.splits)}")
    prepare_output(plan)
    options = PipelineOptions(list(pipeline_args))
    runner, runner_name = _runner(options)
    _log.info("karpalign-extract: %d images (%s) -> %s with %s, %s regions, runner %s", len(plan.items),
              ", ".join(plan.splits), plan.out, plan.cnn_spec, plan.proposer.tag, runner_name)
    p = beam.Pipeline(runner=runner, options=options)
    build_pipeline(p, plan)
    result = p.run()
    result.wait_until_finish()
    return finalize(plan, query_counters(result))
