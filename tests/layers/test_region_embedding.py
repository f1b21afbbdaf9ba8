import tensorflow as tf

from karpalign.layers import RegionEmbedding
from tests.helpers import run_serialization_test

FEATURES = tf.random.stateless_normal([2, 3, 5], [1, 2])  # (B, R, D)


def test_output_shape():
    layer = RegionEmbedding(8)
    assert layer(FEATURES).shape == (2, 3, 8)
    assert layer.compute_output_shape((2, 3, 5)) == (2, 3, 8)


def test_config_round_trip():
    layer = RegionEmbedding(8, dropout=0.2)
    cfg = layer.get_config()
    assert type(layer).from_config(cfg).get_config() == cfg


def test_serialization(tmp_path):
    run_serialization_test(RegionEmbedding, {"embed_dim": 8, "dropout": 0.25, "name": "regions"},
                           lambda layer: layer(FEATURES, training=False), tmp_path)
