"""The one training loop shared by every task (alignment, captioning on images or regions).

A :class:`Task` says how to build the model, the per-replica dataset, the per-replica loss and the validation
metric; :func:`train` does the rest the same way for all tasks: strategy scope, optimizer with element-wise
clipping, checkpoints every N steps with resume (model, optimizer, step and input position), TensorBoard
scalars, a progress bar, validation with the best checkpoint kept, seeds and mixed precision.
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


def _checkpoint_dir(out_dir: str, strategy, name: str) -> str:
    """Chief writes under out_dir; other workers write to a scratch folder (they must take part in saving)."""
    base = os.path.join(out_dir, name)
    if is_chief(strategy):
        return base
    resolver = strategy.cluster_resolver
    return os.path.join(out_dir, f".worker_{resolver.task_type}_{resolver.task_id}", name)


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
    best_manager = tf.train.CheckpointManager(best_ckpt, _checkpoint_dir(out_dir, strategy, run_dir.BEST), max_to_keep=1)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"resumed from {manager.latest_checkpoint} at step {int(step.numpy())}", file=sys.stderr)

    # The input stream is deterministic (seeded shuffles), so resuming skips the batches already consumed:
    # the run continues with exactly the batches it would have seen, on every strategy.
    done_steps = int(step.numpy())
    dist_ds = strategy.distribute_datasets_from_function(lambda ctx: task.dataset(ctx).skip(done_steps))
    iterator = iter(dist_ds)

    clip = cfg.train.clip_value

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

    writer = tf.summary.create_file_writer(run_dir.RunDir(out_dir).tensorboard_dir) if chief else \
        tf.summary.create_noop_writer()
    history_path = run_dir.RunDir(out_dir).history_path
    total = cfg.train.steps
    start = int(step.numpy())
    bar = _Progress(total, start, progress and chief)
    eval_every = cfg.train.eval_every
    t0 = time.time()
    loss_value = float("nan")
    ran = 0
    best = {}
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
        if s % cfg.train.log_every == 0 or s == total:
            with writer.as_default():
                tf.summary.scalar("train/loss", loss_value, step=s)
                tf.summary.scalar("train/learning_rate", cfg.train.learning_rate, step=s)
        if (eval_every and s % eval_every == 0) or s == total:
            metrics = task.validate(model)
            improved = metrics["score"] > float(best_score.numpy())
            if improved:
                best_score.assign(metrics["score"])
                best_manager.save(checkpoint_number=s)
                best = {"step": s, **metrics}
            with writer.as_default():
                for k, v in metrics.items():
                    tf.summary.scalar(f"val/{k}", float(v), step=s)
            if chief:
                with open(history_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": s, "loss": loss_value, "improved": bool(improved),
                                        **{k: float(v) for k, v in metrics.items()}}) + "\n")
                print(f"\nstep {s} validation: " + ", ".join(f"{k} {float(v):.3f}" for k, v in metrics.items())
                      + (" (best)" if improved else ""), file=sys.stderr)
        if s % cfg.train.checkpoint_every == 0 or s == total:
            manager.save(checkpoint_number=s)
    writer.flush()
    if int(step.numpy()) >= total:
        # Final model = best validation checkpoint.
        if best_manager.latest_checkpoint:
            best_ckpt.restore(best_manager.latest_checkpoint).expect_partial()
        if chief:
            task.save_model(model, out_dir)
    if not chief:
        shutil.rmtree(os.path.join(out_dir, f".worker_{strategy.cluster_resolver.task_type}_"
                                            f"{strategy.cluster_resolver.task_id}"), ignore_errors=True)
    history = run_dir.RunDir(out_dir).read_history()
    if not best and history:
        best = max(history, key=lambda h: h.get("score", -np.inf))
    return TrainResult(steps=int(step.numpy()), final_loss=loss_value, best=best, history=history,
                       seconds=time.time() - t0, losses=losses)
