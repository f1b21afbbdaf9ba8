"""The one training loop shared by every task (alignment, captioning on images or regions).

A :class:`Task` says how to build the model, the per-replica dataset, the per-replica loss and the validation
metric; :func:`train` does the rest the same way for all tasks: strategy scope, optimizer with element-wise
clipping, checkpoints every N steps with resume (model, optimizer, step and input position), TensorBoard
scalars, a progress bar, validation with the best checkpoint kept, seeds and mixed precision.

:func:`train` reads top to bottom through its parts: :func:`_build_state` (model, optimizer, counters and
checkpoints, built in the strategy scope; resume), :func:`_distributed_train_step` (the replica step with
global-gradient clipping), :class:`_Bookkeeping` (logging, validation, best and periodic checkpoints after
each step) and :func:`_save_best_model` (the final model is the best validation checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from karpalign.config import Config, save_config
from karpalign.training import run_dir
from karpalign.training.strategy import get_distribution_strategy, is_chief


class Task:
    """What differs between tasks. Subclasses implement every method."""

    name = "task"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def build_model(self) -> keras.Model:
        """Builds the model with all its weights (called inside the strategy scope)."""
        raise NotImplementedError

    def dataset(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        """Per-replica batches of the training split."""
        raise NotImplementedError

    def loss(self, model, batch, global_batch_size: int, training: bool = True):
        """Per-replica loss, already divided by the global batch size (so replica losses sum to the mean)."""
        raise NotImplementedError

    def validate(self, model) -> dict:
        """Validation metrics; key ``score`` (higher is better) picks the best checkpoint."""
        raise NotImplementedError

    def save_model(self, model, out_dir: str) -> None:
        """Writes the final Keras model file(s) and whatever export needs next to them."""
        raise NotImplementedError


@dataclasses.dataclass
class TrainResult:
    steps: int
    final_loss: float
    best: dict
    history: list
    seconds: float
    losses: list  # training loss of every step run by this call


def make_optimizer(cfg: Config):
    t = cfg.train
    # Clipping is done by the loop after the cross-replica sum (Keras would clip each replica's share).
    common = dict(learning_rate=t.learning_rate, weight_decay=t.weight_decay or None)
    if t.optimizer == "sgd":
        opt = keras.optimizers.SGD(momentum=t.momentum, **common)
    elif t.optimizer == "adam":
        opt = keras.optimizers.Adam(**common)
    elif t.optimizer == "rmsprop":
        opt = keras.optimizers.RMSprop(**common)
    else:
        raise ValueError(f"unknown optimizer {t.optimizer!r}; choose sgd, adam or rmsprop")
    if t.mixed_precision and keras.mixed_precision.dtype_policy().name == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def _set_precision(cfg: Config) -> None:
    if cfg.train.mixed_precision:
        # float16 needs loss scaling and pays off on GPUs; bfloat16 is the CPU/TPU choice.
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    else:
        policy = "float32"
    keras.mixed_precision.set_dtype_policy(policy)


def _worker_dir(out_dir: str, strategy) -> str:
    """The scratch folder of a non-chief worker (removed when its train() call ends)."""
    resolver = strategy.cluster_resolver
    return os.path.join(out_dir, f".worker_{resolver.task_type}_{resolver.task_id}")


def _checkpoint_dir(out_dir: str, strategy, name: str) -> str:
    """Chief writes under out_dir; other workers write to a scratch folder (they must take part in saving)."""
    if is_chief(strategy):
        return os.path.join(out_dir, name)
    return os.path.join(_worker_dir(out_dir, strategy), name)


class _Progress:
    """Progress on stderr: a live bar on a terminal; in logs (no tty) one line per 10% of the run."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.start, self.enabled = total, start, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.time()
        self.last_decile = int(10 * start / max(total, 1))

    def update(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        rate = (step - self.start) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        filled = int(30 * step / max(self.total, 1))
        line = (f"step {step}/{self.total} [{'=' * filled}{'.' * (30 - filled)}] loss {loss:.4f} "
                f"{rate:.1f} steps/s eta {eta:.0f}s")
        decile = int(10 * step / max(self.total, 1))
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if step == self.total else ""))
        elif decile != self.last_decile or step == self.total:
            sys.stderr.write(line + "\n")
        self.last_decile = decile
        sys.stderr.flush()


@dataclasses.dataclass
class _TrainState:
    """What :func:`train` builds in the strategy scope, and the two checkpoint managers that save it."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable  # () int64, steps done so far (restored on resume)
    best_score: tf.Variable  # () float64, best validation score so far
    checkpoint: tf.train.Checkpoint  # model, optimizer, step, best_score
    manager: tf.train.CheckpointManager  # checkpoints/: every checkpoint_every steps, for resuming
    best_checkpoint: tf.train.Checkpoint  # model only
    best_manager: tf.train.CheckpointManager  # best/: the best validation checkpoint


def _build_state(cfg: Config, task: Task, strategy, out_dir: str) -> _TrainState:
    """Builds model, optimizer and counters inside the strategy scope, their checkpoint managers, and restores
    the newest checkpoint of out_dir if there is one."""
    with strategy.scope():
        model = task.build_model()
        optimizer = make_optimizer(cfg)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        best_score = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_score")

    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, best_score=best_score)
    manager = tf.train.CheckpointManager(ckpt, _checkpoint_dir(out_dir, strategy, run_dir.CHECKPOINTS),
                                         max_to_keep=cfg.train.keep_checkpoints)
    best_ckpt = tf.train.Checkpoint(model=model)
    best_manager = tf.train.CheckpointManager(best_ckpt, _checkpoint_dir(out_dir, strategy, run_dir.BEST),
                                              max_to_keep=1)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resumed from {manager.latest_checkpoint} at step {int(step.numpy())}", file=sys.stderr)
    return _TrainState(model, optimizer, step, best_score, ckpt, manager, best_ckpt, best_manager)


def _distributed_train_step(task: Task, model, optimizer, strategy, global_batch: int, clip: float):
    """-> ``train_step(iterator)``: one optimizer step on every replica (a ``tf.function``), returning the
    loss summed over replicas (each replica's loss is already divided by the global batch: the mean)."""

    def replica_step(batch):
        with tf.GradientTape() as tape:
            loss = task.loss(model, batch, global_batch, training=True)
            scaled = optimizer.scale_loss(loss)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(scaled, model.trainable_variables)]  # dense
        # Element-wise clipping (paper: at 5) of the *global* gradient, so every strategy trains alike:
        # sum over replicas, clip, then hand each replica 1/n of it (the optimizer sums the replicas again).
        n = strategy.num_replicas_in_sync
        if n > 1:
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if clip:
            scale = optimizer.dynamic_scale if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else 1.0
            limit = clip * tf.cast(scale, tf.float32)
            grads = [tf.clip_by_value(g, -tf.cast(limit, g.dtype), tf.cast(limit, g.dtype)) for g in grads]
        if n > 1:
            grads = [g / n for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(it):
        per_replica = strategy.run(replica_step, args=(next(it),))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


class _Bookkeeping:
    """What happens after each step: TensorBoard scalars every log_every steps; every eval_every steps (and at
    the last) validation, keeping the best checkpoint and appending to history.jsonl; checkpoints every
    checkpoint_every steps (and at the last). ``best`` is the best validation entry of this call."""

    def __init__(self, cfg: Config, task: Task, state: _TrainState, out_dir: str, chief: bool):
        self.cfg, self.task, self.state, self.chief = cfg, task, state, chief
        run = run_dir.RunDir(out_dir)
        self.writer = (tf.summary.create_file_writer(run.tensorboard_dir) if chief
                       else tf.summary.create_noop_writer())
        self.history_path = run.history_path
        self.best = {}

    def after_step(self, s: int, loss_value: float) -> None:
        t = self.cfg.train
        last = s == t.steps
        if s % t.log_every == 0 or last:
            with self.writer.as_default():
                tf.summary.scalar("train/loss", loss_value, step=s)
                tf.summary.scalar("train/learning_rate", t.learning_rate, step=s)
        if (t.eval_every and s % t.eval_every == 0) or last:
            self._validate(s, loss_value)
        if s % t.checkpoint_every == 0 or last:
            self.state.manager.save(checkpoint_number=s)

    def _validate(self, s: int, loss_value: float) -> None:
        metrics = self.task.validate(self.state.model)
        improved = metrics["score"] > float(self.state.best_score.numpy())
        if improved:
            self.state.best_score.assign(metrics["score"])
            self.state.best_manager.save(checkpoint_number=s)
            self.best = {"step": s, **metrics}
        with self.writer.as_default():
            for k, v in metrics.items():
                tf.summary.scalar(f"val/{k}", float(v), step=s)
        if self.chief:
            with open(self.history_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": s, "loss": loss_value, "improved": bool(improved),
                                    **{k: float(v) for k, v in metrics.items()}}) + "\n")
            print(f"\nstep {s} validation: " + ", ".join(f"{k} {float(v):.3f}" for k, v in metrics.items())
                  + (" (best)" if improved else ""), file=sys.stderr)

    def close(self) -> None:
        self.writer.flush()


def _save_best_model(task: Task, state: _TrainState, out_dir: str, chief: bool) -> None:
    """Final model = best validation checkpoint; the chief writes it with ``task.save_model``."""
    if state.best_manager.latest_checkpoint:
        state.best_checkpoint.restore(state.best_manager.latest_checkpoint).expect_partial()
    if chief:
        task.save_model(state.model, out_dir)


def train(cfg: Config, task_cls, *, out_dir: str | None = None, progress: bool = True,
          stop_after: int | None = None) -> TrainResult:
    """Trains ``task_cls(cfg)`` for ``cfg.train.steps`` steps, resuming from the newest checkpoint in out_dir.

    ``stop_after`` ends this call after that many steps of this run (the run can be resumed later).
    """
    out_dir = out_dir or cfg.runtime.output_dir
    if getattr(task_cls, "name", None) in run_dir.TASK_MODELS and cfg.train.task != task_cls.name:
        # The saved config says which task made the run (RunDir refuses a run of another task).
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, task=task_cls.name))
    keras.utils.set_random_seed(cfg.train.seed)
    _set_precision(cfg)
    strategy = get_distribution_strategy(cfg.runtime.strategy, cfg.runtime.devices, cfg.runtime.tpu)
    chief = is_chief(strategy)
    if chief:
        os.makedirs(out_dir, exist_ok=True)
        save_config(cfg, out_dir, run_dir.CONFIG)
    task = task_cls(cfg)
    global_batch = cfg.train.batch_size
    if global_batch % strategy.num_replicas_in_sync:
        raise ValueError(f"train.batch_size {global_batch} is not divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")

    state = _build_state(cfg, task, strategy, out_dir)
    step = state.step
    # The input stream is deterministic (seeded shuffles), so resuming skips the batches already consumed:
    # the run continues with exactly the batches it would have seen, on every strategy.
    done_steps = int(step.numpy())
    dist_ds = strategy.distribute_datasets_from_function(lambda ctx: task.dataset(ctx).skip(done_steps))
    iterator = iter(dist_ds)
    train_step = _distributed_train_step(task, state.model, state.optimizer, strategy, global_batch,
                                         cfg.train.clip_value)
    book = _Bookkeeping(cfg, task, state, out_dir, chief)

    total = cfg.train.steps
    bar = _Progress(total, done_steps, progress and chief)
    t0 = time.time()
    loss_value = float("nan")
    ran = 0
    losses = []
    while int(step.numpy()) < total and (stop_after is None or ran < stop_after):
        loss_value = float(train_step(iterator))
        if not np.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at step {int(step.numpy()) + 1}; "
                                     f"lower train.learning_rate or check the input data")
        step.assign_add(1)
        ran += 1
        losses.append(loss_value)
        s = int(step.numpy())
        bar.update(s, loss_value)
        book.after_step(s, loss_value)
    book.close()
    if int(step.numpy()) >= total:
        _save_best_model(task, state, out_dir, chief)
    if not chief:
        shutil.rmtree(_worker_dir(out_dir, strategy), ignore_errors=True)
    history = run_dir.RunDir(out_dir).read_history()
    best = book.best
    if not best and history:
        best = max(history, key=lambda h: h.get("score", -np.inf))
    return TrainResult(steps=int(step.numpy()), final_loss=loss_value, best=best, history=history,
                       seconds=time.time() - t0, losses=losses)
