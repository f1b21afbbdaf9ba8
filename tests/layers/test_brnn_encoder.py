import numpy as np
import pytest
import tensorflow as tf

from karpalign.layers import BRNNEncoder
from tests.helpers import run_serialization_test

TOKENS = tf.constant([[4, 5, 6, 0], [7, 0, 0, 0]])  # (B, T)
MASK = tf.constant([[1.0, 1, 1, 0], [1, 0, 0, 0]])  # (B, T)
VECTORS = np.arange(40, dtype="f4").reshape(10, 4) / 40.0  # (V, word_dim)


def _call(layer):
    return layer(TOKENS, MASK, training=False)


def _word_embedding(layer):
    return layer.embedding.embeddings


def test_brnn_backward_pass_ignores_padding():
    enc = BRNNEncoder(10, word_dim=4, hidden_dim=6, embed_dim=5)
    short = enc(tf.constant([[4, 5]]), tf.constant([[1.0, 1]]))
    padded = enc(tf.constant([[4, 5, 9, 9]]), tf.constant([[1.0, 1, 0, 0]]))
    np.testing.assert_allclose(short[0], padded[0, :2], atol=1e-6)
    np.testing.assert_allclose(padded[0, 2:], 0)


def test_frozen_pretrained_word_vectors():
    vectors = np.arange(40, dtype="f4").reshape(10, 4)
    enc = BRNNEncoder(10, word_dim=4, hidden_dim=6, embed_dim=5, word_vectors=vectors, freeze_word_vectors=True)
    enc(tf.constant([[1]]), tf.constant([[1.0]]))
    np.testing.assert_allclose(enc.embedding.embeddings.numpy(), vectors)
    assert all(w is not enc.embedding.embeddings for w in enc.trainable_weights)
    assert len(enc.trainable_weights) == len(enc.weights) - 1
    with pytest.raises(ValueError, match="word_vectors has shape"):
        BRNNEncoder(10, word_dim=3, word_vectors=vectors)


def test_config_round_trip():
    layer = BRNNEncoder(10, 4, 6, 8, dropout=0.3)
    cfg = layer.get_config()
    assert type(layer).from_config(cfg).get_config() == cfg


def test_serialization(tmp_path):
    run_serialization_test(BRNNEncoder, {"vocab_size": 10, "word_dim": 4, "hidden_dim": 6, "embed_dim": 8,
                                         "dropout": 0.3, "name": "sentences"}, _call, tmp_path,
                           initialised_weights={"word_vectors": _word_embedding})


@pytest.mark.parametrize("freeze", [True, False])
def test_serialization_with_word_vectors(tmp_path, freeze):
    kwargs = {"vocab_size": 10, "word_dim": 4, "hidden_dim": 6, "embed_dim": 8, "dropout": 0.3,
              "word_vectors": VECTORS, "freeze_word_vectors": freeze}
    layer, rebuilt, loaded = run_serialization_test(BRNNEncoder, kwargs, _call, tmp_path,
                                                    initialised_weights={"word_vectors": _word_embedding})
    # The vectors live in the weights, not in the (small) config; frozen ones stay frozen.
    assert layer.get_config()["word_vectors"] is None
    for which in (layer, rebuilt, loaded):
        assert which.embedding.trainable is not freeze
        assert any(w is _word_embedding(which) for w in which.trainable_weights) is not freeze
        assert len(which.trainable_weights) == len(which.weights) - int(freeze)


def test_configs_without_word_vectors_key_still_load():
    # .keras files written before get_config listed word_vectors.
    cfg = BRNNEncoder(10, 4, 6, 8, freeze_word_vectors=True).get_config()
    del cfg["word_vectors"]
    again = BRNNEncoder.from_config(cfg)
    assert again.freeze_word_vectors and not again.embedding.trainable
