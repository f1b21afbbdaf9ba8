"""The one TFRecord feature schema (``tf.train.Example``) shared by the Beam writer, tf.data and serving.

One example per image (or per aligned region snippet — then with a single region and a single sentence):

============================  ==========  ============================================================
key                           type        meaning
============================  ==========  ============================================================
``image/id``                  bytes       image id
``image/split``               bytes       split name
``image/path``                bytes       source path (for reports)
``regions/features``          float       region CNN features, flattened (R, D); region 0 = full image
``regions/boxes``             float       normalised [ymin, xmin, ymax, xmax], flattened (R, 4)
``regions/dim``               int64       D
``sentences/raw``             bytes       one per sentence (S)
``sentences/tokens``          bytes       all tokens of all sentences, flattened
``sentences/lengths``         int64       tokens per sentence (S)
============================  ==========  ============================================================

Tokens are stored as strings (not ids) so a vocabulary can be rebuilt without re-extracting; the input
pipeline and the serving graph map them with the same in-graph lookup table. :func:`parse_examples` turns a
batch of serialized examples into padded tensors with masks, the shapes of DESIGN.md.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

SCHEMA_VERSION = 1

K_ID, K_SPLIT, K_PATH = "image/id", "image/split", "image/path"
K_FEATS, K_BOXES, K_DIM = "regions/features", "regions/boxes", "regions/dim"
K_RAW, K_TOKENS, K_LENGTHS = "sentences/raw", "sentences/tokens", "sentences/lengths"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packed_float_list(values):
    """A ``tf.train.FloatList`` of ``values`` (flattened), built from their bytes: the list's wire form is
    field 1, packed, little-endian float32s, so parsing it copies the array once instead of going through a
    Python float per value (~35x faster for a (5, 1280) array)."""
    import tensorflow as tf

    data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return tf.train.FloatList.FromString(b"\x0a" + _varint(len(data)) + data)


def encode_example(image_id: str, split: str, path: str, region_features: np.ndarray, boxes: np.ndarray,
                   sentences: Sequence[tuple[str, Sequence[str]]]) -> bytes:
    """Serializes one image: ``region_features`` (R, D), ``boxes`` (R, 4), sentences as (raw, tokens)."""
    import tensorflow as tf

    feats = np.asarray(region_features, np.float32)
    boxes = np.asarray(boxes, np.float32)
    if feats.ndim != 2 or boxes.shape != (feats.shape[0], 4):
        raise ValueError(f"image {image_id}: region features {feats.shape} and boxes {boxes.shape} must be "
                         f"(R, D) and (R, 4)")
    if not np.all(np.isfinite(feats)):
        raise ValueError(f"image {image_id}: region features contain NaN or Inf")

    def b(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8") for v in values]))

    def f(values):
        return tf.train.Feature(float_list=packed_float_list(values))

    def i(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    tokens = [t for _, toks in sentences for t in toks]
    example = tf.train.Example(features=tf.train.Features(feature={
        K_ID: b([image_id]), K_SPLIT: b([split]), K_PATH: b([path]),
        K_FEATS: f(feats), K_BOXES: f(boxes), K_DIM: i([feats.shape[1]]),
        K_RAW: b([raw for raw, _ in sentences]), K_TOKENS: b(tokens),
        K_LENGTHS: i([len(toks) for _, toks in sentences]),
    }))
    return example.SerializeToString()


def feature_spec():
    import tensorflow as tf

    return {
        K_ID: tf.io.FixedLenFeature([], tf.string),
        K_SPLIT: tf.io.FixedLenFeature([], tf.string, default_value=""),
        K_PATH: tf.io.FixedLenFeature([], tf.string, default_value=""),
        K_FEATS: tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int64),
        K_BOXES: tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int64),
        K_DIM: tf.io.FixedLenFeature([], tf.int64),
        K_RAW: tf.io.RaggedFeature(tf.string, row_splits_dtype=tf.int64),
        K_TOKENS: tf.io.RaggedFeature(tf.string, row_splits_dtype=tf.int64),
        K_LENGTHS: tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
    }


def parse_examples(serialized, feature_dim: int, max_regions: int | None = None):
    """Parses a batch (B,) of serialized examples into padded tensors.

    With ``max_regions`` the region axis is padded (or cut) to exactly that many regions, so shapes are static.

    Returns a dict: ``image_id`` (B,), ``split`` (B,), ``path`` (B,), ``region_features`` (B, R, D),
    ``boxes`` (B, R, 4), ``region_mask`` (B, R) float, ``sentences_raw`` ragged (B, S),
    ``tokens`` ragged (B, S, T). ``feature_dim`` is the manifest's D (static, so shapes are known).
    """
    import tensorflow as tf

    ex = tf.io.parse_example(serialized, feature_spec())
    dims = ex[K_DIM]
    tf.debugging.assert_equal(dims, tf.cast(feature_dim, tf.int64),
                              message=f"examples' regions/dim differs from the expected feature dim {feature_dim}")
    feats = ex[K_FEATS]  # ragged (B, R*D)
    feats = tf.RaggedTensor.from_row_lengths(
        tf.reshape(feats.flat_values, [-1, feature_dim]), feats.row_lengths() // feature_dim)  # (B, R, D)
    boxes = ex[K_BOXES]
    boxes = tf.RaggedTensor.from_row_lengths(tf.reshape(boxes.flat_values, [-1, 4]), boxes.row_lengths() // 4)
    lengths = feats.row_lengths()
    if max_regions is not None:
        lengths = tf.minimum(lengths, max_regions)
    region_mask = tf.sequence_mask(lengths, maxlen=max_regions, dtype=tf.float32)  # (B, R)
    shape = [None, max_regions]
    tokens = tf.RaggedTensor.from_row_lengths(ex[K_TOKENS].flat_values, ex[K_LENGTHS].flat_values)
    tokens = tf.RaggedTensor.from_row_lengths(tokens, ex[K_LENGTHS].row_lengths())  # (B, S, T)
    return {
        "image_id": ex[K_ID], "split": ex[K_SPLIT], "path": ex[K_PATH],
        "region_features": feats.to_tensor(shape=shape + [feature_dim]),
        "boxes": boxes.to_tensor(shape=shape + [4]),
        "region_mask": region_mask,
        "sentences_raw": ex[K_RAW],
        "tokens": tokens,
    }


MANIFEST = "manifest.json"
VOCAB = "vocab.txt"
EXTRACT_CONFIG = "extract.yaml"  # the extraction's resolved data + extract config (karpalign-extract --config)


def shard_pattern(records_dir: str, split: str) -> str:
    return f"{records_dir}/{split}-*.tfrecord.gz"


# ---- the records manifest -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProposerInfo:
    """How the records' regions were proposed (the manifest's ``proposer`` object).

    Attributes:
        kind: the proposer family: 'grid', 'boxes', 'segments', 'detector', or 'full-image' (one region).
        k: boxes besides the full image (region 0).
        spec: the ``--proposer`` spec given to the writer (kind plus options, e.g. 'detector:/models/det').
        name: the proposer's full name with every setting (e.g. 'grid|k=4'); default ``f"{spec}|k={k}"``.
    """

    kind: str
    k: int
    spec: str = ""
    name: str = ""

    def __post_init__(self):
        if not self.kind or not isinstance(self.kind, str):
            raise ValueError(f"proposer kind must be a non-empty string, got {self.kind!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"proposer k must be an int >= 0, got {self.k!r}")
        object.__setattr__(self, "spec", self.spec or self.kind)
        object.__setattr__(self, "name", self.name or f"{self.spec}|k={self.k}")

    @classmethod
    def from_spec(cls, spec: str, k: int, name: str = "") -> "ProposerInfo":
        """From an extraction ``--proposer`` spec ('grid', 'segments|scale=50', 'detector:PATH', ...)."""
        kind = spec.split(":", 1)[0].split("|", 1)[0]
        return cls(kind=kind, k=int(k), spec=spec, name=name)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Manifest:
    """The ``manifest.json`` next to a records folder's shards: what they hold and how they were made.

    Every writer (the Beam job, the neuraltalk converter, the region-snippet writer of karpalign-align, the test
    fixtures) builds one and every reader (tf.data, training, evaluation, export, the report) reads one; nothing
    else spells its keys. Fields the code reads are typed; whatever else a writer records (failure counts by
    stage, dataset path, settings) is kept in ``extra`` and written back unchanged.

    Attributes:
        feature_dim: D of the region features.
        num_regions: R, regions per image (region 0 = the full image).
        counts: images (or snippets) per split.
        proposer: how the regions were proposed (:class:`ProposerInfo`).
        cnn / cnn_spec: the backbone's name and the spec that loads it (``karpalign.vision.backbones``); None for
            features that came from elsewhere (neuraltalk's ``vgg_feats.mat``).
        crop_size: side of the square crops fed to the CNN, if known.
        vocab_size: words in ``vocab.txt``.
        input_records / written / failed: records read, written, and sent to dead letters.
        failures_by_stage: failed records per extraction stage; dead_letters: the file that lists them.
        source_records: for region-snippet records, the records folder they were aligned from.
        schema_version: the TFRecord schema the shards follow (:data:`SCHEMA_VERSION`).
        extra: every other key of the file.
        path: the file it was read from (not written).
    """

    feature_dim: int
    num_regions: int
    counts: dict
    proposer: ProposerInfo
    cnn: str | None = None
    cnn_spec: str | None = None
    crop_size: int | None = None
    vocab_size: int | None = None
    input_records: int | None = None
    written: int | None = None
    failed: int = 0
    failures_by_stage: dict = dataclasses.field(default_factory=dict)
    dead_letters: str | None = None
    source_records: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict = dataclasses.field(default_factory=dict)
    path: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        where = self.path or MANIFEST
        for name in ("feature_dim", "num_regions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: field {name!r} must be an int >= 1, got {value!r}")
        if not isinstance(self.counts, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in self.counts.values()):
            raise ValueError(f"{where}: field 'counts' must map split names to image counts, got {self.counts!r}")
        if not isinstance(self.proposer, ProposerInfo):
            raise ValueError(f"{where}: field 'proposer' must be a ProposerInfo, got {self.proposer!r}")
        if self.crop_size is not None and (not isinstance(self.crop_size, int) or self.crop_size < 1):
            raise ValueError(f"{where}: field 'crop_size' must be a positive int or null, got {self.crop_size!r}")

    # ---- JSON ---------------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, data: dict, path: str | None = None) -> "Manifest":
        """Validates a decoded manifest.json (errors name ``path`` and the field) and checks its schema."""
        where = path or MANIFEST
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        for key in ("schema_version", "feature_dim", "num_regions", "counts"):
            if key not in data:
                raise ValueError(f"{where}: field {key!r} missing")
        if data["schema_version"] != SCHEMA_VERSION:
            raise ValueError(f"{where}: schema version {data['schema_version']}, this karpalign reads "
                             f"{SCHEMA_VERSION}; re-run karpalign-extract")
        fields = _json_fields()
        extra = {k: v for k, v in data.items() if k not in fields}
        try:
            proposer = _read_proposer(data, extra)
            return cls(**{k: data[k] for k in fields if k in data and k != "proposer"},
                       proposer=proposer, extra=extra, path=path)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None

    def to_json(self) -> dict:
        """The file's JSON object: every typed field that is set (the proposer as an object), then ``extra``."""
        data = {name: getattr(self, name) for name in _json_fields() if getattr(self, name) is not None}
        data["proposer"] = self.proposer.to_json()
        return {**self.extra, **data}

    # ---- files --------------------------------------------------------------------------------------------
    @classmethod
    def read(cls, records_dir: str) -> "Manifest":
        """``records_dir/manifest.json``; FileNotFoundError / ValueError name the file."""
        import os

        path = os.path.join(records_dir, MANIFEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: is {records_dir} the output of karpalign-extract?")
        return cls.read_file(path)

    @classmethod
    def read_file(cls, path: str) -> "Manifest":
        import json

        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_json(data, path)

    def write(self, records_dir: str) -> str:
        import os

        return self.write_file(os.path.join(records_dir, MANIFEST))

    def write_file(self, path: str) -> str:
        """Writes atomically (a temporary file renamed into place); returns ``path``."""
        import json
        import os

        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=2, sort_keys=True)
        os.replace(tmp, path)
        return path


def _json_fields() -> tuple[str, ...]:
    """The typed :class:`Manifest` fields, each a top-level key of manifest.json (not ``extra`` nor ``path``)."""
    return tuple(f.name for f in dataclasses.fields(Manifest) if f.name not in ("extra", "path"))


def _read_proposer(data: dict, extra: dict) -> ProposerInfo:
    """The ``proposer`` object; older manifests wrote it flat (``proposer`` spec, ``proposer_k``, ``proposer_name``)."""
    value = data.get("proposer")
    if isinstance(value, dict):
        unknown = set(value) - {f.name for f in dataclasses.fields(ProposerInfo)}
        if unknown:
            raise ValueError(f"field 'proposer' has unknown keys {sorted(unknown)}")
        return ProposerInfo(**value)
    k = extra.pop("proposer_k", None)
    name = extra.pop("proposer_name", None) or ""
    if value is None:  # features with one region per image and no proposer recorded
        return ProposerInfo(kind="full-image", k=0)
    if not isinstance(value, str):
        raise ValueError(f"field 'proposer' must be an object or a spec string, got {value!r}")
    return ProposerInfo.from_spec(value, int(k) if k is not None else int(data["num_regions"]) - 1, name)


def read_manifest(records_dir: str) -> Manifest:
    """The :class:`Manifest` written next to the shards (FileNotFoundError / ValueError name the file)."""
    return Manifest.read(records_dir)


def write_manifest(records_dir: str, manifest: Manifest | dict) -> str:
    """Writes ``records_dir/manifest.json`` from a :class:`Manifest` (or a dict of its JSON form, validated)."""
    if isinstance(manifest, dict):
        manifest = Manifest.from_json({"schema_version": SCHEMA_VERSION, **manifest})
    return manifest.write(records_dir)


def write_shards(examples, records_dir: str, split: str, num_shards: int = 1) -> int:
    """Writes serialized examples round-robin into ``{split}-SSSSS-of-NNNNN.tfrecord.gz``; returns the count."""
    import os

    import tensorflow as tf

    os.makedirs(records_dir, exist_ok=True)
    opts = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = [tf.io.TFRecordWriter(os.path.join(records_dir, f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord.gz"),
                                    opts) for i in range(num_shards)]
    n = 0
    try:
        for n, ex in enumerate(examples, 1):
            writers[(n - 1) % num_shards].write(ex)
    finally:
        for w in writers:
            w.close()
    return n
