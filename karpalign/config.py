"""One config system for every step: nested dataclasses loaded from YAML, with ``--set a.b=c`` overrides.

Every attribute is documented where it is declared. ``load_config(path, overrides)`` returns a resolved
:class:`Config`; ``save_config`` writes it (as YAML) next to every output so a run can always be repeated.

A recipe file holds one dataset's whole pipeline. Its top-level sections are the :class:`Config` sections
(``data``, ``extract``, ``model``, ``train``, ``decode``, ``runtime``), shared by every step, plus one
section per training task (:data:`TASK_SECTIONS`: ``align``, ``caption``, ``caption_regions``, ``propose``)
holding only what that task changes (its optimiser, steps, output folder, ...)::

    data: {dataset: data/coco/dataset.json, records_dir: runs/coco/records, ...}
    extract: {proposer: grid, regions: 19}        # karpalign-extract --config coco
    model: {embed_dim: 1000, ...}
    align:   {train: {optimizer: sgd, ...}, runtime: {output_dir: runs/coco/align}}
    caption: {train: {optimizer: rmsprop, ...}, runtime: {output_dir: runs/coco/caption}}
    caption_regions: {runtime: {output_dir: runs/coco/caption_regions}}   # on top of caption, --on regions

``karpalign-train --task T`` resolves the shared sections, then section ``T`` (for ``caption`` with
``train.on: regions`` also ``caption_regions``), then the overrides. A resolved config (a run's
``config.yaml``) has no task sections and loads the same way. Unknown keys are errors naming the file and key.

The recipes (``coco``, ``flickr8k``, ``flickr30k``, ``scenes``, ``demo``) ship inside the package as
``karpalign/configs/*.yaml``. ``config_path(name_or_path)`` is the one place a config argument is resolved: a
file that exists is used as it is, a bare recipe name (``coco`` or ``coco.yaml``) is the packaged file (read
through ``importlib.resources``, so it works from a wheel), anything else is an error listing the recipes.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib.resources
import os
import pathlib
import typing
from typing import Any, TextIO

import yaml

from karpalign.vision.images import DEFAULT_MAX_PIXELS


@dataclasses.dataclass
class DataConfig:
    """Where the data lives and how text is handled."""

    dataset: str = ""  # karpalign-extract's input: Karpathy dataset.json, COCO captions json or .jsonl
    image_root: str = ""  # folder (or URL) the dataset's image paths are relative to; '': the dataset's folder
    fold_restval: bool = False  # COCO: `restval` images count as train (Karpathy split; the coco recipe sets it)
    min_word_count: int = 5  # karpalign-extract: words seen fewer times in train become <unk> (paper: 5)
    records_dir: str = ""  # TFRecord shards + manifest.json + vocab.txt: karpalign-extract's output
    region_records_dir: str = ""  # region-snippet TFRecords written by karpalign-align (for --on regions)
    max_words: int = 24  # sentences are cut to this many tokens
    word_vectors: str = ""  # '' (random init), 'glove6b50', 'word2vec-bin:PATH' or 'text:PATH'
    val_dataset: str = ""  # --task propose: a box dataset to validate on; '': the val split of data.dataset


@dataclasses.dataclass
class ExtractConfig:
    """karpalign-extract (the Beam job): images -> region CNN features. Reads ``data.dataset`` (images under
    ``data.image_root``), writes ``data.records_dir``; the vocabulary uses ``data.min_word_count`` and
    ``data.fold_restval``. Checked by :func:`karpalign.beam.job.validate_config`."""

    cnn: str = "efficientnet_lite0"  # backbone: efficientnet_lite0 | keras:PATH | hub:HANDLE, options after |
    crop_size: int = 0  # side of the square region crops; 0: the backbone's input size (224 for Lite0)
    proposer: str = "grid"  # boxes (the dataset's) | grid | segments[|opts] | detector:PATH | learned:RUN_DIR
    regions: int = 19  # K boxes per image besides the full image (paper: 19); manifest num_regions = K + 1
    detector_score_threshold: float = 0.3  # detector: minimum box score
    detector_iou_threshold: float = 0.5  # detector and segments: NMS IoU threshold
    splits: list[str] = dataclasses.field(default_factory=list)  # splits to extract; []: every split
    shards_per_split: int = 4  # TFRecord files per split
    batch_size: int = 16  # images per CNN batch (upper bound of beam.BatchElements)
    min_batch_size: int = 0  # lower bound of beam.BatchElements; 0: batch_size (fixed batches)
    cnn_in_flight: int = 1  # CNN batches computed in a background thread while the worker prepares others;
                            # 0: inline (needed with adaptive batches, min_batch_size < batch_size)
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # refuse images with more pixels (decompression bombs)
    max_failure_fraction: float = 0.05  # the run fails (exit 1) when failed / input exceeds this
    progress_every: int = 100  # each worker logs a line per this many decoded images (0: never)
    overwrite: bool = False  # replace the outputs of an earlier run in data.records_dir


@dataclasses.dataclass
class ModelConfig:
    """Alignment model (BRNN) and generator (mRNN or region-attention updown) sizes."""

    embed_dim: int = 1000  # multimodal space h (paper: 1000-1600)
    word_dim: int = 300  # word embedding size x_t (paper: 300, word2vec)
    brnn_hidden: int = 300  # hidden size of the bidirectional ReLU RNN (paper: 300-600)
    freeze_word_vectors: bool = False  # keep pretrained word vectors fixed (paper: fixed word2vec)
    dropout: float = 0.5  # dropout on non-recurrent layers
    score: str = "brnn"  # 'brnn' (eq. 8), 'defrag' (eq. 7) or 'global' baseline
    loss: str = "ranking"  # 'ranking' (eq. 9, sum of violations) or 'vsepp' (hardest negative)
    margin: float = 1.0  # ranking margin
    fragment_weight: float = 0.0  # add DeFrag's fragment objective with this weight (needed by score 'defrag')
    fragment_mil: bool = True  # fragment objective with DeFrag's multiple-instance labels
    gen_cell: str = "rnn"  # generator cell: 'rnn' (paper, ReLU) or 'lstm'
    gen_hidden: int = 512  # generator hidden size (paper: 512)
    gen_word_dim: int = 512  # generator word embedding size
    generator: str = "mrnn"  # caption generator: 'mrnn' (paper: region 0 once, as a bias) or 'updown' (attention
                             # LSTM + language LSTM over every region, Anderson et al. 2018; its LSTMs have
                             # gen_hidden units, gen_cell is not used)
    gen_attention_dim: int = 512  # updown: size of the attention's hidden layer
    # --task propose: the learned region proposer (karpalign.vision.learned_proposer)
    proposer_backbone: str = "efficientnet_lite0"  # frozen feature-map CNN: efficientnet_lite0 | keras:PATH (4-D out)
    proposer_stride: int = 8  # its feature map's stride (efficientnet_lite0: 8 = stride 8 + 16 fused, 16 or 32)
    proposer_input_size: int = 192  # images are resized to this square side before the CNN
    proposer_head_dim: int = 48  # width of the head's 3x3 conv tower
    proposer_head_layers: int = 2  # depth of that tower
    proposer_score_threshold: float = 0.05  # post-processing defaults saved with the model (minimum box score,
    proposer_iou_threshold: float = 0.5     # NMS IoU); the model's K default is extract.regions


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and checkpointing."""

    task: str = "align"  # 'align', 'caption' or 'propose' (the learned region proposer)
    on: str = "images"  # caption task: 'images' (full frames) or 'regions' (MRF snippets)
    batch_size: int = 100  # global batch of image-sentence pairs (paper: 100)
    steps: int = 1000  # total optimisation steps
    optimizer: str = "sgd"  # 'sgd' (momentum), 'adam' or 'rmsprop'
    learning_rate: float = 0.01
    momentum: float = 0.9  # SGD momentum (paper: 0.9)
    weight_decay: float = 0.0  # L2 on weights
    clip_value: float = 5.0  # element-wise gradient clipping (paper: 5)
    shuffle_buffer: int = 10000
    seed: int = 0
    checkpoint_every: int = 200  # steps between checkpoints (also the resume granularity)
    eval_every: int = 0  # steps between validation runs (0: once per epoch)
    keep_checkpoints: int = 3
    log_every: int = 50  # steps between TensorBoard scalars
    mixed_precision: bool = False  # 'mixed_float16' compute with float32 variables
    val_max_images: int = 1000  # validation retrieval on at most this many images


@dataclasses.dataclass
class DecodeConfig:
    """Beam search settings fixed at export time."""

    beam_size: int = 7  # paper: 7
    max_length: int = 20
    alpha: float = 0.0  # length normalisation exponent
    top_k: int = 3  # beams returned
    min_length: int = 1  # words before END may be chosen (1: never an empty caption)


@dataclasses.dataclass
class RuntimeConfig:
    """Where and how the job runs."""

    strategy: str = "default"  # default | one_device | mirrored | multi_worker_mirrored | tpu
    devices: str = ""  # comma-separated devices for one_device/mirrored, e.g. '/gpu:0,/gpu:1'
    tpu: str = ""  # TPU name or address for 'tpu'
    output_dir: str = "runs/train"


@dataclasses.dataclass
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    extract: ExtractConfig = dataclasses.field(default_factory=ExtractConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)


class ConfigError(ValueError):
    pass


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if typing.get_origin(typ) is list:  # list[str]: a YAML list, or a comma-separated string
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if value is None:
            return []
        if not isinstance(value, list) or any(isinstance(v, (dict, list)) for v in value):
            raise ConfigError(f"{where}: expected a list of strings (e.g. [train, val] or train,val), got {value!r}")
        return [str(v) for v in value]
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def _merge(obj: Any, values: dict, where: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if isinstance(key, bool):
            raise ConfigError(f"{where or 'config'}: a key was read as {key} - YAML reads bare on/off/yes/no as "
                              f"booleans; quote it (e.g. \"on\": regions)")
        if key not in hints:
            raise ConfigError(f"unknown config key {path!r}; known: {sorted(hints)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Applies ``a.b=c`` strings (values parsed as YAML scalars)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=100")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _merge(cfg, nested, "")
    return cfg


def apply_values(cfg: Config, values: dict[str, Any]) -> Config:
    """Sets dotted keys (``{"extract.regions": 4}``) to already-typed values, checked like a config file's
    (a command-line flag that is a shortcut for a key uses this; no YAML parsing of the value)."""
    for key, value in values.items():
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        _merge(cfg, nested, "")
    return cfg


def read_yaml(path: str, error: type[Exception], what: str, hint: str = ""):
    """The YAML document in ``path`` (``{}`` when empty). A missing file or invalid YAML raises ``error`` with a
    message naming ``what`` and ``path`` (plus ``hint`` for a missing file)."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise error(f"{what} {path} not found{hint}") from None
    except yaml.YAMLError as e:
        raise error(f"{what} {path}: invalid YAML: {e}") from None


# ---- packaged recipes --------------------------------------------------------------------------------------

RECIPE_DIR = "configs"  # inside the karpalign package (declared as package data in pyproject.toml)
RECIPE_SUFFIX = ".yaml"
_extracted = contextlib.ExitStack()  # recipes copied out of a zipped install (closed at exit)
atexit.register(_extracted.close)


def _recipe_dir():
    return importlib.resources.files("karpalign").joinpath(RECIPE_DIR)


def packaged_recipes() -> list[str]:
    """The names of the recipes shipped with the package (``karpalign/configs/*.yaml`` without ``.yaml``)."""
    try:
        entries = list(_recipe_dir().iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name[:-len(RECIPE_SUFFIX)] for e in entries
                  if e.name.endswith(RECIPE_SUFFIX) and e.is_file())


def recipe_path(name: str) -> str:
    """The file system path of the packaged recipe ``name`` (``coco`` or ``coco.yaml``), not checked for
    existence; use :func:`config_path` to resolve a user's argument."""
    if not name.endswith(RECIPE_SUFFIX):
        name += RECIPE_SUFFIX
    resource = _recipe_dir().joinpath(name)
    if isinstance(resource, pathlib.Path):  # a normal (unzipped) install: the file itself
        return str(resource)
    return str(_extracted.enter_context(importlib.resources.as_file(resource)))


def _recipe_name(arg: str) -> str | None:
    """``arg`` as a packaged recipe's name when it is a bare name of one (no folder part), else None."""
    if not arg or os.path.basename(arg) != arg or (os.altsep and os.altsep in arg):
        return None
    name = arg[:-len(RECIPE_SUFFIX)] if arg.endswith(RECIPE_SUFFIX) else arg
    return name if name in packaged_recipes() else None


def config_path(name_or_path: str | os.PathLike, error: type[Exception] = ConfigError,
                what: str = "config file", hint: str = "") -> str:
    """Resolves a ``--config`` argument: an existing file is returned as given; a bare recipe name (``coco``,
    ``coco.yaml``) is the packaged ``karpalign/configs/coco.yaml``. Anything else raises ``error`` naming
    ``what``, the argument (plus ``hint``) and the packaged recipes."""
    arg = os.fspath(name_or_path)
    if os.path.isfile(arg):
        return arg
    name = _recipe_name(arg)
    if name is not None:
        return recipe_path(name)
    recipes = ", ".join(packaged_recipes()) or "(none: the package's configs/ folder is missing)"
    state = "is a folder, not a YAML file" if os.path.isdir(arg) else "not found"
    raise error(f"{what} {arg} {state}{hint}; give the path of a YAML file or the name of a packaged recipe: "
                f"{recipes}")


def open_config(name_or_path: str | os.PathLike) -> TextIO:
    """The config file ``name_or_path`` (resolved by :func:`config_path`) opened for reading as UTF-8 text."""
    return open(config_path(name_or_path), encoding="utf-8")


# Task sections of a recipe file: what each karpalign-train task changes on top of the shared sections.
# ``caption_regions`` applies on top of ``caption`` when the caption task trains on region snippets.
TASK_SECTIONS = ("align", "caption", "caption_regions", "propose")
_SHARED = tuple(f.name for f in dataclasses.fields(Config))
RECIPE_SECTIONS = _SHARED + TASK_SECTIONS  # every top-level key a recipe file may have
_NOT_PER_TASK = ("extract",)  # one extraction serves every task of a recipe


def task_sections(task: str, on: str) -> tuple[str, ...]:
    """The task sections that apply to ``karpalign-train --task task --on on``, in order."""
    if task == "caption":
        return ("caption", "caption_regions") if on == "regions" else ("caption",)
    return (task,) if task in TASK_SECTIONS else ()


def config_from_dict(data: dict, overrides: list[str] | None = None, where: str = "config") -> Config:
    """The defaults, updated from a recipe's data (shared sections, then the task sections chosen by the
    resulting ``train.task`` / ``train.on``), then from the ``a.b=c`` overrides. Errors name ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    for key, value in data.items():
        if key in _SHARED:
            continue
        if key not in TASK_SECTIONS:
            raise ConfigError(f"{where}: unknown config key {key!r}; known: sections {list(_SHARED)} and task "
                              f"sections {list(TASK_SECTIONS)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: task section {key!r}: expected a mapping, got {value!r}")
        fixed = sorted(set(value) & set(_NOT_PER_TASK))
        if fixed:
            raise ConfigError(f"{where}: task section {key!r}: {fixed} cannot differ per task (one extraction "
                              "serves every task); put it at the top level")
        if isinstance(value.get("train"), dict) and "task" in value["train"]:
            raise ConfigError(f"{where}: task section {key!r} sets train.task; the section name is the task")

    def build(sections: tuple[str, ...]) -> Config:
        cfg = Config()
        try:
            _merge(cfg, {k: v for k, v in data.items() if k in _SHARED}, "")
            for name in sections:
                if name in data:
                    _merge(cfg, data[name], name)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        return apply_overrides(cfg, overrides or [])

    probe = build(())
    for _ in range(2):  # a task section may set train.on (which can add caption_regions)
        chosen = task_sections(probe.train.task, probe.train.on)
        probe = build(chosen)
    return probe


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """The defaults, updated from the YAML file or packaged recipe ``path`` (see :func:`config_path`; its task
    sections as described in the module docstring), then from the ``a.b=c`` overrides."""
    if not path:
        return apply_overrides(Config(), overrides or [])
    path = config_path(path)
    return config_from_dict(read_yaml(path, ConfigError, "config file"), overrides, f"config file {path}")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, out_dir: str, name: str = "config.yaml", sections: tuple[str, ...] = ()) -> str:
    """Writes the resolved ``cfg`` (only ``sections`` when given) as ``out_dir/name``; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    data = to_dict(cfg)
    if sections:
        data = {k: v for k, v in data.items() if k in sections}
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path
