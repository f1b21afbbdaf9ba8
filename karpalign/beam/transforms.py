"""The extraction steps: DoFns and the small labelled composites that wire them.

Each composite takes a ``PCollection[ImageItem]`` and returns ``(good, dead)``: the items that made it through
and the :class:`DeadLetter` s of those that did not. A DoFn yields both on its one output and two plain filters
split them (:func:`_split`): tagged side outputs are not routed to their consumers by every runner (Beam 2.77's
DaskRunner gives each consumer all of them). Heavy objects -- the CNN backbone and the region proposer -- are
built once per worker process in ``DoFn.setup`` through an ``apache_beam.utils.shared.Shared`` handle (one
handle each), so all DoFn instances (threads) of a worker share one copy. Every DoFn counts its work with Beam
counters in the ``karpalign.extract`` namespace.

The CNN runs on batches, their region crops concatenated so the backbone sees them in one call. On runners that
keep what ``finish_bundle`` emits, ``beam.BatchElements`` forms them; on a runner that drops it (the
DaskRunner) a ``GroupByKey`` on the launcher's item number does, so no batch is ever emitted at bundle end.

Every file -- the item list, the images, the shards, ``dead_letters.jsonl``, the count file -- is read and
written through ``apache_beam.io.filesystems``: local paths, ``gs://``, ``s3://``, ``hdfs://`` or any scheme
registered as a Beam ``FileSystem``. The output files are written by the job's own small writers (group by
destination file, write a temporary file, rename it into place): Beam's ``WriteToText`` / ``WriteToTFRecord``
need side inputs and emit from ``finish_bundle``, which the DaskRunner does not support. Filesystem plugins
(modules that register a scheme) are imported by every I/O step's ``setup``, so they reach workers that are
started without Beam's ``sdk_worker_main`` (the Python worker pool, Dask workers) too.

Decoding, cropping, the pixel mapping and the CNN are the functions of :mod:`karpalign.vision.region_features`
that the serving graph runs as well (the job runs them in separate steps to overlap them), so an image gives
the same features here and through ``serving_default``; an image the serving graph refuses (CMYK JPEG, TIFF,
...) is a "decode" dead letter with the same reason.
"""

import collections
import concurrent.futures
import dataclasses
import importlib
import logging
import os
import uuid
import zlib
from typing import Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection
from apache_beam.utils.windowed_value import WindowedValue

from karpalign.beam.elements import (STAGE_DECODE, STAGE_ENCODE, STAGE_FEATURES, STAGE_PATH, STAGE_PROPOSE,
                                     STAGE_READ, DeadLetter, ImageItem, is_dead_letter, is_result)

NAMESPACE = "karpalign.extract"
_log = logging.getLogger(__name__)


def _dead(item: ImageItem, stage: str, reason: str, counter) -> DeadLetter:
    counter.inc()
    return DeadLetter.of(item, stage, reason)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# kind ("backbone", "proposer") -> the last model this process acquired. A Shared handle keeps only a weak
# reference plus the one object acquired last in the process, whatever its handle; runners that build a fresh
# DoFn instance for every bundle (the DaskRunner: one per partition) would otherwise load the CNN again and
# again whenever a proposer was acquired in between. One model of each kind stays, as on a runner that reuses
# DoFn instances.
_KEPT: dict = {}


def _acquire(shared_handle, constructor, tag: str, kind: str):
    model = shared_handle.acquire(constructor, tag=tag)
    _KEPT[kind] = model
    return model


def _split(outcomes: PCollection):
    """One step's output (results and dead letters) -> (results, dead letters), by two plain filters."""
    return (outcomes | "Results" >> beam.Filter(is_result),
            outcomes | "DeadLetters" >> beam.Filter(is_dead_letter))


# ---- filesystem plugins -------------------------------------------------------------------------------------


def import_plugins(plugins: Sequence[str]) -> None:
    """Imports modules (or ``module.Class`` paths, as ``--beam_plugins`` lists them) that register Beam
    filesystems; an error names the plugin, so a worker without it fails with a clear message."""
    for plugin in plugins:
        try:
            importlib.import_module(plugin)
        except ImportError as exc:
            module = plugin.rpartition(".")[0]
            try:
                if not module:
                    raise
                importlib.import_module(module)
            except ImportError:
                raise ImportError(f"karpalign-extract: cannot import the filesystem plugin {plugin!r} on this "
                                  f"worker ({exc}); install it where the workers run") from exc


class _FilesDoFn(beam.DoFn):
    """A step that reads or writes files: imports the filesystem plugins first, on whichever worker it runs."""

    def __init__(self, plugins: Sequence[str] = ()):
        self.plugins = tuple(plugins)

    def setup(self):
        import_plugins(self.plugins)


# ---- read ---------------------------------------------------------------------------------------------------


class ReadImageBytesFn(_FilesDoFn):
    """Item -> item with the file's bytes, through Beam's FileSystems (local paths, gs://, s3://, hdfs://); an
    item whose path the dataset reader refused becomes a "path" dead letter without touching storage."""

    def __init__(self, plugins: Sequence[str] = ()):
        super().__init__(plugins)
        self.images_read = Metrics.counter(NAMESPACE, "images_read")
        self.bytes_read = Metrics.counter(NAMESPACE, "bytes_read")
        self.failed = Metrics.counter(NAMESPACE, f"failed_{STAGE_READ}")
        self.refused = Metrics.counter(NAMESPACE, f"failed_{STAGE_PATH}")

    def process(self, item: ImageItem) -> Iterable:
        if item.path_error:
            yield _dead(item, STAGE_PATH, item.path_error, self.refused)
            return
        try:
            # UNCOMPRESSED: an image named *.gz is still raw bytes, never inflated behind our back.
            with FileSystems.open(item.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                data = f.read()
        except Exception as exc:  # missing file, directory, permissions, network: all mean "cannot read"
            yield _dead(item, STAGE_READ, f"cannot read {item.path} ({_describe(exc)})", self.failed)
            return
        self.images_read.inc()
        self.bytes_read.inc(len(data))
        yield dataclasses.replace(item, data=data)


@beam.ptransform_fn
def ReadImageBytes(items: PCollection[ImageItem], plugins: Sequence[str] = ()):
    """Reads every item's image file -> (items with ``data``, dead letters of stage "path" or "read")."""
    return _split(items | "Read" >> beam.ParDo(ReadImageBytesFn(plugins)))


# ---- decode -------------------------------------------------------------------------------------------------


class DecodeImageFn(beam.DoFn):
    """Bytes -> RGB uint8 pixels with :func:`karpalign.vision.region_features.decode_image_array`: Pillow checks
    the header (format, pixel limit), the serving graph's TensorFlow decoder decodes."""

    def __init__(self, max_pixels: int, progress_every: int = 0):
        self.max_pixels = int(max_pixels)
        self.progress_every = int(progress_every)
        self.decoded = Metrics.counter(NAMESPACE, "decoded")
        self.failed = {stage: Metrics.counter(NAMESPACE, f"failed_{stage}") for stage in ("decode", "bomb")}
        self._seen = 0

    def process(self, item: ImageItem) -> Iterable:
        from karpalign.vision.images import ImageDecodeError
        from karpalign.vision.region_features import decode_image_array

        try:
            image = decode_image_array(item.data, max_pixels=self.max_pixels, source=item.path)  # (H, W, 3) uint8
        except ImageDecodeError as exc:
            yield _dead(item, exc.stage, exc.reason, self.failed[exc.stage])
            return
        except Exception as exc:  # decode_image_array promises ImageDecodeError; anything else is still recorded
            yield _dead(item, STAGE_DECODE, f"unexpected decoder error ({_describe(exc)})", self.failed["decode"])
            return
        self.decoded.inc()
        self._seen += 1
        if self.progress_every and self._seen % self.progress_every == 0:
            _log.info("karpalign-extract: %d images decoded by worker process %d", self._seen, os.getpid())
        yield dataclasses.replace(item, data=None, image=image)


@beam.ptransform_fn
def DecodeImages(images: PCollection[ImageItem], max_pixels: int, progress_every: int = 0):
    """Decodes every image -> (items with ``image``, dead letters of stage "decode" or "bomb")."""
    return _split(images | "Decode" >> beam.ParDo(DecodeImageFn(max_pixels, progress_every)))


# ---- propose ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProposerSpec:
    """What :func:`karpalign.vision.proposers.get_proposer` needs; also the Shared cache tag."""

    spec: str
    k: int
    score_threshold: float = 0.3
    iou_threshold: float = 0.5

    def build(self):
        from karpalign.vision.proposers import get_proposer

        return get_proposer(self.spec, self.k, self.score_threshold, self.iou_threshold)

    @property
    def tag(self) -> str:
        return f"proposer:{self.spec}|k={self.k}|score={self.score_threshold}|iou={self.iou_threshold}"


class ProposeRegionsFn(beam.DoFn):
    """Pixels (+ the dataset's boxes) -> (R, 4) regions, full image first, R <= K + 1."""

    def __init__(self, shared_handle, proposer: ProposerSpec):
        self._shared = shared_handle
        self.proposer_spec = proposer
        self.regions = Metrics.counter(NAMESPACE, "regions")
        self.failed = Metrics.counter(NAMESPACE, f"failed_{STAGE_PROPOSE}")
        self._proposer = None

    def setup(self):
        self._proposer = _acquire(self._shared, self.proposer_spec.build, self.proposer_spec.tag, "proposer")

    def process(self, item: ImageItem) -> Iterable:
        try:
            regions = self._proposer.propose(item.image, boxes=item.boxes, source=item.path)  # (R, 4)
        except Exception as exc:  # bad or missing boxes, detector failure
            yield _dead(item, STAGE_PROPOSE, _describe(exc), self.failed)
            return
        self.regions.inc(len(regions))
        yield dataclasses.replace(item, regions=np.asarray(regions, np.float32))


PROPOSE_BATCH = 16  # images per call of a proposer that runs a network on many at once (learned:)


class ProposeBatchesFn(ProposeRegionsFn):
    """A batch of items -> what :class:`ProposeRegionsFn` gives for each, from ONE ``propose_batch`` call. When
    the batched call fails, every image is proposed alone, so only the culprit becomes a dead letter."""

    def process(self, batch: list) -> Iterable:
        try:
            proposals = self._proposer.propose_batch([item.image for item in batch], [item.path for item in batch])
        except Exception:  # e.g. one empty image: find it
            for item in batch:
                yield from super().process(item)
            return
        for item, regions in zip(batch, proposals):
            self.regions.inc(len(regions))
            yield dataclasses.replace(item, regions=np.asarray(regions, np.float32))


@beam.ptransform_fn
def ProposeRegions(decoded: PCollection[ImageItem], shared_handle, proposer: ProposerSpec):
    """Proposes regions for every image -> (items with ``regions``, dead letters of stage "propose").

    A learned proposer (``learned:``, a network) gets batches of up to :data:`PROPOSE_BATCH` images
    (``beam.BatchElements``), except on runners that drop what ``finish_bundle`` emits (then one at a time).
    """
    if proposer.spec.startswith("learned:"):
        from karpalign.beam.job import runner_drops_finish_bundle_outputs

        if not runner_drops_finish_bundle_outputs(decoded.pipeline.runner):
            batches = decoded | "ProposeBatch" >> beam.BatchElements(min_batch_size=1, max_batch_size=PROPOSE_BATCH)
            return _split(batches | "Propose" >> beam.ParDo(ProposeBatchesFn(shared_handle, proposer)))
    return _split(decoded | "Propose" >> beam.ParDo(ProposeRegionsFn(shared_handle, proposer)))


# ---- CNN features -------------------------------------------------------------------------------------------


class ExtractFeaturesFn(beam.DoFn):
    """A batch of items -> items with (R, D) region features; ONE backbone call for all crops of the batch.

    Each image's regions are cropped in one batched ``crop_and_resize`` (:func:`crop_regions`); the crops of
    all images are concatenated, preprocessed once (the backbone's pixel mapping) and run through the backbone
    once (in chunks of at most 32), then split back -- the serving graph's functions
    (:mod:`karpalign.vision.region_features`). If
    that call fails, the images are retried one by one so only the culprit becomes a dead letter.

    **Overlap.** The CNN runs in a background thread of the worker (TensorFlow releases the GIL while it
    computes), so while batch k is in the network this thread goes on reading, decoding, proposing and cropping
    the images of batch k + 1 and encoding the results of batch k - 1. ``in_flight`` batches may be
    waiting for or in the network at once (0: run inline, no thread); each holds its crops (the decoded
    images are dropped once cropped). Results keep their batch's window, timestamp and pane and leave in
    input order; whatever is still in flight is emitted at the end of the bundle, so a runner that drops what
    ``finish_bundle`` emits needs ``in_flight`` 0 (every batch leaves the call that brought it).
    """

    def __init__(self, shared_handle, cnn_spec: str, crop_size: int, in_flight: int = 1):
        self._shared = shared_handle
        self.cnn_spec = cnn_spec
        self.crop_size = int(crop_size)
        self.in_flight = int(in_flight)
        self.batches = Metrics.counter(NAMESPACE, "feature_batches")
        self.featurized = Metrics.counter(NAMESPACE, "featurized")
        self.failed = Metrics.counter(NAMESPACE, f"failed_{STAGE_FEATURES}")
        self._backbone = None
        self._executor = None
        self._pending: collections.deque = collections.deque()

    def setup(self):
        # The attribute keeps the model alive for this instance (and _KEPT for the process: see _acquire).
        self._backbone = _acquire(self._shared, self._load, f"backbone:{self.cnn_spec}", "backbone")
        if self.in_flight > 0:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                                   thread_name_prefix="karpalign-cnn")

    def _load(self):
        from karpalign.vision.backbones import get_backbone

        return get_backbone(self.cnn_spec)

    def _run(self, crops: np.ndarray) -> np.ndarray:
        size = (self.crop_size, self.crop_size)
        return self._backbone(self._backbone.preprocess(crops, size=size))  # (N, D)

    def _crop(self, batch: list[ImageItem]) -> tuple[list, list]:
        """Every item's crops (None when they cannot be taken) and its result so far: ``(item, None, reason)``."""
        from karpalign.vision.proposers import crop_regions

        crops: list[Optional[np.ndarray]] = []
        results: list[tuple[ImageItem, Optional[np.ndarray], str]] = []
        for item in batch:
            try:
                crops.append(crop_regions(item.image, item.regions, self.crop_size))  # (R_i, S, S, 3)
                reason = ""
            except Exception as exc:
                crops.append(None)
                reason = f"cannot crop regions ({_describe(exc)})"
            results.append((dataclasses.replace(item, image=None), None, reason))  # pixels not needed any more
        return crops, results

    def _network(self, crops: list, results: list) -> tuple[bool, list]:
        """The backbone on all crops of a batch at once (no Beam calls: it may run in the background thread)
        -> (whether the backbone ran, ``(item, features (R_i, D) or None, reason)`` per item in input order)."""
        good = [i for i, c in enumerate(crops) if c is not None]
        if not good:
            return False, results
        try:
            features = self._run(np.concatenate([crops[i] for i in good], axis=0))  # (sum R_i, D)
            per_image = np.split(features, np.cumsum([len(crops[i]) for i in good])[:-1])
            for i, feats in zip(good, per_image):
                results[i] = (results[i][0], np.asarray(feats, np.float32), "")
        except Exception:  # find the culprit: one image at a time
            for i in good:
                try:
                    results[i] = (results[i][0], np.asarray(self._run(crops[i]), np.float32), "")
                except Exception as exc:
                    results[i] = (results[i][0], None, f"backbone failed ({_describe(exc)})")
        return True, results

    def start_bundle(self):
        for work, *_ in self._pending:  # left over by a failed bundle: do not let them delay this one
            work.cancel()
        self._pending = collections.deque()

    def process(self, batch: list[ImageItem], timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam,
                pane_info=beam.DoFn.PaneInfoParam) -> Iterable:
        # Crops on this thread: their many small TF calls would each wait for the GIL in the background one.
        crops, results = self._crop(batch)
        if self._executor is None:
            work = concurrent.futures.Future()
            work.set_result(self._network(crops, results))
        else:
            work = self._executor.submit(self._network, crops, results)
        self._pending.append((work, timestamp, window, pane_info))
        while len(self._pending) > self.in_flight:
            yield from self._emit(*self._pending.popleft())

    def finish_bundle(self) -> Iterable:
        while self._pending:
            yield from self._emit(*self._pending.popleft())

    def _emit(self, work: concurrent.futures.Future, timestamp, window, pane_info) -> Iterable:
        """Waits for one batch and outputs it (counters are incremented here, on the bundle's thread)."""
        ran, results = work.result()
        if ran:
            self.batches.inc()
        for item, feats, reason in results:
            if feats is None:
                yield WindowedValue(_dead(item, STAGE_FEATURES, reason, self.failed), timestamp, (window,),
                                    pane_info)
            else:
                self.featurized.inc()
                yield WindowedValue(dataclasses.replace(item, features=feats), timestamp, (window,), pane_info)

    def teardown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class _BatchKey:
    """Item -> (its batch number, item): consecutive runs of ``batch_size`` of the launcher's item numbers."""

    def __init__(self, batch_size: int):
        self.batch_size = int(batch_size)

    def __call__(self, item: ImageItem) -> tuple[int, ImageItem]:
        return item.seq // self.batch_size, item


def _batch_of(group: tuple[int, Iterable[ImageItem]]) -> list[ImageItem]:
    return sorted(group[1], key=lambda item: item.seq)


@beam.ptransform_fn
def ExtractFeatures(proposed: PCollection[ImageItem], shared_handle, cnn_spec: str, crop_size: int,
                    min_batch_size: int, max_batch_size: int, in_flight: int = 1, group_batches: bool = False):
    """Batches images and computes region features -> (items with ``features``, dead letters "features").

    ``group_batches``: form the batches with a ``GroupByKey`` on the item number (at most ``max_batch_size``
    images each) instead of ``beam.BatchElements``, which emits the last batch of a bundle from
    ``finish_bundle`` -- for runners that drop those outputs (then ``in_flight`` must be 0 as well).
    """
    if group_batches:
        if in_flight:
            raise ValueError(f"group_batches needs in_flight 0 (a runner that drops finish_bundle outputs would "
                             f"lose the batches still in flight), got {in_flight}")
        batches = (proposed
                   | "BatchKey" >> beam.Map(_BatchKey(max_batch_size))
                   | "GroupBatches" >> beam.GroupByKey()
                   | "Batch" >> beam.Map(_batch_of))
    else:
        batches = proposed | "Batch" >> beam.BatchElements(min_batch_size=min_batch_size,
                                                           max_batch_size=max_batch_size)
    return _split(batches | "Featurize" >> beam.ParDo(
        ExtractFeaturesFn(shared_handle, cnn_spec, crop_size, in_flight)))


# ---- tokenize and encode ------------------------------------------------------------------------------------


def tokenize_item(item: ImageItem) -> ImageItem:
    """Tokenizes every raw caption with karpalign's one tokenizer (the twin of the in-graph one)."""
    from karpalign.data.text import python_tokenize

    return dataclasses.replace(item, tokens=[python_tokenize(raw) for raw in item.sentences])


class EncodeExampleFn(beam.DoFn):
    """Item -> (split, serialized ``tf.train.Example``) in the one schema of :mod:`karpalign.data.features`."""

    def __init__(self):
        self.written = Metrics.counter(NAMESPACE, "written")
        self.failed = Metrics.counter(NAMESPACE, f"failed_{STAGE_ENCODE}")

    def process(self, item: ImageItem) -> Iterable:
        from karpalign.data.features import encode_example

        try:
            example = encode_example(item.image_id, item.split, item.path, item.features, item.regions,
                                     list(zip(item.sentences, item.tokens)))
        except Exception as exc:  # NaN features, shape mismatch
            yield _dead(item, STAGE_ENCODE, _describe(exc), self.failed)
            return
        self.written.inc()
        yield item.split, example


@beam.ptransform_fn
def EncodeExamples(featurized: PCollection[ImageItem]):
    """Tokenizes and serializes -> ((split, example bytes), dead letters of stage "encode")."""
    return _split(featurized
                  | "Tokenize" >> beam.Map(tokenize_item)
                  | "Encode" >> beam.ParDo(EncodeExampleFn()))


# ---- write --------------------------------------------------------------------------------------------------

SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SHARD_SUFFIX = ".tfrecord.gz"


def shard_path(out_dir: str, split: str, shard: int, num_shards: int) -> str:
    """``{out_dir}/{split}-SSSSS-of-NNNNN.tfrecord.gz``."""
    return FileSystems.join(out_dir, f"{split}-{shard:05d}-of-{num_shards:05d}{SHARD_SUFFIX}")


def _replace(tmp: str, dest: str) -> None:
    """Moves a finished temporary file into place, replacing an earlier attempt's file (a retried bundle)."""
    if FileSystems.exists(dest):
        FileSystems.delete([dest])
    FileSystems.rename([tmp], [dest])


class WriteShardFn(_FilesDoFn):
    """((split, shard), examples) -> one GZIP TFRecord file with those examples; yields its path.

    A ``None`` among the examples is the marker that makes every shard exist (an empty file if no example
    landed there). The file is written under ``tmp_dir`` and renamed into place once complete.
    """

    def __init__(self, out_dir: str, num_shards: int, tmp_dir: str, plugins: Sequence[str] = ()):
        super().__init__(plugins)
        self.out_dir, self.num_shards, self.tmp_dir = out_dir, int(num_shards), tmp_dir
        self.records = Metrics.counter(NAMESPACE, "records_in_shards")

    def process(self, element: tuple[tuple[str, int], Iterable[Optional[bytes]]]) -> Iterable[str]:
        from karpalign.beam.crc32c import tfrecord_frame

        (split, shard), examples = element
        dest = shard_path(self.out_dir, split, shard, self.num_shards)
        tmp = FileSystems.join(self.tmp_dir, f"{uuid.uuid4().hex}-{split}-{shard:05d}{SHARD_SUFFIX}")
        n = 0
        with FileSystems.create(tmp, compression_type=CompressionTypes.GZIP) as f:
            for example in examples:
                if example is not None:
                    f.write(tfrecord_frame(example))
                    n += 1
        _replace(tmp, dest)
        self.records.inc(n)
        yield dest


class _ShardKey:
    """(split, example) -> ((split, shard), example); the shard follows from the example's bytes, so an image
    lands in the same shard on every runner and every retry."""

    def __init__(self, num_shards: int):
        self.num_shards = int(num_shards)

    def __call__(self, element: tuple[str, bytes]) -> tuple[tuple[str, int], bytes]:
        split, example = element
        return (split, zlib.crc32(example) % self.num_shards), example


class _CheckSplit:
    """Refuses an example of a split the job does not write (a bug upstream, never silently dropped)."""

    def __init__(self, splits: Sequence[str]):
        self.splits = tuple(splits)

    def __call__(self, element: tuple[str, bytes]) -> tuple[str, bytes]:
        if element[0] not in self.splits:
            raise ValueError(f"example of split {element[0]!r} reached the writer, which only writes {self.splits}")
        return element


@beam.ptransform_fn
def WriteSplits(encoded: PCollection[tuple[str, bytes]], out_dir: str, splits: tuple[str, ...], num_shards: int,
                tmp_dir: str, plugins: Sequence[str] = ()):
    """Writes ``{split}-SSSSS-of-NNNNN.tfrecord.gz`` (GZIP TFRecords) for every split, every shard even if
    empty; returns the file paths."""
    markers = [((split, shard), None) for split in splits for shard in range(num_shards)]
    keyed = encoded | "CheckSplit" >> beam.Map(_CheckSplit(splits)) | "ShardKey" >> beam.Map(_ShardKey(num_shards))
    return ((keyed, encoded.pipeline | "EveryShard" >> beam.Create(markers))
            | "WithEveryShard" >> beam.Flatten()
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteShardFn(out_dir, num_shards, tmp_dir, plugins)))


class WriteLinesFn(_FilesDoFn):
    """(path, lines) -> the text file ``path`` with the lines sorted (``None`` markers skipped); yields it."""

    def __init__(self, tmp_dir: str, plugins: Sequence[str] = ()):
        super().__init__(plugins)
        self.tmp_dir = tmp_dir

    def process(self, element: tuple[str, Iterable[Optional[str]]]) -> Iterable[str]:
        path, lines = element
        text = "".join(line + "\n" for line in sorted(line for line in lines if line is not None))
        tmp = FileSystems.join(self.tmp_dir, f"{uuid.uuid4().hex}-{path.rstrip('/').rpartition('/')[2]}")
        with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(text.encode("utf-8"))
        _replace(tmp, path)
        yield path


class _KeyBy:
    def __init__(self, key: str):
        self.key = key

    def __call__(self, value):
        return self.key, value


@beam.ptransform_fn
def WriteLines(lines: PCollection[str], path: str, tmp_dir: str, plugins: Sequence[str] = ()):
    """All lines -> one text file at ``path`` (sorted, so reruns and runners give the same file; empty if none)."""
    return ((lines | "ToFile" >> beam.Map(_KeyBy(path)),
             lines.pipeline | "FileMarker" >> beam.Create([(path, None)]))
            | "WithMarker" >> beam.Flatten()
            | "GroupLines" >> beam.GroupByKey()
            | "WriteFile" >> beam.ParDo(WriteLinesFn(tmp_dir, plugins)))


def _dead_letter_json(letter: DeadLetter) -> str:
    return letter.to_json()


@beam.ptransform_fn
def WriteDeadLetters(dead: PCollection[DeadLetter], path: str, tmp_dir: str, plugins: Sequence[str] = ()):
    """All dead letters -> one JSONL file at ``path`` (path, image_id, stage, reason per line; empty if none)."""
    return dead | "ToJson" >> beam.Map(_dead_letter_json) | "Write" >> WriteLines(path, tmp_dir, plugins)


# ---- outcome counts (runner-independent) --------------------------------------------------------------------


def _tally_input(_item) -> str:
    return "input"


def _tally_written(element: tuple[str, bytes]) -> str:
    return f"written/{element[0]}"


def _tally_failed(letter: DeadLetter) -> str:
    return f"failed/{letter.stage}"


def _count_json(kv: tuple[str, int]) -> str:
    import json

    return json.dumps({"key": kv[0], "count": int(kv[1])})


@beam.ptransform_fn
def CountOutcomes(pcolls: tuple[PCollection, PCollection, PCollection], path: str, tmp_dir: str,
                  plugins: Sequence[str] = ()):
    """(input items, encoded examples, dead letters) -> a JSONL file of ``{"key", "count"}`` at ``path``.

    Keys: ``input``, ``written/<split>``, ``failed/<stage>``. The counts are computed by the pipeline itself
    and written as an ordinary output file, so they are exact on every runner -- unlike metrics, whose
    committed values some runners (and the portable ones in some modes) do not report, and which the
    DaskRunner does not collect at all.
    """
    items, encoded, dead = pcolls
    return ((items | "TallyInput" >> beam.Map(_tally_input),
             encoded | "TallyWritten" >> beam.Map(_tally_written),
             dead | "TallyFailed" >> beam.Map(_tally_failed))
            | "FlattenTallies" >> beam.Flatten()
            | "Count" >> beam.combiners.Count.PerElement()
            | "ToJson" >> beam.Map(_count_json)
            | "Write" >> WriteLines(path, tmp_dir, plugins))


# ---- the launcher's item file -------------------------------------------------------------------------------


def item_to_json(item: ImageItem) -> str:
    import json

    obj = {"image_id": item.image_id, "split": item.split, "path": item.path, "sentences": item.sentences,
           "boxes": item.boxes, "seq": item.seq}
    if item.path_error:
        obj["path_error"] = item.path_error
    return json.dumps(obj, ensure_ascii=False)


def item_from_json(line: str) -> ImageItem:
    import json

    obj = json.loads(line)
    return ImageItem(image_id=obj["image_id"], split=obj["split"], path=obj["path"],
                     sentences=list(obj["sentences"]), boxes=obj.get("boxes"), seq=int(obj.get("seq", 0)),
                     path_error=obj.get("path_error", ""))


class ReadItemRangeFn(_FilesDoFn):
    """(item file, start byte, end byte) -> the items on the lines in that byte range (whole lines only)."""

    def process(self, item_range: tuple[str, int, int]) -> Iterable[ImageItem]:
        path, start, end = item_range
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.seek(start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise IOError(f"{path}: expected {end - start} bytes at offset {start}, read {len(data)}: the item "
                          "file changed after the launcher wrote it")
        for line in data.decode("utf-8").splitlines():
            if line.strip():
                yield item_from_json(line)


@beam.ptransform_fn
def ReadItems(begin, ranges: Sequence[tuple[str, int, int]], plugins: Sequence[str] = ()):
    """The launcher's JSONL item file, given as byte ranges of whole lines -> ``PCollection[ImageItem]``,
    reshuffled so workers share the images.

    The ranges are a small ``Create`` (a few hundred entries for any dataset size), so every runner can start
    from them; Beam's ``ReadFromText`` would start from an ``Impulse``, which the DaskRunner does not translate.
    """
    return (begin
            | "ItemRanges" >> beam.Create(list(ranges))
            | "ReadRanges" >> beam.ParDo(ReadItemRangeFn(plugins))
            | "Spread" >> beam.Reshuffle())
