"""One function maps a strategy name to a ``tf.distribute`` strategy (the Model Garden's pattern).

- ``default``: no distribution (the default strategy; whatever device TF picks).
- ``one_device``: everything on one device (``devices``: e.g. '/gpu:0'; default '/cpu:0' or the first GPU).
- ``mirrored``: synchronous data parallelism over the local devices (``devices`` to choose, e.g.
  '/gpu:0,/gpu:1'; default all GPUs, else the CPU).
- ``multi_worker_mirrored``: synchronous data parallelism across workers; the cluster comes from ``TF_CONFIG``
  (``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}``); every worker runs
  the same command.
- ``tpu``: ``TPUStrategy`` on the TPU named by ``tpu`` (e.g. a Cloud TPU name or 'local'); needs a TPU host
  and cannot be tested here.
"""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def _devices(devices: str) -> list[str]:
    return [d.strip() for d in devices.split(",") if d.strip()]


def get_distribution_strategy(name: str = "default", devices: str = "", tpu: str = ""):
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        devs = _devices(devices)
        if len(devs) > 1:
            raise ValueError(f"one_device takes one device, got {devs}")
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(devs[0] if devs else ("/gpu:0" if gpus else "/cpu:0"))
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=_devices(devices) or None)
    if name == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")


def split_cpu(n: int) -> None:
    """Makes ``n`` logical CPU devices (for trying ``mirrored`` on a CPU-only host). Call before TF starts."""
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                    "chief" not in resolver.cluster_spec().as_dict())
