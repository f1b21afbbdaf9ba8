"""TF Serving's loading path (session + the graph's saver) versus TF2's object path, and the regression behind it.

Keras 3 layers held by a ``tf.Module`` and written with plain ``tf.saved_model.save`` load with
``tf.saved_model.load`` but fail under a session ("Could not find variable dense/kernel"), which is how TF
Serving and ``saved_model_cli run`` load them (tensorflow/serving#2226). Our writer, ``save_for_serving``,
must pass the session path; the plain save must keep failing it, or this test no longer guards anything.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from karpalign.export.saved_model import save_for_serving
from karpalign.serving.client import CaptionClient
from karpalign.serving.loading import ObjectModel, SessionModel, load_saved_model
from karpalign.serving.server import ServerConfig, start_server
from karpalign.serving.warmup import write_warmup_requests

X = np.array([[1.0, 2.0], [-3.0, 0.5]], np.float32)


class KerasInModule(tf.Module):
    """What users write: a Keras 3 layer (and a lookup table) held by a tf.Module with a serving function."""

    def __init__(self):
        super().__init__()
        keras.utils.set_random_seed(3)
        self.dense = keras.layers.Dense(3, bias_initializer="ones")
        self.dense.build((None, 2))
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(["neg", "pos"]), tf.constant([-1, 1])), 0)

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def predict(self, x):
        y = self.dense(x)  # (B, 3)
        signs = tf.where(y[:, 0] > 0, "pos", "neg")  # (B,)
        return {"y": y, "sign": self.table.lookup(signs)}


def _write(path, fixed: bool) -> dict:
    module = KerasInModule()
    signatures = {"serving_default": module.predict}
    if fixed:
        save_for_serving(module, str(path), signatures)
    else:
        tf.saved_model.save(module, str(path), signatures=signatures)
    write_warmup_requests(str(path), [("serving_default", {"x": X})], "m")
    return {k: v.numpy() for k, v in module.predict(tf.constant(X)).items()}


def test_our_writer_passes_the_session_path(tmp_path):
    expected = _write(tmp_path / "1", fixed=True)
    session = SessionModel(str(tmp_path / "1"))
    got = session.run("serving_default", {"x": X}, ["y", "sign"])
    np.testing.assert_allclose(got["y"], expected["y"], atol=1e-6)
    np.testing.assert_array_equal(got["sign"], expected["sign"])
    assert sorted(session.signature_defs) == ["__saved_model_init_op", "serving_default"]
    objects = ObjectModel(str(tmp_path / "1")).run("serving_default", {"x": X}, ["y"])
    np.testing.assert_allclose(objects["y"], expected["y"], atol=1e-6)


def test_plain_saved_model_save_fails_the_session_path_but_not_tf2(tmp_path):
    expected = _write(tmp_path / "1", fixed=False)
    # The TF2 object path hides the problem...
    objects = load_saved_model(str(tmp_path / "1"), "object").run("serving_default", {"x": X}, ["y"])
    np.testing.assert_allclose(objects["y"], expected["y"], atol=1e-6)
    # ...the session path, TF Serving's, does not.
    session = load_saved_model(str(tmp_path / "1"), "session")
    with pytest.raises(tf.errors.FailedPreconditionError, match="Could not find variable"):
        session.run("serving_default", {"x": X}, ["y"])


def test_unknown_loader_is_refused():
    with pytest.raises(ValueError, match="unknown SavedModel loader 'tf1'"):
        load_saved_model("/nowhere", "tf1")
    with pytest.raises(ValueError, match="ServerConfig.loader"):
        ServerConfig(model_base_path="/nowhere", loader="tf1")


def test_dev_server_refuses_what_tf_serving_could_not_run(tmp_path):
    """Version 1 (plain save) loads but its warmup fails under the session: refused with the error, as TF
    Serving would. Version 2 (our writer) goes into service. The object loader would have served version 1."""
    _write(tmp_path / "m" / "1", fixed=False)
    config = ServerConfig(model_base_path=str(tmp_path), model_name="m", port=0, poll_seconds=60.0, workers=2)
    with start_server(config) as running:
        assert running.repository.versions() == {}
        state, error = running.repository.status()[1]
        assert "warmup request 0 failed" in error and "Could not find variable" in error
        with CaptionClient(running.address, "m") as client:
            assert client.status() == {1: "END"}
        expected = _write(tmp_path / "m" / "2", fixed=True)
        running.repository.poll_once()
        assert sorted(running.repository.versions()) == [2]
        with CaptionClient(running.address, "m") as client:
            got = client.predict({"x": X})
        np.testing.assert_allclose(got["y"], expected["y"], atol=1e-6)

    object_config = ServerConfig(model_base_path=str(tmp_path), model_name="m", port=0, poll_seconds=60.0,
                                 workers=2, loader="object", num_versions=2)
    with start_server(object_config) as running:
        assert sorted(running.repository.versions()) == [1, 2]
