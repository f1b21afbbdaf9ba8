"""Nested dataclass configs loaded from YAML, with ``--set a.b=c`` overrides.

Every attribute is documented where it is declared. ``load_config(path, overrides)`` returns a resolved
:class:`Config`; ``save_config`` writes it (as YAML) next to every output so a run can always be repeated.

The recipes (``coco``, ``flickr8k_caption``, ``scenes``, ``demo``, ...) ship inside the package as
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


@dataclasses.dataclass
class DataConfig:
    """Where the data lives and how text is handled."""

    dataset: str = ""  # caption dataset: Karpathy dataset.json, COCO captions json or .jsonl
    image_root: str = ""  # image folder; default: the dataset file's folder
    fold_restval: bool = True  # COCO: train on `restval` too (Karpathy split)
    min_word_count: int = 5  # words seen fewer times in train become <unk> (paper: 5)
    records_dir: str = ""  # TFRecord shards + manifest.json + vocab.txt written by karpalign-extract
    region_records_dir: str = ""  # region-snippet TFRecords written by karpalign-align (for --on regions)
    max_words: int = 24  # sentences are cut to this many tokens
    word_vectors: str = ""  # '' (random init), 'glove6b50', 'word2vec-bin:PATH' or 'text:PATH'


@dataclasses.dataclass
class ModelConfig:
    """Alignment model (BRNN) and generator (mRNN) sizes."""

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


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and checkpointing."""

    task: str = "align"  # 'align' or 'caption'
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


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """The defaults, updated from the YAML file or packaged recipe ``path`` (see :func:`config_path`), then
    from the ``a.b=c`` overrides."""
    cfg = Config()
    if path:
        path = config_path(path)
        data = read_yaml(path, ConfigError, "config file")
        try:
            _merge(cfg, data, "")
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from None
    return apply_overrides(cfg, overrides or [])


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, out_dir: str, name: str = "config.yaml") -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    return path
