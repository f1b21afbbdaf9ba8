import numpy as np
import pytest
import tensorflow as tf

from karpalign.layers import BRNNEncoder, RegionEmbedding
from karpalign.models.alignment_model import AlignmentModel
from tests.helpers import run_serialization_test

INPUTS = {"region_features": tf.random.stateless_normal([2, 3, 5], [1, 2]),
          "region_mask": tf.constant([[1.0, 1, 0], [1, 1, 1]]),
          "token_ids": tf.constant([[4, 5, 6, 0], [7, 0, 0, 0]]),
          "token_mask": tf.constant([[1.0, 1, 1, 0], [1, 0, 0, 0]])}
VECTORS = np.linspace(-1, 1, 40, dtype="f4").reshape(10, 4)  # (V, word_dim)


def _call(model):
    v, s = model(INPUTS, training=False)  # (B, R, H), (B, T, H)
    return v, s, model.score_matrix(v, INPUTS["region_mask"], s, INPUTS["token_mask"])  # (B, B)


@pytest.mark.parametrize("score", ["brnn", "defrag", "global"])
def test_serialization(tmp_path, score):
    kwargs = {"region_embedding": RegionEmbedding(8, dropout=0.1, name="regions"),
              "sentence_encoder": BRNNEncoder(10, 4, 6, 8, dropout=0.2, word_vectors=VECTORS,
                                              freeze_word_vectors=True, name="sentences"),
              "score": score, "name": "aligner"}
    layer, rebuilt, loaded = run_serialization_test(AlignmentModel, kwargs, _call, tmp_path)
    # The sub-layers come back as themselves: the encoder's pretrained vectors frozen and equal.
    for which in (rebuilt, loaded):
        assert type(which.region_embedding) is RegionEmbedding and which.region_embedding.name == "regions"
        assert type(which.sentence_encoder) is BRNNEncoder and which.sentence_encoder.name == "sentences"
        embedding = which.sentence_encoder.embedding
        np.testing.assert_array_equal(embedding.embeddings.numpy(), VECTORS)
        assert not embedding.trainable and all(w is not embedding.embeddings for w in which.trainable_weights)
    assert loaded.score == score and loaded.score_fn is layer.score_fn


def test_from_config_accepts_built_sub_layers():
    regions, sentences = RegionEmbedding(8), BRNNEncoder(10, 4, 6, 8)
    model = AlignmentModel.from_config({"region_embedding": regions, "sentence_encoder": sentences,
                                        "score": "global"})
    assert model.region_embedding is regions and model.sentence_encoder is sentences
