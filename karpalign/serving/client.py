"""A small gRPC client for TF Serving (and the karpalign development server).

    client = CaptionClient("localhost:8500", "karpalign")
    client.caption([open("dog.jpg", "rb").read()])   # [[("a dog runs on the grass", -4.2), ...]]

Every call has a deadline; UNAVAILABLE (server not up yet, connection reset) is retried with exponential
backoff, nothing else is. Failures raise a `ServingError` subclass whose message says what happened:
the server cannot be reached, the model or signature does not exist, or the server rejected the input
(its INVALID_ARGUMENT message is passed through).

For many images where one bad file must not cost the others their captions, use `caption_each` (or
`iter_captions`, which yields as it goes): it returns one `CaptionResult` per input, in order. Files are
read and checked locally first with the server's own checks (:func:`karpalign.serving.images.check_image`:
format allow-list, pixel limit), the good ones are sent in batches, and a batch the server refuses because
of one element (INVALID_ARGUMENT, or a message over the server's size limit) is split until only the
culprit is left, which gets the server's reason as its error:

    for result in client.caption_each(["a.jpg", "b.png", "missing.jpg"]):
        print(result.name, result.captions[0] if result.ok else result.error)
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Iterable, Iterator

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, prediction_service_pb2_grpc)

from karpalign.serving import specs
from karpalign.serving.images import DEFAULT_IMAGE_FORMATS, DEFAULT_MAX_IMAGE_PIXELS, check_image
from karpalign.serving.warmup import make_predict_request

MAX_MESSAGE_BYTES = 1 << 30


class ServingError(RuntimeError):
    """Base class of client errors; `code` is the gRPC status code when the server answered."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None, details: str | None = None):
        super().__init__(message)
        self.code = code
        self.details = details  # the server's own message, when it answered


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
    """A local image file is missing or unreadable (raised before any call); `reason` leaves out the path."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_image_file(path) -> bytes:
    """One file's bytes; raises ImageFileError when it is missing, not a regular file, unreadable or empty."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageFileError(path, "no such file")
    if not os.path.isfile(path):
        raise ImageFileError(path, "not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageFileError(path, f"cannot read ({e.strerror or e})") from e
    if not data:
        raise ImageFileError(path, "empty file")
    return data


def read_image_files(paths) -> list[bytes]:
    """Reads each file's bytes; raises ImageFileError naming the first missing/unreadable/empty file."""
    return [read_image_file(path) for path in paths]


@dataclasses.dataclass(frozen=True)
class CaptionResult:
    """The outcome for one input of `CaptionClient.caption_each`.

    Attributes:
      index: position of the input in the list given to caption_each.
      path: the file's path, or None when the input was encoded bytes.
      captions: the model's (caption, score) pairs, best first; None when the image failed.
      error: why the image got no captions (the local check's or the server's reason); None on success.
    """

    index: int
    path: str | None
    captions: list[tuple[str, float]] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def name(self) -> str:
        """The path, or "image <index>" for bytes inputs: what messages call this input."""
        return self.path if self.path is not None else f"image {self.index}"

    def to_dict(self, top_k: int | None = None) -> dict:
        """{"path", "captions": [{"text", "score"}] or None, "error"}: JSON-ready (bytes inputs also get
        "index"); `top_k` keeps only the best captions."""
        captions = None
        if self.captions is not None:
            kept = self.captions if top_k is None else self.captions[:top_k]
            captions = [{"text": text, "score": float(score)} for text, score in kept]
        out = {"path": self.path, "captions": captions, "error": self.error}
        if self.path is None:
            out = {"index": self.index, **out}
        return out


# INVALID_ARGUMENT answers about the request as a whole (wrong input alias, dtype, rank, output filter,
# version label): no element is to blame, so splitting the batch would only repeat the error per image.
_REQUEST_LEVEL_ERRORS = ("input size does not match signature", "expects dtype", "expects shape",
                         "output tensor alias", "tensor parsing error", "version label", "empty batch")
# gRPC's wording when a message exceeds the receiver's max_receive_message_length.
_MESSAGE_TOO_LARGE = ("larger than max", "message too large", "exceeds maximum")


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
                f"cannot reach server at {self.target} ({what}, {attempts} attempts): {details}", code,
                details)
        if code == grpc.StatusCode.NOT_FOUND:
            return ModelNotFoundError(f"server at {self.target} does not serve {model}: {details}", code,
                                      details)
        if code == grpc.StatusCode.FAILED_PRECONDITION and "signature" in details.lower():
            return SignatureNotFoundError(f"{model} on {self.target}: {details}", code, details)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidRequestError(f"{model} rejected the {what} request: {details}", code, details)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return RequestTooLargeError(f"{what} request to {self.target} too large or server overloaded: "
                                        f"{details}", code, details)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceededError(f"{what} request to {self.target} did not finish within "
                                         f"{self.timeout}s", code, details)
        return ServingError(f"{what} request to {self.target} failed with {code.name}: {details}", code,
                            details)

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
        """Reads the files (refusing missing/unreadable ones before any call) and captions them.

        All or nothing: any failure raises. `caption_each` gives one result per file instead.
        """
        return self.caption(read_image_files(paths), input_key=input_key)

    def caption_each(self, items: Iterable, batch_size: int = 8, input_key: str = "images",
                     signature: str | None = None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                     image_formats=DEFAULT_IMAGE_FORMATS) -> list[CaptionResult]:
        """Captions many images, one `CaptionResult` per input, in input order; see `iter_captions`."""
        return list(self.iter_captions(items, batch_size=batch_size, input_key=input_key, signature=signature,
                                       max_image_pixels=max_image_pixels, image_formats=image_formats))

    def iter_captions(self, items: Iterable, batch_size: int = 8, input_key: str = "images",
                      signature: str | None = None, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                      image_formats=DEFAULT_IMAGE_FORMATS) -> Iterator[CaptionResult]:
        """Yields one `CaptionResult` per input, in input order, as batches finish.

        `items` are file paths (str or os.PathLike) or encoded image bytes. Each is read and checked locally
        (missing, unreadable, empty, not an image in `image_formats`, over `max_image_pixels`: the checks
        the server applies, with the same reasons) and gets an error result without any call. The others
        are sent `batch_size` at a time. When the server refuses a batch because of an element
        (INVALID_ARGUMENT naming "input '<key>' element N", INVALID_ARGUMENT from inside the model such as a
        truncated JPEG, or a request over the server's message size limit) the batch is split (the named
        element is set aside, otherwise the batch is halved) and the rest retried, so only the culprit gets
        an error. Every other failure (server unreachable after the usual retries, unknown model or
        signature, deadline, an INVALID_ARGUMENT about the request as a whole) raises a `ServingError`
        as caption() does; results yielded before it stay valid.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(items, (str, bytes, bytearray, memoryview, os.PathLike)):
            raise TypeError("iter_captions() takes a list of paths or images; wrap a single one in a list")
        pending: list[tuple[int, str | None, bytes | None, str | None]] = []  # index, path, data, error
        good = 0
        for index, item in enumerate(items):
            path, data, error = self._prepare(index, item, max_image_pixels, image_formats)
            if error is not None and not pending:
                yield CaptionResult(index, path, None, error)  # nothing queued before it: report now
                continue
            pending.append((index, path, data, error))
            if error is None:
                good += 1
                if good == batch_size:
                    yield from self._finish(pending, input_key, signature)
                    pending, good = [], 0
        if pending:
            yield from self._finish(pending, input_key, signature)

    @staticmethod
    def _prepare(index: int, item, max_image_pixels: int, image_formats):
        """(path or None, bytes or None, local error or None) for one input of iter_captions."""
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            try:
                data = read_image_file(path)
            except ImageFileError as e:
                return path, None, e.reason
        elif isinstance(item, (bytes, bytearray, memoryview)):
            path, data = None, bytes(item)
        else:
            raise TypeError(f"iter_captions(): input {index} is {type(item).__name__}, expected a path or "
                            f"encoded image bytes")
        try:
            check_image(data, max_image_pixels, image_formats)
        except ValueError as e:
            return path, None, str(e)
        return path, data, None

    def _finish(self, pending, input_key: str, signature: str | None) -> Iterator[CaptionResult]:
        """Captions the checked inputs of `pending` and yields every pending result in order."""
        outcomes = iter(self._caption_split([data for _, _, data, error in pending if error is None],
                                            input_key, signature))
        for index, path, _, error in pending:
            if error is not None:
                yield CaptionResult(index, path, None, error)
            else:
                captions, error = next(outcomes)
                yield CaptionResult(index, path, captions, error)

    def _caption_split(self, images: list[bytes], input_key: str, signature: str | None):
        """[(captions, None) or (None, error)] per image; splits the batch when one element is refused."""
        try:
            return [(row, None) for row in self.caption(images, input_key=input_key, signature=signature)]
        except InvalidRequestError as e:
            details = e.details
            if e.code != grpc.StatusCode.INVALID_ARGUMENT or details is None \
                    or any(marker in details for marker in _REQUEST_LEVEL_ERRORS):
                raise
            named = re.match(rf"input '{re.escape(input_key)}' element (\d+): (.*)", details, re.DOTALL)
            if named and int(named.group(1)) < len(images):
                culprit, reason = int(named.group(1)), named.group(2)
            elif len(images) == 1:
                culprit, reason = 0, details
            else:
                return self._caption_halves(images, input_key, signature)
            outcomes = self._caption_split(images[:culprit] + images[culprit + 1:], input_key, signature) \
                if len(images) > 1 else []
            outcomes.insert(culprit, (None, f"the server refused it (INVALID_ARGUMENT): {reason}"))
            return outcomes
        except RequestTooLargeError as e:
            if not any(marker in (e.details or "").lower() for marker in _MESSAGE_TOO_LARGE):
                raise  # RESOURCE_EXHAUSTED for another reason (an overloaded server): not the images' fault
            if len(images) > 1:
                return self._caption_halves(images, input_key, signature)
            return [(None, f"too large for the server (RESOURCE_EXHAUSTED): {e.details}")]

    def _caption_halves(self, images: list[bytes], input_key: str, signature: str | None):
        middle = len(images) // 2
        return (self._caption_split(images[:middle], input_key, signature)
                + self._caption_split(images[middle:], input_key, signature))

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
