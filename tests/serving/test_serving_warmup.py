"""Warmup files in TF Serving's format: written, read back, replayed when a version loads."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from karpalign.serving import warmup
from karpalign.serving.server import InputLimits, ModelRepository
from karpalign.testing import export_toy_model


@pytest.fixture()
def version_dir(tmp_path):
    return export_toy_model(str(tmp_path / "toy"), version=1)


def test_write_then_read_back(version_dir, image_bytes):
    path = warmup.write_warmup_requests(
        version_dir, [("serving_default", {"images": [image_bytes(4, 4)]}),
                      ("embed_images", {"images": np.array([image_bytes(2, 2)] * 2, dtype=object)})],
        model_name="toy")
    assert path.endswith("assets.extra/tf_serving_warmup_requests")

    # The raw records are PredictionLog(predict_log=PredictLog(request=...)), as TF Serving reads them.
    raw = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
    first = prediction_log_pb2.PredictionLog.FromString(raw[0])
    assert first.WhichOneof("log_type") == "predict_log"

    requests = warmup.read_warmup_requests(version_dir)
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "embed_images"]
    assert all(r.model_spec.name == "toy" for r in requests)
    inputs = warmup.request_inputs(requests[1])
    assert inputs["images"].shape == (2,) and inputs["images"][0] == image_bytes(2, 2)


def test_warmup_is_replayed_when_a_version_loads(version_dir, image_bytes, caplog):
    warmup.write_warmup_requests(version_dir, [("serving_default", {"images": [image_bytes(3, 3)]})] * 3,
                                 model_name="toy")
    repository = ModelRepository("toy", os.path.dirname(version_dir), num_versions=1,
                                 limits=InputLimits())
    with caplog.at_level(logging.INFO, logger="karpalign.serving.server"):
        repository.poll_once()
    assert sorted(repository.versions()) == [1]
    assert "(3 warmup requests)" in caplog.text


def test_failing_warmup_fails_the_load_like_tf_serving(version_dir):
    warmup.write_warmup_requests(version_dir, [("serving_default", {"images": [b"not an image"]})],
                                 model_name="toy")
    repository = ModelRepository("toy", os.path.dirname(version_dir), num_versions=1,
                                 limits=InputLimits())
    repository.poll_once()  # logs the failure, does not raise
    assert repository.versions() == {}
    state, error = repository.status()[1]
    assert "warmup request 0 failed: INVALID_ARGUMENT" in error


def test_bad_arguments_and_files(tmp_path, version_dir):
    with pytest.raises(ValueError, match="no saved_model.pb"):
        warmup.write_warmup_requests(str(tmp_path), [("serving_default", {"images": [b"x"]})], "toy")
    with pytest.raises(ValueError, match="no requests"):
        warmup.write_warmup_requests(version_dir, [], "toy")
    with pytest.raises(ValueError, match="refuses more than 1000"):
        warmup.write_warmup_requests(version_dir, [("s", {"x": [1]})] * 1001, "toy")
    with pytest.raises(ValueError, match="warmup request 0: input 'images'"):
        warmup.write_warmup_requests(version_dir, [("serving_default", {"images": b"x"})], "toy")
    with pytest.raises(FileNotFoundError, match="no warmup requests file"):
        warmup.read_warmup_requests(str(tmp_path))

    corrupt = tmp_path / "corrupt"
    corrupt.write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="corrupt"):
        warmup.read_warmup_requests(str(corrupt))

    classify_only = tmp_path / "classify"
    with tf.io.TFRecordWriter(str(classify_only)) as writer:
        writer.write(prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog()).SerializeToString())
    with pytest.raises(ValueError, match="record 0 is a classify_log"):
        warmup.read_warmup_requests(str(classify_only))
