"""Two ways to load and run a SavedModel's signatures: TF Serving's (a session) and TF2's (the object graph).

TF Serving's C++ ``SavedModelBundle`` (and ``saved_model_cli run``) imports the meta graph tagged ``serve`` into a
session, restores the variables with the graph's saver (``saver_def.restore_op_name`` fed with the
``variables/`` prefix), runs the init op (tables from assets), and then answers each request with one
``Session::Run``: feed the signature's input tensor names, fetch its output tensor names. That is
:class:`SessionModel`, the development server's default, so every gRPC test exercises production's path.

:class:`ObjectModel` is ``tf.saved_model.load``: it restores through the TF2 object graph, which rebinds what the
functions capture and so can succeed where the session path fails (Keras 3 variables held by a ``tf.Module``:
tensorflow/serving#2226). It stays as an option (``--loader object``) for models that only TF2 programs load.

Both expose ``signature_defs`` (the meta graph's map as stored, TF's ``__saved_model_init_op`` entry included, as
TF Serving's GetModelMetadata returns it) and ``run(signature, inputs, outputs)`` on numpy arrays, so the server
does not care which one it holds.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from karpalign.serving import specs

LOADERS = ("session", "object")


class SessionModel:
    """A SavedModel in its own ``tf.Graph`` and ``tf.compat.v1.Session``, restored by the graph's saver.

    Raises what the loader raises (e.g. ``FailedPreconditionError`` from the init op or a missing variable
    only on the first run that reads it); callers treat any exception as a failed load or request.
    """

    loader = "session"

    def __init__(self, path: str, tags: tuple[str, ...] = (specs.SERVE_TAG,)):
        self.path = path
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        try:
            with self.graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(self.session, list(tags), path)
        except Exception:
            self.session.close()
            raise
        self.signature_defs = dict(meta_graph.signature_def)  # as stored, init-op entry included

    def run(self, signature_name: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """One ``Session::Run``: inputs by alias (numpy, the signature's dtypes) -> the requested outputs."""
        signature = self.signature_defs[signature_name]
        feeds = {signature.inputs[alias].name: value for alias, value in inputs.items()}
        fetches = {alias: signature.outputs[alias].name for alias in outputs}
        return self.session.run(fetches, feed_dict=feeds)

    def close(self) -> None:
        self.session.close()


class ObjectModel:
    """A SavedModel loaded by ``tf.saved_model.load`` (TF2's object graph); signatures called eagerly."""

    loader = "object"

    def __init__(self, path: str, tags: tuple[str, ...] = (specs.SERVE_TAG,)):
        self.path = path
        self.signature_defs = specs.read_signature_defs(path, tags[0])  # as stored, init-op entry included
        self.module = tf.saved_model.load(path, tags=list(tags))  # keeps the functions' variables alive
        self.functions = dict(self.module.signatures)

    def run(self, signature_name: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        signature = self.signature_defs[signature_name]
        arguments = {alias: tf.constant(value, dtype=tf.dtypes.as_dtype(signature.inputs[alias].dtype))
                     for alias, value in inputs.items()}
        result = self.functions[signature_name](**arguments)
        return {alias: result[alias].numpy() for alias in outputs}

    def close(self) -> None:
        pass


def load_saved_model(path: str, loader: str = "session") -> SessionModel | ObjectModel:
    """Loads ``path`` with ``loader`` ('session': TF Serving's way, the default; 'object': tf.saved_model.load)."""
    if loader == "session":
        return SessionModel(path)
    if loader == "object":
        return ObjectModel(path)
    raise ValueError(f"unknown SavedModel loader {loader!r}; use one of {LOADERS}")
