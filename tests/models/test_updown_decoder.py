"""UpDownDecoder: serialization, the decoder-step contract (step-wise = teacher forcing, masks, attention), the
model-agnostic beam search over it, and the generator registry."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from karpalign.data.text import END_ID, START_ID
from karpalign.decoding.beam_search import beam_search
from karpalign.decoding.generate import decode_regions
from karpalign.models.generators import build_generator, reads_regions, teacher_forcing_inputs
from karpalign.models.mrnn_decoder import MRNNDecoder, log_frequency_bias
from karpalign.models.updown_decoder import UpDownDecoder
from tests.helpers import run_serialization_test

V, D = 12, 6
FEATS = tf.random.stateless_normal([3, 4, D], [0, 1])  # (B, R, D)
MASK = tf.constant([[1.0, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])  # (B, R)
TOKENS = tf.constant([[2, 4, 5, 6], [2, 7, 3, 0], [2, 8, 9, 4]])  # (B, T)
BIAS = log_frequency_bias([0, 5, 0, 10, 100, 3, 1, 1, 1, 1, 7, 2], V)  # (V,)


def _inputs(feats=FEATS, mask=MASK, tokens=TOKENS):
    return {"region_features": feats, "region_mask": mask, "tokens": tokens}


def _call(model):
    logits = model(_inputs(), training=False)  # (B, T, V)
    step_logits, state = model.step(TOKENS[:, 0], model.initial_state(FEATS, MASK))  # (B, V)
    return logits, step_logits, state


def _output_bias(model):
    return model.output_proj.bias


def _sharp(model, factor=6.0):
    """Untrained logits sharpened so that beams differ between images."""
    model.output_proj.kernel.assign(model.output_proj.kernel * factor)
    return model


def _model(**kwargs):
    keras.utils.set_random_seed(0)  # untrained weights: the same in every run
    return build_generator("updown", V, D, hidden_dim=8, word_dim=5, attention_dim=7, num_regions=4, **kwargs)


def test_serialization(tmp_path):
    kwargs = {"vocab_size": V, "feature_dim": D, "hidden_dim": 8, "word_dim": 5, "attention_dim": 7, "dropout": 0.2,
              "output_bias": BIAS, "name": "generator"}
    run_serialization_test(UpDownDecoder, kwargs, _call, tmp_path, initialised_weights={"output_bias": _output_bias})


def test_serialization_without_output_bias(tmp_path):
    kwargs = {"vocab_size": V, "feature_dim": D, "hidden_dim": 4, "word_dim": 3, "attention_dim": 5}
    model, _, _ = run_serialization_test(UpDownDecoder, kwargs, _call, tmp_path,
                                         initialised_weights={"output_bias": _output_bias})
    np.testing.assert_array_equal(_output_bias(model).numpy(), np.zeros(V, "f4"))


def test_steps_reproduce_teacher_forcing_and_attention():
    model = _model(output_bias=BIAS)
    logits, alpha = model.attention(_inputs(), training=False)  # (B, T, V), (B, T, R)
    state = model.initial_state(FEATS, MASK)
    for t in range(TOKENS.shape[1]):
        step_logits, state, step_alpha = model.step_with_attention(TOKENS[:, t], state)
        np.testing.assert_allclose(step_logits.numpy(), logits[:, t].numpy(), atol=1e-5)
        np.testing.assert_allclose(step_alpha.numpy(), alpha[:, t].numpy(), atol=1e-6)
    # The state carries what attention needs, unchanged by the steps.
    first = model.initial_state(FEATS, MASK)
    for key in ("regions", "keys", "mask", "mean"):
        np.testing.assert_array_equal(state[key].numpy(), first[key].numpy())
    assert sorted(state) == sorted(first)
    # Attention is a distribution over the valid regions only.
    a = alpha.numpy()
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
    assert np.all(a[MASK.numpy()[:, None, :].repeat(4, 1) == 0] == 0)
    assert np.all(a[0] > 0)


def test_padded_regions_change_nothing_and_real_regions_do():
    model = _model()
    base = model(_inputs(), training=False).numpy()
    noise = tf.random.stateless_normal([3, 4, D], [5, 6]) * 10
    keep = MASK[:, :, None]
    padded_changed = FEATS * keep + noise * (1 - keep)  # new values only where the mask is 0
    np.testing.assert_allclose(model(_inputs(padded_changed), training=False).numpy(), base, atol=1e-5)
    # Region 1 of image 0 is valid: the words there depend on it (the generator reads every region, not only 0).
    moved = FEATS.numpy().copy()
    moved[0, 1] += 3.0
    changed = model(_inputs(tf.constant(moved)), training=False).numpy()
    assert np.abs(changed[0] - base[0]).max() > 1e-3
    np.testing.assert_allclose(changed[1:], base[1:], atol=1e-6)


def test_dropout_only_in_training():
    model = _model(dropout=0.5)
    a = model(_inputs(), training=False).numpy()
    np.testing.assert_array_equal(model(_inputs(), training=False).numpy(), a)
    assert np.abs(model(_inputs(), training=True).numpy() - a).max() > 1e-4


def test_beam_search_decodes_it_unchanged_and_batch_equals_single():
    model = _sharp(_model())
    batch = decode_regions(model, FEATS, MASK, beam_size=3, max_length=6, top_k=2)
    for i in range(3):
        valid = int(MASK[i].numpy().sum())
        alone = decode_regions(model, FEATS[i:i + 1, :valid], MASK[i:i + 1, :valid], beam_size=3, max_length=6,
                               top_k=2)  # no padding at all
        np.testing.assert_array_equal(alone.ids.numpy()[0], batch.ids.numpy()[i])
        np.testing.assert_allclose(alone.scores.numpy()[0], batch.scores.numpy()[i], atol=1e-5)
    direct = beam_search(model.step, model.initial_state(FEATS, MASK), 3, beam_size=3, max_length=6,
                         start_id=START_ID, end_id=END_ID, top_k=2)
    np.testing.assert_array_equal(direct.ids.numpy(), batch.ids.numpy())
    assert len({tuple(r) for r in batch.ids.numpy()[:, 0]}) > 1  # the images get different captions


def test_beam_1_is_greedy_argmax():
    model = _sharp(_model())
    result = decode_regions(model, FEATS, MASK, beam_size=1, max_length=5)
    state, word = model.initial_state(FEATS, MASK), tf.fill([3], START_ID)
    expected, done = [], np.zeros(3, bool)
    for t in range(5):
        logits, state = model.step(word, state)
        logits = logits.numpy()
        if t == 0:
            logits[:, END_ID] = -np.inf  # min_length 1
        word_np = np.where(done, 0, logits.argmax(-1))
        expected.append(word_np)
        done |= word_np == END_ID
        word = tf.constant(logits.argmax(-1).astype("int32"))
    np.testing.assert_array_equal(result.ids.numpy()[:, 0], np.stack(expected, 1))


def test_a_tf_function_with_dynamic_shapes_traces_once():
    model = _model()
    fn = tf.function(lambda f, m: decode_regions(model, f, m, beam_size=2, max_length=4).ids,
                     input_signature=[tf.TensorSpec([None, None, D]), tf.TensorSpec([None, None])])
    a = fn(FEATS, MASK)
    b = fn(FEATS[:2, :2], MASK[:2, :2])
    assert fn.experimental_get_tracing_count() == 1
    np.testing.assert_array_equal(b.numpy()[1], a.numpy()[1])  # image 1 has 2 valid regions


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="hidden_dim must be an int >= 1"):
        UpDownDecoder(V, D, hidden_dim=0)
    with pytest.raises(ValueError, match="attention_dim must be an int >= 1"):
        UpDownDecoder(V, D, attention_dim=2.5)
    with pytest.raises(ValueError, match="dropout must be a number in"):
        UpDownDecoder(V, D, dropout=1.0)
    with pytest.raises(ValueError, match=r"output_bias has shape \(3,\), expected \(12,\)"):
        UpDownDecoder(V, D, output_bias=np.zeros(3))


def test_registry_builds_both_generators_and_says_what_they_read():
    mrnn = build_generator("mrnn", V, D, hidden_dim=8, word_dim=5, cell="lstm")
    updown = _model()
    assert type(mrnn) is MRNNDecoder and mrnn.cell == "lstm" and not reads_regions(mrnn)
    assert type(updown) is UpDownDecoder and reads_regions(updown)
    assert mrnn.built and updown.built and updown.weights
    batch = {"image": FEATS[:, 0], "tokens": TOKENS, "region_features": FEATS, "region_mask": MASK}
    assert sorted(teacher_forcing_inputs(mrnn, batch)) == ["image", "tokens"]
    assert sorted(teacher_forcing_inputs(updown, batch)) == ["region_features", "region_mask", "tokens"]
    with pytest.raises(ValueError, match=r"caption batch has no \['region_features', 'region_mask'\]"):
        teacher_forcing_inputs(updown, {"image": FEATS[:, 0], "tokens": TOKENS})
    with pytest.raises(ValueError, match=r"model.generator must be one of \['mrnn', 'updown'\], got 'lstm'"):
        build_generator("lstm", V, D, hidden_dim=8, word_dim=5)
