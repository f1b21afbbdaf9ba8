"""Backbones: the built-in EfficientNet-Lite0, a Keras model file, and TF Hub / SavedModel folders."""

import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from karpalign.vision import efficientnet_lite as lite
from karpalign.vision.backbones import Backbone, get_backbone


def test_builtin_backbone(lite0_backbone, lite0_classifier):
    bb = lite0_backbone
    assert isinstance(bb, Backbone)
    assert (bb.name, bb.input_size, bb.feature_dim) == ("efficientnet_lite0", (224, 224), 1280)
    assert not bb.fixed_size
    cat = skimage.data.chelsea()[None]  # (1, 300, 451, 3) uint8
    x = bb.preprocess(cat)
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    resized = tf.image.resize(cat.astype(np.float32), (224, 224), antialias=True).numpy()
    np.testing.assert_allclose(x, lite.preprocess_input(np.clip(resized, 0, 255)), atol=1e-5)
    feats = bb(x)
    pooled = keras.Model(lite0_classifier.input, lite0_classifier.get_layer("avg_pool").output)
    np.testing.assert_allclose(feats, pooled(x, training=False), rtol=1e-4, atol=1e-4)
    # The classifier on top of these features still says "cat": features are the real ImageNet ones.
    w, b = lite0_classifier.get_layer("predictions").get_weights()
    assert int(np.argmax(feats @ w + b)) in {281, 282, 283, 284, 285}


def test_builtin_backbone_small_crops_and_name_round_trip(lite0_backbone):
    crops = np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    assert lite0_backbone(lite0_backbone.preprocess(crops, size=(128, 128))).shape == (3, 1280)
    small = get_backbone("efficientnet_lite0", input_size=(160, 160))
    assert small.name == "efficientnet_lite0|size=160,160" and small.input_size == (160, 160)
    assert small.model is lite0_backbone.model  # one shared model per process
    assert get_backbone(small.name).input_size == (160, 160)
    assert lite0_backbone(np.zeros((0, 224, 224, 3), np.float32)).shape == (0, 1280)


def _tiny_keras_model(input_shape, pooled):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(5, 3, padding="same", kernel_initializer="ones", bias_initializer="zeros")(inputs)
    if pooled:
        x = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, x)


def test_keras_backbone_pools_4d_outputs_and_uses_raw_pixels(tmp_path):
    model = _tiny_keras_model((None, None, 3), pooled=False)
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    bb = get_backbone(f"keras:{path}")
    assert bb.name == f"keras:{path}" and bb.input_size == (224, 224) and not bb.fixed_size
    assert bb.feature_dim == 5
    images = np.random.default_rng(1).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    x = bb.preprocess(images, size=(12, 12))
    np.testing.assert_array_equal(x, images.astype(np.float32))  # default range: raw 0..255
    expected = model.predict(x, verbose=0).mean(axis=(1, 2))  # (2, 5)
    np.testing.assert_allclose(bb(x), expected, rtol=1e-5)


def test_keras_backbone_with_fixed_input_and_range_option(tmp_path):
    path = str(tmp_path / "fixed.h5")
    _tiny_keras_model((32, 32, 3), pooled=True).save(path)
    bb = get_backbone(f"keras:{path}|range=-1,1")
    assert bb.fixed_size and bb.input_size == (32, 32) and bb.feature_dim == 5
    assert bb.name == f"keras:{path}|range=-1,1"
    x = bb.preprocess(np.full((1, 40, 50, 3), 255, np.uint8))  # resized to the model's 32x32
    assert x.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(x, 1.0, atol=1e-5)
    assert bb(x).shape == (1, 5)
    with pytest.raises(ValueError, match=r"only accepts \(32, 32\)"):
        bb.preprocess(np.zeros((1, 20, 20, 3), np.uint8), size=(20, 20))
    with pytest.raises(ValueError, match="fixed input"):
        get_backbone(f"keras:{path}", input_size=(64, 64))


class _MeanColour(tf.Module):
    """A SavedModel 'feature extractor': mean colour times a fixed matrix, either pooled or as a 4-D map."""

    def __init__(self, pooled):
        super().__init__()
        self.pooled = pooled
        self.w = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        maps = tf.einsum("bhwc,cd->bhwd", images, self.w)  # (B, H, W, 4)
        return tf.reduce_mean(maps, axis=[1, 2]) if self.pooled else maps


@pytest.mark.parametrize("pooled", [True, False])
def test_hub_backbone_from_a_local_savedmodel(tmp_path, pooled):
    folder = str(tmp_path / f"hub_model_{pooled}")
    tf.saved_model.save(_MeanColour(pooled), folder)
    bb = get_backbone(f"hub:{folder}", input_size=(16, 16))
    assert bb.name == f"hub:{folder}|size=16,16" and bb.feature_dim == 4
    images = np.full((3, 16, 16, 3), 255, np.uint8)
    x = bb.preprocess(images)
    np.testing.assert_allclose(x, 1.0)  # hub convention: 0..1
    np.testing.assert_allclose(bb(x), np.tile(np.ones(3) @ np.arange(12).reshape(3, 4), (3, 1)), rtol=1e-5)
    assert get_backbone(bb.name).input_size == (16, 16)


def test_hub_backbone_through_a_serving_signature(tmp_path):
    """A SavedModel with only a serving_default signature (not callable) and a dict output."""
    module = tf.Module()
    module.fn = tf.function(lambda pixels: {"embedding": tf.reduce_max(pixels, axis=[1, 2])},
                            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    folder = str(tmp_path / "signature_only")
    tf.saved_model.save(module, folder, signatures={"serving_default": module.fn})
    bb = get_backbone(f"hub:{folder}|range=0,255")
    assert bb.feature_dim == 3
    images = np.zeros((2, 8, 8, 3), np.uint8)
    images[1, 3, 3] = (10, 20, 30)
    np.testing.assert_allclose(bb(bb.preprocess(images, size=(8, 8))), [[0, 0, 0], [10, 20, 30]])


def test_bad_specs_are_explained(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone spec 'resnet50'"):
        get_backbone("resnet50")
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        get_backbone(f"keras:{tmp_path}/missing.keras")
    with pytest.raises(ValueError, match="bad option"):
        get_backbone("efficientnet_lite0|size=224")
    with pytest.raises(ValueError, match="fixed by its weights"):
        get_backbone("efficientnet_lite0|range=0,1")
    with pytest.raises(ValueError, match="hub backbone: cannot load"):
        get_backbone(f"hub:{tmp_path}/not_a_model")
