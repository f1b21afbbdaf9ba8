"""Training curves of a `karpalign-train` run as PNG plots (matplotlib, Agg backend: no display needed).

Two sources, both written by :mod:`karpalign.training.loop` and nothing added to training for the report:

- ``history.jsonl``: one line per validation (``step``, ``loss`` at that step, ``score`` and the task's metrics);
- ``tensorboard/events.out.tfevents.*``: the scalar ``train/loss`` every ``train.log_every`` steps, read with
  ``tf.compat.v1.train.summary_iterator`` (TF2 summaries store scalars as tensors).
"""

from __future__ import annotations

import glob
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from karpalign.training.run_dir import RunDir  # noqa: E402

# Validation metrics worth a line, per task (first found wins the right-hand axis label).
VAL_METRICS = ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5", "perplexity")


def read_history(run_dir: str) -> list[dict]:
    """The validation records of a run (empty when the run never validated); bad lines name file and line."""
    return RunDir(run_dir).read_history()


def read_scalars(run_dir: str, tag: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) of one scalar tag from the run's TensorBoard event files, sorted by step (last write wins)."""
    files = sorted(glob.glob(os.path.join(RunDir(run_dir).tensorboard_dir, "events.out.tfevents.*")))
    if not files:
        return []
    import tensorflow as tf

    values: dict[int, float] = {}
    for path in files:
        try:
            for raw in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(raw.numpy())
                for v in event.summary.value:
                    if v.tag != tag:
                        continue
                    if v.HasField("tensor"):
                        values[int(event.step)] = float(tf.make_ndarray(v.tensor))
                    else:
                        values[int(event.step)] = float(v.simple_value)
        except tf.errors.DataLossError:
            continue  # a file still being written ends in a partial record; keep what was read
    return sorted(values.items())


def plot_run(run_dir: str, out_png: str, title: str) -> str | None:
    """Training loss (left axis) and validation metrics (right axis) of one run; None when there is no data."""
    loss = read_scalars(run_dir)
    history = read_history(run_dir)
    if not loss and not history:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.4), dpi=100)
    if loss:
        ax.plot([s for s, _ in loss], [v for _, v in loss], color="tab:blue", lw=1.2, label="train loss")
    elif history:
        ax.plot([h["step"] for h in history], [h.get("loss") for h in history], "o-", color="tab:blue",
                label="train loss (at validation)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color="tab:blue")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    metrics = [m for m in VAL_METRICS if history and all(m in h for h in history)]
    if metrics:
        right = ax.twinx()
        steps = [h["step"] for h in history]
        for m, colour in zip(metrics, ("tab:orange", "tab:green", "tab:red", "tab:purple")):
            right.plot(steps, [h[m] for h in history], "o-", ms=3, color=colour, label=f"val {m}")
        right.set_ylabel("validation", color="tab:orange")
        h2, l2 = right.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
