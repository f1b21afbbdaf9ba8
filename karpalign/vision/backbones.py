"""Pluggable CNN backbones: one interface, three sources, chosen by a spec string.

A backbone turns images into one feature vector each. Specs (also the ``name`` recorded in manifests, so
``get_backbone(backbone.name)`` rebuilds the same backbone):

- ``efficientnet_lite0``          built-in EfficientNet-Lite0 with ImageNet weights, 1280-d, 224 px (default)
- ``keras:<path>``                a Keras model file (.keras / .h5); a 4-D output is global-average-pooled
- ``hub:<handle or folder>``      anything ``tensorflow_hub.load`` opens (honours ``TFHUB_CACHE_DIR``; a local
                                  SavedModel folder works too); a 4-D output is global-average-pooled

Options follow the spec after ``|``: ``|size=H,W`` (the default input size) and ``|range=LO,HI`` (pixel values
0..255 are mapped linearly onto LO..HI before the model sees them). Defaults: ``keras:`` models get raw
0..255 pixels (save your model with its own preprocessing layers inside, as keras.applications models such
as EfficientNet do); ``hub:`` models get 0..1, the TF Hub image convention. The built-in backbone's
preprocessing is fixed by its weights.

The pixel mapping (:meth:`Backbone.normalize`) and the chunked, pooled network call (:meth:`Backbone.__call__`)
are :func:`karpalign.vision.region_features.map_pixels` and :func:`~karpalign.vision.region_features.cnn_features_tf`,
the functions the serving graph runs, so extraction and serving compute features the same way.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

import numpy as np
import tensorflow as tf

from karpalign.vision.region_features import cnn_features_tf, map_pixels, pixel_mapping

DEFAULT_SPEC = "efficientnet_lite0"
DEFAULT_INPUT_SIZE = (224, 224)
_IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32)  # any batch, any size


class _Traced:
    """``fn`` as a callable object, for ``tf.function``.

    TensorFlow keeps its retracing statistics per Python code object, so the lambdas of every Backbone in a
    process share one counter, and five backbones tracing once each read as "5 out of the last 5 calls ...
    triggered tf.function retracing". A callable object is its own key: the statistics are per backbone.
    """

    def __init__(self, fn, name: str):
        self.fn = fn
        self.__name__ = name

    def __call__(self, x):
        return self.fn(x)


class Backbone:
    """Images -> (N, D) features. Subclasses pass ``model_fn``: float batch -> (N, D), (N, h, w, D) or a dict.

    Attributes: ``name`` (spec string, identity for manifests), ``input_size`` (H, W) that :meth:`preprocess`
    resizes to by default, ``fixed_size`` (True when the network accepts only ``input_size``),
    ``feature_dim`` (D).
    """

    def __init__(self, name: str, input_size: tuple[int, int], value_range: tuple[float, float] | None,
                 model_fn: Callable[[tf.Tensor], tf.Tensor], fixed_size: bool = False):
        self.name = name
        self.input_size = _check_size(input_size, name)
        self.value_range = value_range
        self.fixed_size = fixed_size
        # One trace each for every batch and crop size: the network, and the network in chunks of at most 32
        # images, pooled. Each is traced through its own _Traced object (see there), so backbones made one after
        # another in a process (Beam DoFns, tests) never read as tf.function retracing.
        if not isinstance(model_fn, tf.types.experimental.PolymorphicFunction):
            model_fn = tf.function(_Traced(model_fn, "backbone_network"), input_signature=[_IMAGES])
        self._model_fn = model_fn
        self._chunked = tf.function(_Traced(lambda x: cnn_features_tf(self._model_fn, x, self.name),
                                            "backbone_features"), input_signature=[_IMAGES])
        self._feature_dim: int | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, input_size={self.input_size})"

    # ---- preprocessing ------------------------------------------------------------------------------------
    @property
    def pixel_mapping(self) -> tuple[np.float32, np.float32]:
        """float32 (scale, offset) of the linear map of pixel values 0..255 onto ``value_range``."""
        return pixel_mapping(self.value_range)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Pixel values in [0, 255] -> float32 network input (no resizing)."""
        return map_pixels(pixels, *self.pixel_mapping)

    def preprocess(self, images, size: tuple[int, int] | None = None) -> np.ndarray:
        """uint8 (or float 0..255) images ``(N, H, W, 3)`` -> float32 network input ``(N, h, w, 3)``.

        Images are resized (bilinear, antialiased) to ``size`` (default ``input_size``) unless they
        already have that size. Variable-size backbones accept any ``size``; fixed-size ones only their
        ``input_size``.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"backbone {self.name}: preprocess needs (N, H, W, 3) images, "
                             f"got {images.shape}")
        size = _check_size(size or self.input_size, self.name)
        if self.fixed_size and size != self.input_size:
            raise ValueError(f"backbone {self.name} only accepts {self.input_size} inputs, asked for {size}")
        if images.shape[1:3] != size:
            images = tf.cast(images, tf.float32)
            images = tf.image.resize(images, size, antialias=True).numpy()  # (N, h, w, 3)
            images = np.clip(images, 0.0, 255.0)
        return self.normalize(images)

    # ---- features -----------------------------------------------------------------------------------------
    def __call__(self, images) -> np.ndarray:
        """Preprocessed float images ``(N, h, w, 3)`` -> float32 features ``(N, D)``, run in near-equal chunks
        of at most 32 images (bounds memory for large region batches; see
        :func:`karpalign.vision.region_features.cnn_features_tf`)."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"backbone {self.name}: expected (N, H, W, 3) float images, got {images.shape}")
        if len(images) == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        return self._chunked(tf.constant(images)).numpy()

    @property
    def model_fn(self):
        """The network: float batch (N, h, w, 3) -> (N, D), (N, h, w, D) or a dict (before pooling)."""
        return self._model_fn

    @property
    def feature_dim(self) -> int:
        """D, found by running one blank image through the model (once)."""
        if self._feature_dim is None:
            h, w = self.input_size
            blank = self.normalize(np.zeros((1, h, w, 3), np.float32))
            self._feature_dim = int(self._chunked(tf.constant(blank)).shape[1])
        return self._feature_dim

    def features_from_images(self, images) -> np.ndarray:
        """uint8 images ``(N, H, W, 3)`` -> ``(N, D)``: :meth:`preprocess` then the network."""
        return self(self.preprocess(images))


_BUILTIN_MODELS: dict[str, tuple] = {}
_BUILTIN_LOCK = threading.Lock()


def _builtin_feature_model():
    """One shared inference-only EfficientNet-Lite0 feature model (and its traced function) per process and
    weights cache folder -> (model, tf.function).

    Building the 200-layer graph, loading weights and tracing take seconds; Beam workers and tests create
    several backbones (e.g. at different input sizes), and they never modify the model, so they share it.
    """
    from karpalign.vision import efficientnet_lite

    key = efficientnet_lite.cache_dir()
    with _BUILTIN_LOCK:  # Beam may run several DoFn threads per worker process
        if key not in _BUILTIN_MODELS:
            model = efficientnet_lite.efficientnet_lite0(include_top=False, weights="imagenet")
            # One trace for every batch and image size: the network is fully convolutional and ends in a
            # global pool, and a dynamic-shape trace runs as fast as a fixed one (measured), so a worker
            # never pays a second multi-second trace when the last chunk of a batch is smaller.
            fn = tf.function(lambda x: model(x, training=False),
                             input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
            _BUILTIN_MODELS[key] = (model, fn)
        return _BUILTIN_MODELS[key]


class EfficientNetLite0Backbone(Backbone):
    """The built-in backbone: EfficientNet-Lite0, ImageNet weights, (x - 127) / 128, 1280-d features."""

    def __init__(self, input_size: tuple[int, int] | None = None):
        from karpalign.vision import efficientnet_lite

        model, model_fn = _builtin_feature_model()  # (B, H, W, 3) -> (B, 1280)
        size = tuple(input_size or efficientnet_lite.DEFAULT_INPUT_SIZE)
        value_range = (-efficientnet_lite.PIXEL_MEAN / efficientnet_lite.PIXEL_STD,
                       (255.0 - efficientnet_lite.PIXEL_MEAN) / efficientnet_lite.PIXEL_STD)
        super().__init__(_format_name(DEFAULT_SPEC, size, efficientnet_lite.DEFAULT_INPUT_SIZE, None, None),
                         size, value_range, model_fn)
        self._feature_dim = efficientnet_lite.FEATURE_DIM
        self.model = model


class KerasBackbone(Backbone):
    """A Keras model file. Input size comes from the model when it is fixed, else ``input_size`` or 224."""

    DEFAULT_RANGE = (0.0, 255.0)

    def __init__(self, path: str, input_size=None, value_range=None):
        import keras

        if not os.path.isfile(path):
            raise FileNotFoundError(f"keras backbone: model file {path} does not exist")
        if not path.endswith((".keras", ".h5")):
            raise ValueError(f"keras backbone: {path} is not a .keras or .h5 file")
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:
            raise ValueError(f"keras backbone: cannot load {path} ({type(exc).__name__}: {exc})") from exc
        shape = tuple(model.inputs[0].shape) if model.inputs else ()
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f"keras backbone: {path} must take (N, H, W, 3) images, its input is {shape}")
        fixed = shape[1] is not None and shape[2] is not None
        if fixed:
            if input_size is not None and tuple(input_size) != (shape[1], shape[2]):
                raise ValueError(f"keras backbone: {path} has a fixed input {shape[1:3]}, not {input_size}")
            input_size = (shape[1], shape[2])
        size = tuple(input_size or DEFAULT_INPUT_SIZE)
        value_range = tuple(value_range or self.DEFAULT_RANGE)
        name = _format_name(f"keras:{os.path.abspath(path)}", size, DEFAULT_INPUT_SIZE, value_range,
                            self.DEFAULT_RANGE, size_is_default=fixed)
        super().__init__(name, size, value_range, lambda x: model(x, training=False), fixed_size=fixed)
        self.model = model


class HubBackbone(Backbone):
    """A TF Hub handle or local SavedModel folder, loaded with ``tensorflow_hub.load``."""

    DEFAULT_RANGE = (0.0, 1.0)

    def __init__(self, handle: str, input_size=None, value_range=None):
        import tensorflow_hub as hub

        try:
            obj = hub.load(handle)
        except Exception as exc:
            raise ValueError(f"hub backbone: cannot load {handle!r} ({type(exc).__name__}: {exc})") from exc
        if callable(obj):
            fn = lambda x: obj(x)  # noqa: E731 -- TF2 SavedModels restore a callable __call__
        elif "serving_default" in getattr(obj, "signatures", {}):
            fn = _signature_caller(obj.signatures["serving_default"], handle)
        else:
            raise ValueError(f"hub backbone: {handle!r} is neither callable nor has a serving_default "
                             "signature")
        size = tuple(input_size or DEFAULT_INPUT_SIZE)
        value_range = tuple(value_range or self.DEFAULT_RANGE)
        if os.path.isdir(handle):
            handle = os.path.abspath(handle)
        name = _format_name(f"hub:{handle}", size, DEFAULT_INPUT_SIZE, value_range, self.DEFAULT_RANGE)
        super().__init__(name, size, value_range, fn)
        self.module = obj


def get_backbone(spec: str = DEFAULT_SPEC, input_size: tuple[int, int] | None = None) -> Backbone:
    """Builds a backbone from a spec string (see the module doc); ``input_size`` overrides ``|size=``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"backbone spec must be a non-empty string, got {spec!r}")
    base, options = _parse_spec(spec)
    size = tuple(input_size) if input_size is not None else options.get("size")
    value_range = options.get("range")
    if base == DEFAULT_SPEC:
        if value_range is not None:
            raise ValueError(f"backbone spec {spec!r}: the built-in backbone's pixel range is fixed by "
                             "its weights")
        return EfficientNetLite0Backbone(size)
    if base.startswith("keras:"):
        return KerasBackbone(base[len("keras:"):], size, value_range)
    if base.startswith("hub:"):
        return HubBackbone(base[len("hub:"):], size, value_range)
    raise ValueError(f"unknown backbone spec {spec!r}: use {DEFAULT_SPEC!r}, 'keras:<model file>' or "
                     "'hub:<handle or SavedModel folder>'")


# ---- helpers ----------------------------------------------------------------------------------------------


def _check_size(size, name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"backbone {name}: size must be (H, W), got {size!r}") from None
    if h < 8 or w < 8:
        raise ValueError(f"backbone {name}: size {h}x{w} is too small (min 8x8)")
    return (h, w)


def _parse_spec(spec: str) -> tuple[str, dict]:
    base, *parts = spec.strip().split("|")
    options: dict = {}
    for part in parts:
        key, _, value = part.partition("=")
        try:
            numbers = tuple(float(v) for v in value.split(","))
        except ValueError:
            raise ValueError(f"backbone spec {spec!r}: option {part!r} needs numbers") from None
        if key == "size" and len(numbers) == 2 and all(n == int(n) for n in numbers):
            options["size"] = (int(numbers[0]), int(numbers[1]))
        elif key == "range" and len(numbers) == 2 and numbers[0] != numbers[1]:
            options["range"] = numbers
        else:
            raise ValueError(f"backbone spec {spec!r}: bad option {part!r} (use size=H,W or range=LO,HI)")
    return base, options


def _format_name(base, size, default_size, value_range, default_range, size_is_default=False) -> str:
    name = base
    if tuple(size) != tuple(default_size) and not size_is_default:
        name += f"|size={size[0]},{size[1]}"
    if value_range is not None and tuple(value_range) != tuple(default_range):
        name += f"|range={value_range[0]:g},{value_range[1]:g}"
    return name


def _signature_caller(signature, handle: str):
    _, kwargs = signature.structured_input_signature
    if len(kwargs) != 1:
        raise ValueError(f"hub backbone: {handle!r} serving_default takes inputs {sorted(kwargs)}; "
                         "need exactly one")
    (input_name,) = kwargs
    return lambda x: signature(**{input_name: x})


# ---- feature maps (the learned region proposer's input) -------------------------------------------------------

# The built-in network's feature maps by stride: the last block at that resolution (its residual sum). Stride 8
# also gets the stride-16 map, upsampled 2x and concatenated (40 + 112 channels): the early map alone knows little
# about objects, the later one is too coarse for small ones (a small feature pyramid, as in FPN).
LITE0_FEATURE_LAYERS = {8: "block4_add", 16: "block10_add", 32: "head_relu6"}


class FeatureMapBackbone:
    """A network cut before its pooling: preprocessed images (N, H, W, 3) -> feature maps (N, H/s, W/s, C).

    Attributes: ``name`` (the spec it was built from), ``model`` (a Keras model whose input is the network input,
    i.e. pixels after :meth:`Backbone.normalize`'s mapping), ``pixel_scale`` / ``pixel_offset`` (float32, the
    linear map of pixel values 0..255 onto the network input), ``stride`` (input pixels per feature cell) and
    ``channels`` (C). The learned region proposer (:mod:`karpalign.vision.learned_proposer`) keeps ``model``
    frozen inside its own Keras model, so a ``.keras`` proposer file is self-contained.
    """

    def __init__(self, name: str, model, value_range: tuple[float, float], stride: int):
        self.name = name
        self.model = model
        self.pixel_scale, self.pixel_offset = pixel_mapping(value_range)
        self.stride = int(stride)
        self.channels = int(model.outputs[0].shape[-1])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, stride={self.stride}, channels={self.channels})"


def get_feature_map_backbone(spec: str = DEFAULT_SPEC, stride: int = 16) -> FeatureMapBackbone:
    """The feature-map network of a backbone spec.

    - ``efficientnet_lite0``: the built-in network with ImageNet weights, cut at stride 16 (112 channels) or 32
      (1280): the last block of that resolution (:data:`LITE0_FEATURE_LAYERS`); at stride 8, that block's map
      (40 channels) with the stride-16 map upsampled onto it (152 channels; the input side must be a multiple of
      16).
    - ``keras:<path>[|range=LO,HI]``: a Keras model file whose output is already a 4-D feature map
      (N, h, w, C) for any input size; its stride is measured on a 64 x 64 probe and must equal ``stride``.

    ``hub:`` modules return pooled vectors, so they are refused (the error names the specs that work).
    """
    import keras

    base, options = _parse_spec(spec)
    if base == DEFAULT_SPEC:
        if stride not in LITE0_FEATURE_LAYERS:
            raise ValueError(f"backbone {spec!r}: feature maps at stride {stride} do not exist; use one of "
                             f"{sorted(LITE0_FEATURE_LAYERS)}")
        if "range" in options:
            raise ValueError(f"backbone spec {spec!r}: the built-in backbone's pixel range is fixed by its weights")
        from karpalign.vision import efficientnet_lite

        full = efficientnet_lite.efficientnet_lite0(include_top=True, weights="imagenet")
        output = full.get_layer(LITE0_FEATURE_LAYERS[stride]).output
        if stride == 8:
            coarse = keras.layers.UpSampling2D(2, interpolation="bilinear", name="stride16_up")(
                full.get_layer(LITE0_FEATURE_LAYERS[16]).output)
            output = keras.layers.Concatenate(name="stride8_fused")([output, coarse])
        model = keras.Model(full.input, output, name=f"efficientnet_lite0_stride{stride}")
        value_range = (-efficientnet_lite.PIXEL_MEAN / efficientnet_lite.PIXEL_STD,
                       (255.0 - efficientnet_lite.PIXEL_MEAN) / efficientnet_lite.PIXEL_STD)
        name = DEFAULT_SPEC if stride == 16 else f"{DEFAULT_SPEC}|stride={stride}"
        return FeatureMapBackbone(name, model, value_range, stride)
    if base.startswith("keras:"):
        path = base[len("keras:"):]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature-map backbone: model file {path} does not exist")
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as exc:
            raise ValueError(f"feature-map backbone: cannot load {path} ({type(exc).__name__}: {exc})") from exc
        probe = model(np.zeros((1, 64, 64, 3), np.float32), training=False)
        if isinstance(probe, (dict, list, tuple)) or len(probe.shape) != 4:
            raise ValueError(f"feature-map backbone: {path} must map (N, H, W, 3) images to one 4-D feature map "
                             f"(N, h, w, C); it returns {type(probe).__name__} "
                             f"{getattr(probe, 'shape', '')}")
        measured = 64 // int(probe.shape[1])
        if measured != int(stride):
            raise ValueError(f"feature-map backbone: {path} has stride {measured} (64 px -> {probe.shape[1]} "
                             f"cells), not {stride}")
        value_range = tuple(options.get("range", KerasBackbone.DEFAULT_RANGE))
        return FeatureMapBackbone(f"keras:{os.path.abspath(path)}", model, value_range, measured)
    raise ValueError(f"feature-map backbone {spec!r}: use {DEFAULT_SPEC!r} or 'keras:<model file with a 4-D "
                     "output>' (hub: modules return pooled vectors)")
