"""The extraction steps: DoFns and the small labelled composites that wire them.

Each composite takes a ``PCollection[ImageItem]`` and returns ``(good, dead)``: the items that made it through
and the :class:`DeadLetter` s of those that did not (a tagged side output of the DoFn). Heavy objects -- the
CNN backbone and the region proposer -- are built once per worker process in ``DoFn.setup`` through an
``apache_beam.utils.shared.Shared`` handle, so all DoFn instances (threads) of a worker share one copy.
Every DoFn counts its work with Beam counters in the ``karpalign.extract`` namespace.

The CNN runs on batches: ``beam.BatchElements`` groups images, their region crops are concatenated and the
backbone sees them in one call, so the network runs on full batches whatever the number of regions per image.

Decoding, cropping, the pixel mapping and the CNN are the functions of :mod:`karpalign.vision.region_features`
that the serving graph runs as well (the job runs them in separate steps to overlap them), so an image gives
the same features here and through ``serving_default``; an image the serving graph refuses (CMYK JPEG, TIFF,
...) is a "decode" dead letter with the same reason.
"""

import collections
import concurrent.futures
import dataclasses
import logging
import os
from typing import Iterable, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PCollection, TaggedOutput
from apache_beam.utils.windowed_value import WindowedValue

from karpalign.beam.elements import (DEAD_LETTER_TAG, STAGE_DECODE, STAGE_ENCODE, STAGE_FEATURES, STAGE_PROPOSE,
                                     STAGE_READ, DeadLetter, ImageItem)

NAMESPACE = "karpalign.extract"
_log = logging.getLogger(__name__)


def _dead(item: ImageItem, stage: str, reason: str, counter) -> TaggedOutput:
    counter.inc()
    return TaggedOutput(DEAD_LETTER_TAG, DeadLetter.of(item, stage, reason))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ---- read ---------------------------------------------------------------------------------------------------


class ReadImageBytesFn(beam.DoFn):
    """Item -> item with the file's bytes, through Beam's FileSystems (local paths, gs://, s3://, hdfs://)."""

    def __init__(self):
        self.images_read = Metrics.counter(NAMESPACE, "images_read")
        self.bytes_read = Metrics.counter(NAMESPACE, "bytes_read")
        self.failed = Metrics.counter(NAMESPACE, f"failed_{STAGE_READ}")

    def process(self, item: ImageItem) -> Iterable[ImageItem]:
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
def ReadImageBytes(items: PCollection[ImageItem]):
    """Reads every item's image file -> (items with ``data``, dead letters of stage "read")."""
    out = items | "Read" >> beam.ParDo(ReadImageBytesFn()).with_outputs(DEAD_LETTER_TAG, main="images")
    return out.images, out[DEAD_LETTER_TAG]


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

    def process(self, item: ImageItem) -> Iterable[ImageItem]:
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
    out = images | "Decode" >> beam.ParDo(DecodeImageFn(max_pixels, progress_every)).with_outputs(
        DEAD_LETTER_TAG, main="decoded")
    return out.decoded, out[DEAD_LETTER_TAG]


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
        self._proposer = self._shared.acquire(self.proposer_spec.build, tag=self.proposer_spec.tag)

    def process(self, item: ImageItem) -> Iterable[ImageItem]:
        try:
            regions = self._proposer.propose(item.image, boxes=item.boxes, source=item.path)  # (R, 4)
        except Exception as exc:  # bad or missing boxes, detector failure
            yield _dead(item, STAGE_PROPOSE, _describe(exc), self.failed)
            return
        self.regions.inc(len(regions))
        yield dataclasses.replace(item, regions=np.asarray(regions, np.float32))


@beam.ptransform_fn
def ProposeRegions(decoded: PCollection[ImageItem], shared_handle, proposer: ProposerSpec):
    """Proposes regions for every image -> (items with ``regions``, dead letters of stage "propose")."""
    out = decoded | "Propose" >> beam.ParDo(ProposeRegionsFn(shared_handle, proposer)).with_outputs(
        DEAD_LETTER_TAG, main="proposed")
    return out.proposed, out[DEAD_LETTER_TAG]


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
    input order; whatever is still in flight is emitted at the end of the bundle.
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
        # Shared keeps a weak reference; this DoFn's attribute is the strong one that keeps the model alive.
        self._backbone = self._shared.acquire(self._load, tag=f"backbone:{self.cnn_spec}")
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
                letter = _dead(item, STAGE_FEATURES, reason, self.failed)
                yield TaggedOutput(letter.tag, WindowedValue(letter.value, timestamp, (window,), pane_info))
            else:
                self.featurized.inc()
                yield WindowedValue(dataclasses.replace(item, features=feats), timestamp, (window,), pane_info)

    def teardown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


@beam.ptransform_fn
def ExtractFeatures(proposed: PCollection[ImageItem], shared_handle, cnn_spec: str, crop_size: int,
                    min_batch_size: int, max_batch_size: int, in_flight: int = 1):
    """Batches images and computes region features -> (items with ``features``, dead letters "features")."""
    out = (proposed
           | "Batch" >> beam.BatchElements(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
           | "Featurize" >> beam.ParDo(ExtractFeaturesFn(shared_handle, cnn_spec, crop_size, in_flight))
           .with_outputs(DEAD_LETTER_TAG, main="featurized"))
    return out.featurized, out[DEAD_LETTER_TAG]


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

    def process(self, item: ImageItem) -> Iterable[tuple[str, bytes]]:
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
    out = (featurized
           | "Tokenize" >> beam.Map(tokenize_item)
           | "Encode" >> beam.ParDo(EncodeExampleFn()).with_outputs(DEAD_LETTER_TAG, main="encoded"))
    return out.encoded, out[DEAD_LETTER_TAG]


# ---- write --------------------------------------------------------------------------------------------------


def shard_prefix(out_dir: str, split: str) -> str:
    return FileSystems.join(out_dir, split)


SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SHARD_SUFFIX = ".tfrecord.gz"


class _SplitIndex:
    """Partition function: (split, example) -> index of its split (picklable, unlike a closure)."""

    def __init__(self, splits: tuple[str, ...]):
        self.splits = tuple(splits)

    def __call__(self, element: tuple[str, bytes], num_partitions: int) -> int:
        split = element[0]
        if split not in self.splits:
            raise ValueError(f"example of split {split!r} reached the writer, which only writes {self.splits}")
        return self.splits.index(split)


def _value(element: tuple[str, bytes]) -> bytes:
    return element[1]


class TFRecordBytesCoder(beam.coders.BytesCoder):
    """Bytes as they are, like the writer's default coder; it also makes sure the worker that writes has a
    CRC-32C for the TFRecord checksums (:func:`karpalign.beam.crc32c.ensure_beam_crc32c`). The coder travels
    inside the sink to whichever worker writes, so that worker imports this module and installs the CRC."""

    def __init__(self):
        super().__init__()
        self._ready = False

    def encode(self, value: bytes) -> bytes:
        if not self._ready:
            from karpalign.beam.crc32c import ensure_beam_crc32c

            ensure_beam_crc32c()
            self._ready = True
        return value

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self._ready = False

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


@beam.ptransform_fn
def WriteSplits(encoded: PCollection[tuple[str, bytes]], out_dir: str, splits: tuple[str, ...],
                num_shards: int):
    """Writes ``{split}-SSSSS-of-NNNNN.tfrecord.gz`` (GZIP TFRecords) for every split; returns the file names."""
    parts = encoded | "BySplit" >> beam.Partition(_SplitIndex(splits), len(splits))
    written = []
    for split, part in zip(splits, parts):
        written.append(
            part
            | f"Values[{split}]" >> beam.Map(_value)
            | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                shard_prefix(out_dir, split), file_name_suffix=SHARD_SUFFIX, num_shards=num_shards,
                shard_name_template=SHARD_TEMPLATE, compression_type=CompressionTypes.GZIP,
                coder=TFRecordBytesCoder()))
    return written | "ShardFiles" >> beam.Flatten()


def _dead_letter_json(letter: DeadLetter) -> str:
    return letter.to_json()


@beam.ptransform_fn
def WriteDeadLetters(dead: PCollection[DeadLetter], path: str):
    """All dead letters -> one JSONL file at ``path`` (path, image_id, stage, reason per line; empty if none)."""
    base, ext = os.path.splitext(path)
    return (dead
            | "ToJson" >> beam.Map(_dead_letter_json)
            | "Write" >> beam.io.WriteToText(base, file_name_suffix=ext, shard_name_template=""))


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
def CountOutcomes(pcolls: tuple[PCollection, PCollection, PCollection], path: str):
    """(input items, encoded examples, dead letters) -> a JSONL file of ``{"key", "count"}`` at ``path``.

    Keys: ``input``, ``written/<split>``, ``failed/<stage>``. The counts are computed by the pipeline itself
    and written as an ordinary output file, so they are exact on every runner -- unlike metrics, whose
    committed values some runners (and the portable ones in some modes) do not report.
    """
    items, encoded, dead = pcolls
    base, ext = os.path.splitext(path)
    return ((items | "TallyInput" >> beam.Map(_tally_input),
             encoded | "TallyWritten" >> beam.Map(_tally_written),
             dead | "TallyFailed" >> beam.Map(_tally_failed))
            | "FlattenTallies" >> beam.Flatten()
            | "Count" >> beam.combiners.Count.PerElement()
            | "ToJson" >> beam.Map(_count_json)
            | "Write" >> beam.io.WriteToText(base, file_name_suffix=ext, shard_name_template=""))


# ---- the launcher's item file -------------------------------------------------------------------------------


def item_to_json(item: ImageItem) -> str:
    import json

    return json.dumps({"image_id": item.image_id, "split": item.split, "path": item.path,
                       "sentences": item.sentences, "boxes": item.boxes}, ensure_ascii=False)


def item_from_json(line: str) -> ImageItem:
    import json

    obj = json.loads(line)
    return ImageItem(image_id=obj["image_id"], split=obj["split"], path=obj["path"],
                     sentences=list(obj["sentences"]), boxes=obj.get("boxes"))


@beam.ptransform_fn
def ReadItems(begin, path: str):
    """The launcher's JSONL item file -> ``PCollection[ImageItem]``, reshuffled so workers share the images."""
    return (begin
            | "ReadLines" >> beam.io.ReadFromText(path)
            | "Parse" >> beam.Map(item_from_json)
            | "Spread" >> beam.Reshuffle())
