"""Shared checks for karpalign's Keras layers and models (keras-hub's ``TestCase`` helpers, as functions).

Import them as ``from tests.helpers import run_serialization_test``: with ``--import-mode=importlib`` pytest
imports the test files as modules of the ``tests`` package under the rootdir, however it is started.
"""

from __future__ import annotations

import inspect
import json
import os

import keras
import numpy as np
import tensorflow as tf


def init_parameters(cls) -> list[str]:
    """The named ``__init__`` parameters of ``cls`` (without ``self``, ``*args`` and ``**kwargs``)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def plain(config):
    """A config as JSON stores it (tuples become lists, e.g. a build config's input shape)."""
    return json.loads(json.dumps(config))


def _same_argument(a, b) -> bool:
    """Equal constructor arguments; layers compare by class and config."""
    if isinstance(a, keras.layers.Layer) or isinstance(b, keras.layers.Layer):
        return type(a) is type(b) and plain(a.get_config()) == plain(b.get_config())
    return a == b


def weight_structure(layer) -> list[tuple]:
    """(name, shape, trainable) of every variable, in order.

    Names, not paths: a sub-layer that ``from_config`` deserializes is built from its own build config before
    its parent, so its variable paths lack the parent's prefix. Nothing reads the paths (a ``.keras`` file
    matches weights by object), so they are left out.
    """
    return [(w.name, tuple(w.shape), w.trainable) for w in layer.weights]


def assert_same_weights(a, b):
    """Same variables (name, shape, trainable flag) with exactly the same values."""
    assert weight_structure(a) == weight_structure(b)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy(), err_msg=wa.path)


def assert_same_outputs(a, b, atol=1e-6):
    """Same (nested) outputs, to ``atol``."""
    flat_a, flat_b = tf.nest.flatten(a), tf.nest.flatten(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def run_serialization_test(cls, init_kwargs: dict, call, tmp_path, *, initialised_weights: dict | None = None):
    """Config and ``.keras`` round trips of ``cls(**init_kwargs)``; returns ``(layer, rebuilt, loaded)``.

    Args:
        cls: a registered Keras layer or model class.
        init_kwargs: constructor arguments; give non-default values so a dropped one shows.
        call: ``call(layer) -> outputs`` on fixed inputs (inference mode); it also builds the layer.
        tmp_path: folder for the ``.keras`` file.
        initialised_weights: ``{argument: layer -> variable}`` for every array argument that only sets a
            weight's initial value. ``get_config`` must return it as ``None`` (the weight is saved anyway);
            when ``init_kwargs`` gives it, the variable must hold that array in the layer, the rebuilt layer
            (after ``set_weights``) and the loaded one.

    Checks:
        1. ``get_config`` is JSON-serialisable and has a key for every ``__init__`` parameter.
        2. The layer stores every argument (``layer.<name>`` is the value given) and ``from_config`` restores
           it: the rebuilt layer's attributes equal the original's, its config is the same, and so are its
           variables (names, shapes, trainable flags). After ``set_weights`` it gives the same outputs.
        3. ``.keras`` save/load gives the same class and config, exactly the same weights (frozen ones stay
           frozen) and the same outputs.
    """
    initialised_weights = initialised_weights or {}
    layer = cls(**init_kwargs)
    outputs = call(layer)

    # 1. Every argument is in the config, which survives JSON.
    config = layer.get_config()
    json.dumps(config)  # serialisable
    names = init_parameters(cls)
    missing = [name for name in names if name not in config]
    assert not missing, f"{cls.__name__}.get_config() drops {missing}"
    for name in initialised_weights:
        assert config[name] is None, f"{name} belongs in the saved weights, not in the config"

    # 2. The arguments are stored and rebuilt.
    for name, value in init_kwargs.items():
        if name in names and name not in initialised_weights:
            assert getattr(layer, name) is value or _same_argument(getattr(layer, name), value), name
    rebuilt = cls.from_config(config)
    call(rebuilt)
    assert plain(rebuilt.get_config()) == plain(config)
    for name in names:
        if name not in initialised_weights:
            assert _same_argument(getattr(rebuilt, name), getattr(layer, name)), f"{name} is not rebuilt"
    assert weight_structure(rebuilt) == weight_structure(layer)
    rebuilt.set_weights(layer.get_weights())
    assert_same_weights(rebuilt, layer)
    assert_same_outputs(call(rebuilt), outputs)

    # 3. A .keras file restores the layer exactly.
    path = os.path.join(str(tmp_path), f"{cls.__name__}.keras")
    keras.saving.save_model(layer, path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is cls
    assert plain(loaded.get_config()) == plain(config)
    assert_same_weights(loaded, layer)
    assert_same_outputs(call(loaded), outputs)

    for name, variable in initialised_weights.items():
        if init_kwargs.get(name) is None:
            continue
        given = np.asarray(init_kwargs[name], "float32")
        for which in (layer, rebuilt, loaded):
            np.testing.assert_array_equal(variable(which).numpy(), given, err_msg=name)
    return layer, rebuilt, loaded


def subprocess_env(**extra) -> dict:
    """The environment for a karpalign/TensorFlow child process in a test: quiet TF C++ logs, unbuffered
    output, no GPU, plus ``extra``."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="", **extra)
