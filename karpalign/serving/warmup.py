"""TF Serving warmup requests: `<saved_model_dir>/assets.extra/tf_serving_warmup_requests`.

When TF Serving loads a model version it replays the PredictionLog records in this TFRecord file before
marking the version AVAILABLE, so the first real request does not pay for graph tracing and kernel
initialisation (for us: the beam search `tf.while_loop` and the image decoder). A failing warmup request
fails the load, and a file with more than 1000 records is rejected. The development server in
`karpalign.serving.server` follows the same rules.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords


def warmup_path(saved_model_dir: str) -> str:
    """Where TF Serving looks for the warmup file of one SavedModel version folder."""
    return os.path.join(saved_model_dir, WARMUP_DIR, WARMUP_FILE)


def make_predict_request(model_name: str, signature_name: str, inputs: dict,
                         version: int | None = None) -> predict_pb2.PredictRequest:
    """A PredictRequest whose inputs are `tf.make_tensor_proto` of each value (array, list or tensor)."""
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
    if version is not None:
        request.model_spec.version.value = int(version)
    for key, value in inputs.items():
        if isinstance(value, (bytes, str)):
            raise ValueError(f"input {key!r}: got a single {type(value).__name__}; wrap it in a list to "
                             f"send a batch of one")
        if isinstance(value, tf.Tensor):
            value = value.numpy()
        try:
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        except (TypeError, ValueError) as e:
            raise ValueError(f"input {key!r}: cannot convert to a TensorProto ({e})") from e
    return request


def write_warmup_requests(saved_model_dir: str, requests: list[tuple[str, dict]],
                          model_name: str) -> str:
    """Writes `requests` [(signature_name, {input alias: array})] as the version's warmup file.

    Each record is `PredictionLog(predict_log=PredictLog(request=PredictRequest(...)))`, as in TF
    Serving's resnet_warmup example. Returns the file path. Overwrites an existing warmup file.
    """
    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise ValueError(f"{saved_model_dir}: not a SavedModel version folder (no saved_model.pb)")
    if not requests:
        raise ValueError("write_warmup_requests: no requests given; TF Serving treats a missing file as "
                         "'no warmup', so do not write an empty one")
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(f"write_warmup_requests: {len(requests)} requests, but TF Serving refuses more than "
                         f"{MAX_WARMUP_RECORDS}")
    records = []
    for index, item in enumerate(requests):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict)):
            raise ValueError(f"warmup request {index}: expected (signature_name, dict of inputs), "
                             f"got {item!r:.80}")
        signature_name, inputs = item
        try:
            request = make_predict_request(model_name, signature_name, inputs)
        except ValueError as e:
            raise ValueError(f"warmup request {index}: {e}") from e
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())

    path = warmup_path(saved_model_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


def read_warmup_requests(path: str) -> list[predict_pb2.PredictRequest]:
    """Reads a warmup file (or the one inside a SavedModel folder) back as PredictRequests.

    Raises ValueError naming the file and record for unreadable records, non-Predict logs, or more than
    MAX_WARMUP_RECORDS records; FileNotFoundError when there is no file.
    """
    if os.path.isdir(path):
        path = warmup_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no warmup requests file")
    requests = []
    try:
        for index, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if index >= MAX_WARMUP_RECORDS:
                raise ValueError(f"{path}: more than {MAX_WARMUP_RECORDS} warmup records "
                                 f"(TF Serving's limit)")
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(record)
            except Exception as e:  # protobuf DecodeError
                raise ValueError(f"{path}: record {index} is not a PredictionLog ({e})") from e
            kind = log.WhichOneof("log_type")
            if kind != "predict_log":
                raise ValueError(f"{path}: record {index} is a {kind or 'empty'} PredictionLog; only "
                                 f"predict_log warmup records are supported")
            requests.append(log.predict_log.request)
    except tf.errors.DataLossError as e:
        raise ValueError(f"{path}: corrupt TFRecord file ({e.message})") from e
    return requests


def request_inputs(request: predict_pb2.PredictRequest) -> dict[str, np.ndarray]:
    """The inputs of a PredictRequest as numpy arrays (strings come back as object arrays of bytes)."""
    return {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
