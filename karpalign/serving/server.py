"""A development server that speaks TensorFlow Serving's gRPC protocol for any SavedModel.

It implements the official `PredictionService` (Predict, GetModelMetadata; Classify, Regress and
MultiInference answer UNIMPLEMENTED) and `ModelService` (GetModelStatus) from `tensorflow-serving-api`, so
a client written for TF Serving works unchanged against it, and the other way round. Use it for tests,
demos and machines without Docker; deploy with the real TF Serving (see `export/README.md`).

Model layout is TF Serving's: `<model dir>/<integer version>/saved_model.pb`. A background thread polls
the model dir; a version folder is picked up once its `saved_model.pb` exists and it loads (and its
warmup requests, if any, succeed). Versions load the way TF Serving loads them (`loader="session"`: a
session restored by the graph's saver, see :mod:`karpalign.serving.loading`), so a model that TF Serving
cannot run is refused here too; `loader="object"` uses `tf.saved_model.load` instead. Failed loads are
logged and retried at the next poll, never fatal. The newest `num_versions` loadable versions are kept; requests without a version get the newest. The
set of loaded versions is an immutable dict swapped atomically, so a request that already holds a
version keeps using it until it finishes, while new requests see the new version.

Errors follow TF Serving's codes and wording where it has them: unknown model or version -> NOT_FOUND
"Servable not found for request: Latest(name)"; unknown signature -> FAILED_PRECONDITION
'Serving signature key "x" not found.'; bad inputs (keys, dtype, rank, empty batch, non-image or
oversized image bytes) -> INVALID_ARGUMENT naming the input; errors inside the model -> INVALID_ARGUMENT
(for tf.errors.InvalidArgumentError) or INTERNAL.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from karpalign.serving import images as image_checks
from karpalign.serving import specs, warmup
from karpalign.serving.loading import LOADERS, load_saved_model

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
_STATE = get_model_status_pb2.ModelVersionStatus.State


@dataclasses.dataclass
class ServerConfig:
    """Everything the development server needs.

    Attributes:
      model_base_path: folder holding version folders, or holding `<model_name>/<version>/`.
      model_name: name clients use in `model_spec.name`; defaults to the folder's name.
      host: interface to bind; loopback by default (this server has no authentication).
      port: gRPC port; 0 picks a free one (see RunningServer.port).
      poll_seconds: how often to look for new or removed version folders.
      max_request_bytes: largest accepted request message (gRPC max_receive_message_length).
      max_image_pixels: width * height limit for each image in an image input.
      image_inputs: input aliases whose string elements must be encoded images (checked before the model).
      image_formats: accepted image formats (Pillow names).
      num_versions: how many of the newest versions stay loaded (TF Serving's `latest {num_versions}`).
      workers: size of the request thread pool.
      run_warmup: replay `assets.extra/tf_serving_warmup_requests` when a version loads.
      loader: 'session' (TF Serving's loading path, the default) or 'object' (`tf.saved_model.load`).
    """

    model_base_path: str
    model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8500
    poll_seconds: float = 2.0
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_image_pixels: int = image_checks.DEFAULT_MAX_IMAGE_PIXELS
    image_inputs: tuple[str, ...] = ("images",)
    image_formats: tuple[str, ...] = image_checks.DEFAULT_IMAGE_FORMATS
    num_versions: int = 2
    workers: int = 8
    run_warmup: bool = True
    loader: str = "session"

    def __post_init__(self):
        for field in ("poll_seconds", "max_request_bytes", "max_image_pixels", "num_versions", "workers"):
            if getattr(self, field) <= 0:
                raise ValueError(f"ServerConfig.{field} must be positive, got {getattr(self, field)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"ServerConfig.port must be in 0..65535, got {self.port}")
        if self.loader not in LOADERS:
            raise ValueError(f"ServerConfig.loader must be one of {LOADERS}, got {self.loader!r}")


class RequestError(Exception):
    """A request failure with the gRPC status code to answer it with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ----------------------------------------------------------------------------------------------------
# Model folders and loaded versions
# ----------------------------------------------------------------------------------------------------

def _version_folders(model_dir: str) -> dict[int, str]:
    """{version: path} for the integer-named subfolders of model_dir (no check of their contents)."""
    found = {}
    with os.scandir(model_dir) as entries:
        for entry in entries:
            if entry.is_dir() and entry.name.isdigit():
                found[int(entry.name)] = entry.path
    return found


def resolve_model_dir(model_base_path: str, model_name: str | None) -> tuple[str, str]:
    """Returns (model name, folder holding the version folders).

    `<base>/<name>/` is used when it exists; otherwise `<base>` itself (which then names the model when
    no name is given). Raises ValueError when the base path is not a folder.
    """
    base = os.path.abspath(model_base_path)
    if not os.path.isdir(base):
        raise ValueError(f"--model-base-path {model_base_path}: not a directory")
    if model_name:
        nested = os.path.join(base, model_name)
        if os.path.isdir(nested):
            return model_name, nested
        return model_name, base
    return os.path.basename(base.rstrip(os.sep)) or "model", base


@dataclasses.dataclass
class LoadedVersion:
    """One loaded SavedModel version: its signature protos and the model that runs them."""

    version: int
    path: str
    model: object  # a karpalign.serving.loading.SessionModel or ObjectModel

    @property
    def signature_defs(self) -> dict:
        """{name: SignatureDef} as stored in saved_model.pb (TF's internal init-op entry included)."""
        return self.model.signature_defs


def load_version(version: int, path: str, loader: str = "session") -> LoadedVersion:
    """Loads a version folder with ``loader``; raises on any problem (missing file, bad graph, ...)."""
    specs.read_signature_defs(path)  # clear errors for a missing or broken saved_model.pb
    return LoadedVersion(version=version, path=path, model=load_saved_model(path, loader))


@dataclasses.dataclass(frozen=True)
class InputLimits:
    """Per-request checks beyond the signature's dtypes and shapes."""

    max_image_pixels: int = image_checks.DEFAULT_MAX_IMAGE_PIXELS
    image_inputs: tuple[str, ...] = ("images",)
    image_formats: tuple[str, ...] = image_checks.DEFAULT_IMAGE_FORMATS


# ----------------------------------------------------------------------------------------------------
# Predict: validate against the SignatureDef, run, pack outputs
# ----------------------------------------------------------------------------------------------------

def _check_input_keys(request, signature_def) -> None:
    """TF Serving's key check and message: sent keys must equal the signature's input aliases."""
    sent, expected = set(request.inputs.keys()), set(signature_def.inputs.keys())
    if sent != expected:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")


def _input_array(alias: str, proto, tensor_info, signature_name: str) -> np.ndarray:
    """Converts one request TensorProto after checking dtype, then checks rank, dims and batch size."""
    where = f"input '{alias}' of signature '{signature_name}'"
    if proto.dtype != tensor_info.dtype:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{where} expects dtype {specs.dtype_name(tensor_info.dtype)} but the request "
                           f"sent {specs.dtype_name(proto.dtype)}")
    try:
        array = tf.make_ndarray(proto)
    except Exception as e:  # numpy/TF raise ValueError or TypeError for inconsistent protos
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias} ({e})") from e
    expected = specs.shape_of(tensor_info)
    if expected is not None:
        mismatch = len(expected) != array.ndim or any(
            want >= 0 and want != got for want, got in zip(expected, array.shape))
        if mismatch:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{where} expects shape {specs.format_shape(expected)} (rank {len(expected)}) "
                               f"but the request sent shape {specs.format_shape(array.shape)} "
                               f"(rank {array.ndim})")
    if array.ndim >= 1 and array.shape[0] == 0:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{where} has an empty batch (shape {specs.format_shape(array.shape)}); "
                           f"send at least one element")
    return array


def _check_images(alias: str, array: np.ndarray, limits: InputLimits) -> None:
    """Every element of an image input must be an image of an accepted format within the pixel limit."""
    for index, data in enumerate(array.reshape(-1)):
        try:
            image_checks.check_image(data, limits.max_image_pixels, limits.image_formats)
        except ValueError as e:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{alias}' element {index}: {e}") from e


def _model_error(e: Exception) -> RequestError:
    """Maps an exception raised by the model call to a status; TF's messages carry graph context
    after a blank line, which we drop to keep the answer readable."""
    if isinstance(e, tf.errors.OpError):
        message = e.message.strip()
        lines = [line for line in message.splitlines()
                 if line.strip() and not line.startswith(("Graph execution error", "Detected at node",
                                                           "  File ", "\t", "Stack trace"))]
        short = lines[-1] if lines else message
        code = (grpc.StatusCode.INVALID_ARGUMENT if isinstance(e, tf.errors.InvalidArgumentError)
                else grpc.StatusCode.INTERNAL)
        return RequestError(code, f"model call failed: {short[:2000]}")
    return RequestError(grpc.StatusCode.INTERNAL, f"model call failed: {type(e).__name__}: {str(e)[:2000]}")


def run_predict(loaded: LoadedVersion, model_name: str, request: predict_pb2.PredictRequest,
                limits: InputLimits) -> predict_pb2.PredictResponse:
    """Validates `request` against the loaded version's signature, runs it, and builds the response."""
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    signature_def = loaded.signature_defs.get(signature_name)
    if signature_def is None or specs.is_internal_signature(signature_name):
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{signature_name}" not found.')
    _check_input_keys(request, signature_def)

    arguments = {}
    for alias in sorted(request.inputs):
        tensor_info = signature_def.inputs[alias]
        array = _input_array(alias, request.inputs[alias], tensor_info, signature_name)
        if alias in limits.image_inputs and array.dtype == object:
            _check_images(alias, array, limits)
        arguments[alias] = array

    wanted = list(request.output_filter) or sorted(signature_def.outputs)
    for alias in wanted:
        if alias not in signature_def.outputs:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"output tensor alias not found in signature: {alias} Outputs expected to be "
                               f"in the set {{{','.join(sorted(signature_def.outputs))}}}.")
    if len(set(wanted)) != len(wanted):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias in {wanted}")

    try:
        outputs = loaded.model.run(signature_name, arguments, wanted)
    except Exception as e:  # any failure inside the model must become a status, not kill the server
        raise _model_error(e) from e

    response = predict_pb2.PredictResponse()
    response.model_spec.name = model_name
    response.model_spec.version.value = loaded.version
    response.model_spec.signature_name = signature_name
    for alias in wanted:
        if alias not in outputs:
            raise RequestError(grpc.StatusCode.INTERNAL,
                               f"signature '{signature_name}' declares output '{alias}' but the function "
                               f"returned {sorted(outputs)}")
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias]))
    return response


def _replay_warmup(loaded: LoadedVersion, model_name: str, limits: InputLimits) -> int:
    """Runs the version's warmup requests, if any; raises on the first failure (as TF Serving does)."""
    path = warmup.warmup_path(loaded.path)
    if not os.path.isfile(path):
        return 0
    requests = warmup.read_warmup_requests(path)
    for index, request in enumerate(requests):
        try:
            run_predict(loaded, model_name, request, limits)
        except RequestError as e:
            raise ValueError(f"{path}: warmup request {index} failed: {e.code.name}: {e.message}") from e
    return len(requests)


# ----------------------------------------------------------------------------------------------------
# The repository of loaded versions, with polling
# ----------------------------------------------------------------------------------------------------

class ModelRepository:
    """Loads, serves and retires the versions of one model folder.

    `versions()` returns the current immutable {version: LoadedVersion} dict; `poll_once()` rescans the
    folder and swaps in a new dict when the set of served versions changes.
    """

    def __init__(self, name: str, model_dir: str, num_versions: int, limits: InputLimits,
                 run_warmup: bool = True, loader: str = "session"):
        self.name = name
        self.loader = loader
        self.model_dir = model_dir
        self.num_versions = num_versions
        self.limits = limits
        self.run_warmup = run_warmup
        self._versions: dict[int, LoadedVersion] = {}
        self._status: dict[int, tuple[int, str]] = {}  # version -> (state, error message)
        self._last_error: dict[int, str] = {}
        self._status_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def versions(self) -> dict[int, LoadedVersion]:
        return self._versions  # a single attribute read: atomic, and the dict is never mutated

    def status(self) -> dict[int, tuple[int, str]]:
        with self._status_lock:
            return dict(self._status)

    def _set_status(self, version: int, state: int, error: str = "") -> None:
        with self._status_lock:
            self._status[version] = (state, error)

    def resolve(self, model_spec: model_pb2.ModelSpec) -> LoadedVersion:
        """The version a request asks for: the newest unless `model_spec.version` names one."""
        if model_spec.version_label:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {model_spec.version_label} "
                               f"(the development server does not support version labels)")
        specific = model_spec.HasField("version")
        wanted = (f"Specific({model_spec.name}, {model_spec.version.value})" if specific
                  else f"Latest({model_spec.name})")
        versions = self.versions()
        if model_spec.name != self.name or not versions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {wanted}")
        if specific:
            loaded = versions.get(model_spec.version.value)
            if loaded is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: {wanted} "
                                   f"(loaded versions: {sorted(versions)})")
            return loaded
        return versions[max(versions)]

    def _try_load(self, version: int, path: str) -> LoadedVersion | None:
        """Loads (and warms up) one version; logs and records failures instead of raising.

        The version stays LOADING until poll_once() puts it in service and marks it AVAILABLE.
        """
        self._set_status(version, _STATE.LOADING)
        started = time.perf_counter()
        try:
            loaded = load_version(version, path, self.loader)
            replayed = _replay_warmup(loaded, self.name, self.limits) if self.run_warmup else 0
        except Exception as e:  # a bad version folder must never take the server down
            message = f"{type(e).__name__}: {e}"
            self._set_status(version, _STATE.END, message)
            if self._last_error.get(version) != message:
                log.error("model %s version %d: load failed (will retry at the next poll): %s",
                          self.name, version, message)
            else:
                log.debug("model %s version %d: load failed again: %s", self.name, version, message)
            self._last_error[version] = message
            return None
        self._last_error.pop(version, None)
        log.info("model %s version %d: loaded from %s (%s loader) in %.2fs (%d warmup requests)",
                 self.name, version, path, self.loader, time.perf_counter() - started, replayed)
        return loaded

    def poll_once(self) -> None:
        """Rescans the model folder, loads what should be served, and swaps the served set atomically.

        Walking versions newest first, a version is served if it is already loaded or loads now, until
        `num_versions` are served; so a broken newest version leaves the previous one in service.
        """
        try:
            on_disk = _version_folders(self.model_dir)
        except OSError as e:
            log.warning("model %s: cannot list %s (%s); keeping the loaded versions", self.name,
                        self.model_dir, e)
            return
        ready = {v: p for v, p in on_disk.items() if os.path.isfile(os.path.join(p, "saved_model.pb"))}
        if not ready:
            if self._versions:
                log.warning("model %s: no version folders with saved_model.pb under %s; keeping the "
                            "loaded versions", self.name, self.model_dir)
            return
        current = self._versions
        chosen: dict[int, LoadedVersion] = {}
        for version in sorted(ready, reverse=True):
            if len(chosen) == self.num_versions:
                break
            loaded = current.get(version) or self._try_load(version, ready[version])
            if loaded is not None:
                chosen[version] = loaded
        if chosen.keys() == current.keys():
            return
        self._versions = chosen  # the atomic switch; in-flight requests keep their LoadedVersion
        for version in sorted(chosen.keys() - current.keys()):
            self._set_status(version, _STATE.AVAILABLE)
        for version in sorted(current.keys() - chosen.keys()):
            self._set_status(version, _STATE.END)
            log.info("model %s version %d: unloaded", self.name, version)
        log.info("model %s: serving versions %s", self.name, sorted(chosen))

    def start_polling(self, interval: float) -> None:
        def loop():
            while not self._stop.wait(interval):
                try:
                    self.poll_once()
                except Exception:  # keep polling whatever happens
                    log.exception("model %s: unexpected error while polling", self.name)

        self._thread = threading.Thread(target=loop, name=f"karpalign-poll-{self.name}", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


# ----------------------------------------------------------------------------------------------------
# gRPC services
# ----------------------------------------------------------------------------------------------------

def _describe_inputs(request) -> str:
    """'images[3,]' style summary of the request's input shapes, for the request log line."""
    return " ".join(f"{alias}[{','.join(str(d.size) for d in proto.tensor_shape.dim)}]"
                    for alias, proto in sorted(request.inputs.items()))


def _abort(context: grpc.ServicerContext, error: RequestError):
    context.abort(error.code, error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata over a ModelRepository."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def Predict(self, request, context):
        started = time.perf_counter()
        outcome, version, shapes = "OK", "-", _describe_inputs(request)
        try:
            loaded = self.repository.resolve(request.model_spec)
            version = loaded.version
            return run_predict(loaded, self.repository.name, request, self.repository.limits)
        except RequestError as e:
            outcome = e.code.name
            _abort(context, e)
        except Exception as e:  # a bug here must answer INTERNAL, not crash the worker thread
            outcome = "INTERNAL"
            log.exception("Predict: unexpected error")
            _abort(context, RequestError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"))
        finally:
            log.debug("Predict model=%s version=%s signature=%s inputs=%s status=%s %.1fms",
                      request.model_spec.name, version,
                      request.model_spec.signature_name or DEFAULT_SIGNATURE, shapes, outcome,
                      1000 * (time.perf_counter() - started))

    def GetModelMetadata(self, request, context):
        started = time.perf_counter()
        outcome = "OK"
        try:
            if not request.HasField("model_spec"):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
            if not request.metadata_field:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != "signature_def":
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"Metadata field {field} is not supported")
            loaded = self.repository.resolve(request.model_spec)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature_def in loaded.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature_def)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = self.repository.name
            response.model_spec.version.value = loaded.version
            response.metadata["signature_def"].Pack(signature_map)
            return response
        except RequestError as e:
            outcome = e.code.name
            _abort(context, e)
        except Exception as e:  # answer INTERNAL rather than gRPC's bare UNKNOWN
            outcome = "INTERNAL"
            log.exception("GetModelMetadata: unexpected error")
            _abort(context, RequestError(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"))
        finally:
            log.debug("GetModelMetadata model=%s status=%s %.1fms", request.model_spec.name, outcome,
                      1000 * (time.perf_counter() - started))

    def Classify(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Classify is not implemented by the karpalign "
                      "development server; use Predict")

    def Regress(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Regress is not implemented by the karpalign "
                      "development server; use Predict")

    def MultiInference(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not implemented by the karpalign "
                      "development server; use Predict")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus over a ModelRepository (HandleReloadConfigRequest answers UNIMPLEMENTED)."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def GetModelStatus(self, request, context):
        spec = request.model_spec
        log.debug("GetModelStatus model=%s", spec.name)
        if not spec.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing model name in request.")
        statuses = self.repository.status() if spec.name == self.repository.name else {}
        if spec.HasField("version"):
            if spec.version.value not in statuses:
                context.abort(grpc.StatusCode.NOT_FOUND,
                              f"Could not find version {spec.version.value} of model {spec.name}")
            statuses = {spec.version.value: statuses[spec.version.value]}
        if not statuses:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in sorted(statuses, reverse=True):
            state, error = statuses[version]
            entry = response.model_version_status.add(version=version, state=state)
            if error:
                entry.status.error_code = 13  # tensorflow.error.Code INTERNAL
                entry.status.error_message = error
        return response

    def HandleReloadConfigRequest(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the development server serves one model folder; "
                      "restart it to change the configuration")


# ----------------------------------------------------------------------------------------------------
# Starting and stopping
# ----------------------------------------------------------------------------------------------------

class RunningServer:
    """A started server: its bound port, its repository, and stop()."""

    def __init__(self, server: grpc.Server, repository: ModelRepository, host: str, port: int):
        self._server = server
        self.repository = repository
        self.host = host
        self.port = port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def wait(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def stop(self, grace: float | None = 5.0) -> None:
        """Stops accepting requests, lets in-flight ones finish for `grace` seconds, stops polling."""
        self._server.stop(grace).wait()
        self.repository.stop_polling()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop(grace=1.0)


def start_server(config: ServerConfig) -> RunningServer:
    """Loads the current versions, starts polling, and starts the gRPC server.

    Returns once the server listens (with whatever versions loaded; it keeps polling for more).
    Raises ValueError for a bad base path and OSError when the address cannot be bound.
    """
    name, model_dir = resolve_model_dir(config.model_base_path, config.model_name)
    limits = InputLimits(max_image_pixels=config.max_image_pixels, image_inputs=tuple(config.image_inputs),
                         image_formats=tuple(config.image_formats))
    repository = ModelRepository(name, model_dir, config.num_versions, limits, config.run_warmup, config.loader)
    repository.poll_once()
    if not repository.versions():
        log.warning("model %s: no loadable version folder under %s yet; waiting for one", name, model_dir)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="karpalign-serve"),
        options=[("grpc.max_receive_message_length", int(config.max_request_bytes)),
                 ("grpc.max_send_message_length", 1 << 30),
                 ("grpc.so_reuseport", 0)])  # fail clearly if another process holds the port
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(repository), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(repository), server)
    address = f"{config.host}:{config.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as e:  # newer grpcio raises instead of returning 0
        raise OSError(f"cannot bind gRPC server to {address}: {e}") from e
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address} (port in use or bad host?)")
    server.start()
    repository.start_polling(config.poll_seconds)
    log.info("serving model %s from %s on %s:%d (versions %s)", name, model_dir, config.host, port,
             sorted(repository.versions()))
    return RunningServer(server, repository, config.host, port)
