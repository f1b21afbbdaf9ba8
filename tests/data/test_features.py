import numpy as np
import pytest
import tensorflow as tf

from karpalign.data.features import encode_example, parse_examples


def test_encode_parse_round_trip_with_padding_and_masks():
    rng = np.random.default_rng(0)
    f1, f2 = rng.normal(size=(3, 5)).astype("f4"), rng.normal(size=(1, 5)).astype("f4")
    b1, b2 = np.tile([[0, 0, 1, 1]], (3, 1)), np.array([[0.1, 0.2, 0.5, 0.6]])
    e1 = encode_example("a", "train", "/x/a.jpg", f1, b1, [("A red dog", ["a", "red", "dog"]), ("Hi", ["hi"])])
    e2 = encode_example("b", "val", "/x/b.jpg", f2, b2, [("One two", ["one", "two"])])
    out = parse_examples(tf.constant([e1, e2]), feature_dim=5)
    assert out["region_features"].shape == (2, 3, 5)
    np.testing.assert_allclose(out["region_features"][0], f1)
    np.testing.assert_allclose(out["region_features"][1, :1], f2)
    np.testing.assert_allclose(out["region_features"][1, 1:], 0)
    np.testing.assert_allclose(out["region_mask"], [[1, 1, 1], [1, 0, 0]])
    np.testing.assert_allclose(out["boxes"][1, 0], b2[0], rtol=1e-6)
    assert out["tokens"].to_list() == [[[b"a", b"red", b"dog"], [b"hi"]], [[b"one", b"two"]]]
    assert out["sentences_raw"].to_list() == [[b"A red dog", b"Hi"], [b"One two"]]
    assert out["image_id"].numpy().tolist() == [b"a", b"b"] and out["split"].numpy()[1] == b"val"


def test_dimension_mismatch_and_bad_arrays():
    e = encode_example("a", "train", "", np.zeros((2, 4), "f4"), np.zeros((2, 4)), [("x", ["x"])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature dim 8"):
        parse_examples(tf.constant([e]), feature_dim=8)
    with pytest.raises(ValueError, match="image a: region features"):
        encode_example("a", "train", "", np.zeros((2, 4)), np.zeros((3, 4)), [])
    with pytest.raises(ValueError, match="NaN"):
        encode_example("a", "train", "", np.full((1, 4), np.nan), np.zeros((1, 4)), [])


def test_packed_float_list_equals_the_value_by_value_list():
    import numpy as np
    import tensorflow as tf

    from karpalign.data.features import packed_float_list

    rng = np.random.default_rng(0)
    for shape in [(0, 4), (1,), (3, 4), (20, 1280), (7, 33)]:  # 20 x 1280 floats: a multi-byte length varint
        values = rng.standard_normal(shape).astype(np.float32)
        values.flat[:1] = [np.float32(-0.0)] if values.size else []
        built = packed_float_list(values)
        assert built == tf.train.FloatList(value=values.reshape(-1).tolist())
        np.testing.assert_array_equal(np.array(built.value, np.float32), values.reshape(-1))
    # float64 input is stored as float32, like the value-by-value list does
    x = np.array([[1 / 3, 2.5]], np.float64)
    assert packed_float_list(x) == tf.train.FloatList(value=x.reshape(-1).tolist())
    y = rng.standard_normal((3, 4)).astype(np.float32).T  # a non-contiguous view: values in its C order
    assert packed_float_list(y) == tf.train.FloatList(value=y.reshape(-1).tolist())
