"""EfficientNet-Lite0: the converted ImageNet weights classify real photos; the plumbing around them works."""

import os

import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf

from karpalign.vision import efficientnet_lite as lite

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968
ROCKET_CLASSES = {657, 744, 812}  # missile, projectile, space shuttle


def _photo_batch(*names, size=224):
    photos = [getattr(skimage.data, name)() for name in names]
    return np.concatenate([tf.image.resize(p[None].astype(np.float32), (size, size), antialias=True).numpy()
                           for p in photos])  # (N, size, size, 3) in 0..255


def _top5(model, pixels):
    probs = np.asarray(model(lite.preprocess_input(pixels), training=False))  # (N, 1000)
    return [list(np.argsort(-p)[:5]) for p in probs], probs


def test_classifies_real_photos(lite0_classifier):
    top5, probs = _top5(lite0_classifier, _photo_batch("chelsea", "coffee", "rocket"))
    for name, classes, p in zip(["chelsea", "coffee", "rocket"], top5, probs):
        print(name, [(int(c), round(float(p[c]), 3)) for c in classes])
    assert top5[0][0] in CAT_CLASSES and probs[0][top5[0][0]] > 0.5
    assert ESPRESSO in top5[1] or CUP in top5[1]
    assert top5[1][0] in (ESPRESSO, CUP)
    assert ROCKET_CLASSES & set(top5[2])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)


def test_preprocessing_matches_the_statistics_the_weights_were_trained_with(lite0_classifier):
    """The stem's batch-norm running stats record what the stem conv saw in training: (x-127)/128 reproduces
    their variance far better than ImageNet mean/std normalisation does."""
    stem = keras.Model(lite0_classifier.input, lite0_classifier.get_layer("stem_conv").output)
    running_var = lite0_classifier.get_layer("stem_bn").moving_variance.numpy()  # (32,)
    pixels = _photo_batch("chelsea", "coffee", "astronaut", "rocket")
    imagenet = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])

    def log_var_ratio(x):
        out = np.asarray(stem(np.asarray(x, np.float32), training=False)).reshape(-1, 32)  # (N*h*w, 32)
        live = running_var > 1e-3
        return abs(float(np.median(np.log(out.var(axis=0)[live] / running_var[live]))))

    ours, theirs = log_var_ratio(lite.preprocess_input(pixels)), log_var_ratio(imagenet)
    assert ours < 0.5 < theirs, (ours, theirs)


def test_features_are_the_pooled_layer_and_any_size_works(lite0_classifier, lite0_backbone):
    features = lite0_backbone.model  # built by efficientnet_lite0(include_top=False, weights="imagenet")
    assert features.output_shape == (None, lite.FEATURE_DIM)
    reference = keras.Model(lite0_classifier.input, lite0_classifier.get_layer("avg_pool").output)
    x = lite.preprocess_input(_photo_batch("chelsea", size=128))
    np.testing.assert_allclose(features(x, training=False), reference(x, training=False), atol=1e-4)
    for size in (128, 97):  # region crops are small; odd sizes exercise TF "same" padding
        out = np.asarray(features(lite.preprocess_input(_photo_batch("coffee", size=size)), training=False))
        assert out.shape == (1, lite.FEATURE_DIM) and np.isfinite(out).all()


def test_weights_are_converted_once_and_cached(lite0_classifier, karpalign_cache):
    path = lite.converted_weights_path()
    assert os.path.dirname(path) == str(karpalign_cache)
    assert os.path.basename(path).startswith("efficientnet_lite0-") and path.endswith(".weights.h5")
    assert os.stat(path).st_mode & 0o777 == 0o644  # shareable, not mkstemp's 0600
    before = os.stat(path).st_mtime_ns
    assert lite.converted_weights_path() == path
    assert os.stat(path).st_mtime_ns == before
    assert [f for f in os.listdir(karpalign_cache) if f.startswith(".tmp-")] == []


def test_explicit_weights_file_and_argument_errors(lite0_classifier):
    explicit = lite.efficientnet_lite0(include_top=False, weights=lite.converted_weights_path(),
                                       input_shape=(64, 64, 3))
    assert explicit.count_params() == lite0_classifier.count_params() - (1280 * 1000 + 1000)
    np.testing.assert_array_equal(explicit.get_layer("head_conv").get_weights()[0],
                                  lite0_classifier.get_layer("head_conv").get_weights()[0])
    with pytest.raises(FileNotFoundError, match="no_such.weights.h5"):
        lite.efficientnet_lite0(weights="/nonexistent/no_such.weights.h5")
    with pytest.raises(ValueError, match="input_shape"):
        lite.efficientnet_lite0(weights=None, input_shape=(224, 224))


def test_conversion_rejects_incomplete_state_dicts(lite0_classifier):
    """Uses the shared model: a missing first weight fails before any assignment, and the extra-key case
    assigns the very same ImageNet values again, so the fixture is left unchanged."""
    from karpalign.vision.torch_pickle import load_torch_state_dict

    state = load_torch_state_dict(lite.default_weights_path())
    missing = {k: v for k, v in state.items() if k != "_conv_stem.weight"}
    with pytest.raises(KeyError, match=r"_conv_stem\.weight"):
        lite.assign_torch_weights(lite0_classifier, missing, source="cut.pth")
    state["_extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="not mapped"):
        lite.assign_torch_weights(lite0_classifier, state, source="extra.pth")


def test_preprocess_input_rejects_non_rgb():
    with pytest.raises(ValueError, match="3 channels"):
        lite.preprocess_input(np.zeros((2, 8, 8, 4), np.uint8))
    np.testing.assert_allclose(lite.preprocess_input(np.array([[[0, 127, 255]]], np.uint8)),
                               [[[-127 / 128, 0.0, 1.0]]])
