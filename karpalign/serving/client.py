"""A small gRPC client for TF Serving (and the karpalign development server).

    client = CaptionClient("localhost:8500", "karpalign")
    client.caption([open("dog.jpg", "rb").read()])   # [[("a dog runs on the grass", -4.2), ...]]

Every call has a deadline; UNAVAILABLE (server not up yet, connection reset) is retried with exponential
backoff, nothing else is. Failures raise a `ServingError` subclass whose message says what happened:
the server cannot be reached, the model or signature does not exist, or the server rejected the input
(its INVALID_ARGUMENT message is passed through).
"""

from __future__ import annotations

import os
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, prediction_service_pb2_grpc)

from karpalign.serving import specs
from karpalign.serving.warmup import make_predict_request

MAX_MESSAGE_BYTES = 1 << 30


class ServingError(RuntimeError):
    """Base class of client errors; `code` is the gRPC status code when the server answered."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class ServerUnavailableError(ServingError):
    """The server could not be reached (after retries)."""


class ModelNotFoundError(ServingError):
    """The server does not serve the requested model (or version)."""


class SignatureNotFoundError(ServingError):
    """The model has no signature with the requested name."""


class InvalidRequestError(ServingError):
    """The server rejected the inputs (INVALID_ARGUMENT); the message is the server's."""


class RequestTooLargeError(ServingError):
    """The request exceeded the server's message size limit."""


class DeadlineExceededError(ServingError):
    """The call did not finish within the client's timeout."""


class ImageFileError(ServingError):
    """A local image file is missing or unreadable (raised before any call)."""


def read_image_files(paths) -> list[bytes]:
    """Reads each file's bytes; raises ImageFileError naming the first missing/unreadable/empty file."""
    blobs = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ImageFileError(f"{path}: no such file")
        if not os.path.isfile(path):
            raise ImageFileError(f"{path}: not a regular file")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageFileError(f"{path}: cannot read ({e.strerror or e})") from e
        if not data:
            raise ImageFileError(f"{path}: empty file")
        blobs.append(data)
    return blobs


class CaptionClient:
    """Client for one model on one server.

    Args:
      target: "host:port" of the gRPC endpoint.
      model_name: `model_spec.name` of every request.
      signature: signature used by predict() and caption().
      timeout: deadline of each call, in seconds.
      retries: how many times a call that failed with UNAVAILABLE is retried.
      backoff: first retry delay in seconds; doubled after each retry.
      version: pin requests to one model version (default: the server's newest).
    """

    def __init__(self, target: str, model_name: str, signature: str = "serving_default",
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.2, version: int | None = None):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries and backoff must be >= 0, got {retries}, {backoff}")
        self.target = target
        self.model_name = model_name
        self.signature = signature
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.version = version
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------------------

    def _model_spec(self, signature: str | None = None) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=self.model_name, signature_name=signature or "")
        if self.version is not None:
            spec.version.value = int(self.version)
        return spec

    def _call(self, method, request, what: str):
        """Calls `method(request)` with the deadline, retrying UNAVAILABLE; maps failures to errors."""
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE and attempt + 1 < attempts:
                    time.sleep(self.backoff * (2 ** attempt))
                    continue
                raise self._error(code, details, what, attempts) from None
        raise AssertionError("unreachable: the loop returns or raises")

    def _error(self, code, details: str, what: str, attempts: int) -> ServingError:
        model = f"model {self.model_name!r}"
        if self.version is not None:
            model += f" version {self.version}"
        if code == grpc.StatusCode.UNAVAILABLE:
            return ServerUnavailableError(
                f"cannot reach server at {self.target} ({what}, {attempts} attempts): {details}", code)
        if code == grpc.StatusCode.NOT_FOUND:
            return ModelNotFoundError(f"server at {self.target} does not serve {model}: {details}", code)
        if code == grpc.StatusCode.FAILED_PRECONDITION and "signature" in details.lower():
            return SignatureNotFoundError(f"{model} on {self.target}: {details}", code)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidRequestError(f"{model} rejected the {what} request: {details}", code)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return RequestTooLargeError(f"{what} request to {self.target} too large or server overloaded: "
                                        f"{details}", code)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceededError(f"{what} request to {self.target} did not finish within "
                                         f"{self.timeout}s", code)
        return ServingError(f"{what} request to {self.target} failed with {code.name}: {details}", code)

    # ------------------------------------------------------------------------------------------------

    def predict(self, inputs: dict, signature: str | None = None,
                output_filter: list[str] | None = None) -> dict[str, np.ndarray]:
        """Runs a signature on `inputs` ({alias: array or list}); returns {output alias: array}.

        String outputs come back as numpy object arrays of bytes.
        """
        signature = signature or self.signature
        try:
            request = make_predict_request(self.model_name, signature, inputs, self.version)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        if output_filter:
            request.output_filter.extend(output_filter)
        response = self._call(self._predictions.Predict, request, "Predict")
        return {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}

    def caption(self, images: list[bytes], input_key: str = "images",
                signature: str | None = None) -> list[list[tuple[str, float]]]:
        """Captions encoded images: per image, the model's (caption, score) list, best first."""
        if not images:
            raise ValueError("caption() needs at least one image")
        for index, image in enumerate(images):
            if not isinstance(image, (bytes, bytearray)):
                raise TypeError(f"caption(): image {index} is {type(image).__name__}, expected encoded bytes")
        outputs = self.predict({input_key: np.array([bytes(b) for b in images], dtype=object)},
                               signature=signature)
        captions, scores = outputs.get("captions"), outputs.get("scores")
        if captions is None or scores is None or captions.ndim != 2 or captions.shape != scores.shape \
                or captions.shape[0] != len(images):
            shapes = {k: v.shape for k, v in outputs.items()}
            raise ServingError(f"signature {signature or self.signature!r} returned {shapes}; caption() "
                               f"needs 'captions' and 'scores' of shape ({len(images)}, K)")
        return [[(c.decode("utf-8", errors="replace"), float(s)) for c, s in zip(row_c, row_s)]
                for row_c, row_s in zip(captions, scores)]

    def caption_files(self, paths, input_key: str = "images") -> list[list[tuple[str, float]]]:
        """Reads the files (refusing missing/unreadable ones before any call) and captions them."""
        return self.caption(read_image_files(paths), input_key=input_key)

    def metadata(self) -> dict[str, dict]:
        """{signature name: {"method_name", "inputs": {alias: {dtype, shape}}, "outputs": ...}}.

        Shapes use -1 for unknown dimensions and None for unknown rank; TF's internal entries such as
        `__saved_model_init_op` are left out.
        """
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=self._model_spec(),
                                                                 metadata_field=["signature_def"])
        response = self._call(self._predictions.GetModelMetadata, request, "GetModelMetadata")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        if not response.metadata["signature_def"].Unpack(signature_map):
            raise ServingError(f"GetModelMetadata from {self.target}: 'signature_def' is not a "
                               f"SignatureDefMap")
        signatures = sorted(signature_map.signature_def.items())
        return {name: specs.describe_signature(sig) for name, sig in signatures
                if not specs.is_internal_signature(name)}

    def status(self) -> dict[int, str]:
        """{version: state name} from GetModelStatus, e.g. {2: "AVAILABLE", 1: "END"}."""
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=self._model_spec())
        response = self._call(self._models.GetModelStatus, request, "GetModelStatus")
        names = get_model_status_pb2.ModelVersionStatus.State.Name
        return {entry.version: names(entry.state) for entry in response.model_version_status}
