"""The output folder of one ``karpalign-train`` run: the only module that knows its file names.

    <run>/config.yaml              the resolved config (train.task says which task made the run)
    <run>/alignment.keras          --task align: the AlignmentModel (best validation checkpoint)
    <run>/generator.keras          --task caption: the generator, MRNNDecoder or UpDownDecoder (model.generator)
    <run>/proposer.keras           --task propose: the LearnedProposer (karpalign.vision.learned_proposer)
    <run>/vocab.txt                the vocabulary of the records the run trained on
    <run>/records_manifest.json    a copy of those records' manifest
    <run>/history.jsonl            one line per validation
    <run>/tensorboard/             TensorBoard events
    <run>/checkpoints/  <run>/best/   tf.train checkpoints (resume; best validation score)
    <run>/eval-<kind>-<split>.json     what karpalign-eval wrote

Everything that writes or reads a run folder (the training loop and tasks, evaluation, alignment, export, the demo
and its report) goes through :class:`RunDir`, so a name changes in one place, and a folder that is not a run of the
expected task is refused with a message that names the folder, the missing file or the task it was made by.
"""

from __future__ import annotations

import json
import os

from karpalign.data import features as F

TASK_MODELS = {"align": "alignment.keras", "caption": "generator.keras",
               "propose": "proposer.keras"}  # task -> its Keras model file
CONFIG = "config.yaml"
RECORDS_MANIFEST = "records_manifest.json"
HISTORY = "history.jsonl"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"
BEST = "best"


class RunDirError(ValueError):
    """A folder that is not (or not yet) a usable run of the expected task."""


class RunDir:
    """Paths and loaders of one run folder.

    Args:
        path: the run folder (``--output-dir`` / ``runtime.output_dir`` of ``karpalign-train``).
        task: 'align' or 'caption' when the caller needs a run of that task (checked by :meth:`check`
            and the loaders); None for a folder whose task is not known yet (e.g. while training writes it).
    """

    def __init__(self, path: str, task: str | None = None):
        if task is not None and task not in TASK_MODELS:
            raise ValueError(f"unknown task {task!r}; runs are made by the tasks {sorted(TASK_MODELS)}")
        self.path = str(path)
        self.task = task

    def __repr__(self) -> str:
        return f"RunDir({self.path!r}, task={self.task!r})"

    def _join(self, *parts) -> str:
        return os.path.join(self.path, *parts)

    # ---- paths --------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> str:
        return self._join(CONFIG)

    @property
    def vocab_path(self) -> str:
        return self._join(F.VOCAB)

    @property
    def manifest_path(self) -> str:
        return self._join(RECORDS_MANIFEST)

    @property
    def history_path(self) -> str:
        return self._join(HISTORY)

    @property
    def tensorboard_dir(self) -> str:
        return self._join(TENSORBOARD)

    def model_path(self, task: str | None = None) -> str:
        """The Keras model file of ``task`` (default: this run's task)."""
        task = task or self.task
        if task not in TASK_MODELS:
            raise ValueError(f"{self.path}: which model? pass task='align' or 'caption' (got {task!r})")
        return self._join(TASK_MODELS[task])

    def eval_path(self, kind: str, split: str, suffix: str = "") -> str:
        """Where ``karpalign-eval KIND --split SPLIT`` writes its JSON (``suffix`` e.g. '-beam7', '-nn')."""
        return self._join(f"eval-{kind}-{split}{suffix}.json")

    def has_model(self, task: str | None = None) -> bool:
        """True once training finished and wrote the model file (the demo's "done" test)."""
        return os.path.isfile(self.model_path(task))

    # ---- checks -------------------------------------------------------------------------------------------
    def check(self, task: str | None = None) -> "RunDir":
        """Refuses a folder that is not a finished run of ``task`` (default: this run's task); returns self."""
        task = task or self.task
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"{self.path}: {task or 'training'} run folder does not exist")
        made_by = self.made_by()
        if task and made_by and made_by != task:
            raise RunDirError(f"{self.path} is a `karpalign-train --task {made_by}` run, not a --task {task} run")
        if task:
            self.require(TASK_MODELS[task], f"is {self.path} the output of `karpalign-train --task {task}`?")
        return self

    def require(self, name: str, hint: str = "") -> str:
        """The path of file ``name`` in the run; FileNotFoundError naming it (and ``hint``) when missing."""
        path = self._join(name)
        if not os.path.isfile(path):
            task = self.task or "training"
            raise FileNotFoundError(f"{path} not found: "
                                    f"{hint or f'is {self.path} the output of karpalign-train ({task})?'}")
        return path

    def made_by(self) -> str | None:
        """The task recorded in the run's config.yaml (train.task), or None when there is no config yet."""
        if not os.path.isfile(self.config_path):
            return None
        import yaml

        try:
            with open(self.config_path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RunDirError(f"{self.config_path}: cannot read the run's config ({exc})") from None
        task = (data.get("train") or {}).get("task") if isinstance(data, dict) else None
        return str(task) if task else None

    # ---- loaders ------------------------------------------------------------------------------------------
    def load_config(self):
        """The resolved :class:`karpalign.config.Config` the run was trained with."""
        from karpalign.config import ConfigError, load_config

        self.require(CONFIG)
        try:
            return load_config(self.config_path)
        except ConfigError as exc:
            raise RunDirError(str(exc)) from None

    def load_vocab(self):
        from karpalign.data.text import Vocabulary

        return Vocabulary.load(self.require(F.VOCAB))

    def load_manifest(self) -> F.Manifest:
        """The copy of the records manifest the run kept (typed, validated)."""
        return F.Manifest.read_file(self.require(RECORDS_MANIFEST))

    def load_model(self, task: str | None = None):
        """The run's Keras model (``task`` default: this run's task), after :meth:`check`."""
        import keras

        # Importing the model modules registers their classes for deserialization.
        import karpalign.models.alignment_model  # noqa: F401
        import karpalign.models.mrnn_decoder  # noqa: F401
        import karpalign.models.updown_decoder  # noqa: F401
        import karpalign.vision.learned_proposer  # noqa: F401

        task = task or self.task
        self.check(task)
        path = self.model_path(task)
        try:
            return keras.saving.load_model(path, compile=False)
        except Exception as exc:
            raise RunDirError(f"{path}: cannot load the Keras model ({type(exc).__name__}: {exc})") from exc

    def load_alignment(self):
        """The :class:`AlignmentModel` of an align run."""
        return self.load_model("align")

    def load_proposer(self):
        """The :class:`karpalign.vision.learned_proposer.LearnedProposer` of a propose run."""
        from karpalign.vision.learned_proposer import LearnedProposer

        model = self.load_model("propose")
        if not isinstance(model, LearnedProposer):
            raise RunDirError(f"{self.model_path('propose')}: {type(model).__name__} is not a LearnedProposer; "
                              "pass a `karpalign-train --task propose` run folder")
        return model

    def load_generator(self):
        """(generator, vocabulary) of a caption run; the generator must follow the decoder-step contract."""
        generator = self.load_model("caption")
        path = self.model_path("caption")
        for attr in ("initial_state", "step", "vocab_size", "feature_dim"):
            if not hasattr(generator, attr):
                raise RunDirError(f"{path}: {type(generator).__name__} is not a caption generator "
                                  f"(no {attr!r}); pass a `--task caption` run folder")
        vocab = self.load_vocab()
        if len(vocab) != int(generator.vocab_size):
            raise RunDirError(f"{self.vocab_path}: {len(vocab)} words, but {path} predicts {generator.vocab_size}")
        return generator, vocab

    # ---- writing (the training tasks) ---------------------------------------------------------------------
    def save_model(self, model, task: str | None = None) -> str:
        os.makedirs(self.path, exist_ok=True)
        path = self.model_path(task)
        model.save(path)
        return path

    def save_records_side_files(self, vocab, manifest: "F.Manifest") -> None:
        """The vocabulary and a copy of the manifest of the records the run trained on."""
        os.makedirs(self.path, exist_ok=True)
        vocab.save(self.vocab_path)
        manifest.write_file(self.manifest_path)

    def read_history(self) -> list[dict]:
        """The validation records (empty when the run never validated); bad lines name file and line."""
        path = self.history_path
        if not os.path.exists(path):
            return []
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n}: not valid JSON ({e})") from None
                if not isinstance(row, dict) or "step" not in row:
                    raise ValueError(f"{path} line {n}: expected an object with a 'step' field, "
                                     f"got {line.strip()[:80]}")
                rows.append(row)
        return rows
