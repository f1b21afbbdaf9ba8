import numpy as np
import pytest
import tensorflow as tf

from karpalign.models.mrnn_decoder import MRNNDecoder, log_frequency_bias
from tests.helpers import run_serialization_test

IMAGE = tf.random.stateless_normal([3, 6], [0, 1])  # (B, D)
TOKENS = tf.constant([[2, 4, 5, 6], [2, 7, 0, 0], [2, 8, 9, 4]])  # (B, T)
BIAS = log_frequency_bias([0, 5, 0, 10, 100, 3, 1, 1, 1, 1], 10)  # (V,)


def _call(model):
    logits = model({"image": IMAGE, "tokens": TOKENS}, training=False)  # (B, T, V)
    step_logits, state = model.step(TOKENS[:, 0], model.initial_state(IMAGE))  # (B, V)
    return logits, step_logits, state


def _output_bias(model):
    return model.output_proj.bias


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_serialization(tmp_path, cell):
    kwargs = {"vocab_size": 10, "feature_dim": 6, "hidden_dim": 8, "word_dim": 5, "cell": cell, "dropout": 0.2,
              "output_bias": BIAS, "name": "generator"}
    run_serialization_test(MRNNDecoder, kwargs, _call, tmp_path, initialised_weights={"output_bias": _output_bias})


def test_serialization_without_output_bias(tmp_path):
    kwargs = {"vocab_size": 10, "feature_dim": 6, "hidden_dim": 8, "word_dim": 5, "dropout": 0.1}
    model, _, _ = run_serialization_test(MRNNDecoder, kwargs, _call, tmp_path,
                                         initialised_weights={"output_bias": _output_bias})
    np.testing.assert_array_equal(_output_bias(model).numpy(), np.zeros(10, "f4"))


def test_configs_without_output_bias_key_still_load():
    # .keras files written before get_config listed output_bias.
    cfg = MRNNDecoder(10, 6, hidden_dim=8, word_dim=5, cell="lstm").get_config()
    del cfg["output_bias"]
    assert MRNNDecoder.from_config(cfg).get_config() == {**cfg, "output_bias": None}
