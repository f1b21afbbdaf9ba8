"""Region-attention generator: the top-down attention LSTM of Anderson et al. 2018 ("Bottom-Up and Top-Down
Attention"), over the region features the extraction job already writes.

The mRNN (paper sec. 3.2) sees only region 0, the whole image, once. This generator reads every region at every
word. Per image, the R region CNN vectors r_i (with a mask for padded regions) are embedded once:

    v_i = ReLU(W_v r_i + b_v)                          (B, R, H)   region vectors
    v̄   = mean of the valid v_i                        (B, H)
    k_i = W_va v_i                                     (B, R, A)   attention keys (step-invariant)

and each step t, fed word x_t, runs two LSTMs with soft attention between them (Xu et al. 2015):

    h1_t = LSTM_att([h2_{t-1}, v̄, W_e x_t], h1_{t-1})            the attention LSTM (top-down query)
    a_t  = w_a · tanh(k_i + W_ha h1_t + b_a), α_t = softmax(a_t)  over the valid regions only
    v̂_t  = Σ_i α_ti v_i                                          the attended region vector
    h2_t = LSTM_lang([v̂_t, h1_t], h2_{t-1})                      the language LSTM
    y_t  = softmax(W_p h2_t + b_p)

Decoder contract (DESIGN.md, "Decoder step"): ``initial_state(region_features (B, R, D), region_mask (B, R))``
returns the zero LSTM states plus what attention needs (region vectors, keys, mask, mean), and
``step(token_ids (B,), state) -> (logits (B, V), state)`` passes those through unchanged, so the model-agnostic
beam search (which tiles and reorders every state leaf by beam) decodes it as it decodes the mRNN, in Python, in
a ``tf.function`` and inside the exported SavedModel. ``reads_regions = True`` tells the decode path
(:func:`karpalign.decoding.generate.decode_regions`) to hand it all regions instead of region 0.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

_MASKED = -1e9  # attention logit of a padded region (float32 softmax: exp underflows to exactly 0)


@keras.saving.register_keras_serializable(package="karpalign")
class UpDownDecoder(keras.Model):
    """Next-word model attending over region vectors (attention LSTM + language LSTM).

    Args:
        vocab_size: number of word ids (with the special tokens).
        feature_dim: size D of a region's CNN vector.
        hidden_dim: size H of both LSTMs and of the embedded region vectors.
        word_dim: word embedding size E.
        attention_dim: size A of the attention's hidden layer (Anderson et al.: 512).
        dropout: dropout on the non-recurrent paths (region vectors, word vectors, language LSTM output).
        output_bias: optional (vocab_size,) initial b_p, e.g. log word frequencies (as the mRNN).
        **kwargs: passed to ``keras.Model`` (``name``, ``dtype``, ``trainable``).

    Inputs of :meth:`call` (teacher forcing): ``{"region_features": (B, R, D), "region_mask": (B, R),
    "tokens": (B, T) starting with <start>}`` -> logits (B, T, V). :meth:`attention` also returns the
    attention weights (B, T, R): row t is the distribution that produced the word predicted at step t.

    Serialization: ``get_config`` returns every argument, ``output_bias`` as ``None`` (the initial value of the
    ``w_p`` bias, which is saved with the weights; see :class:`karpalign.models.mrnn_decoder.MRNNDecoder`).
    """

    reads_regions = True  # the decode path passes all regions + mask to initial_state (not region 0)

    def __init__(self, vocab_size: int, feature_dim: int, hidden_dim: int = 512, word_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.0, output_bias=None, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("vocab_size", vocab_size), ("feature_dim", feature_dim), ("hidden_dim", hidden_dim),
                            ("word_dim", word_dim), ("attention_dim", attention_dim)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"UpDownDecoder: {name} must be an int >= 1, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"UpDownDecoder: dropout must be a number in [0, 1), got {dropout!r}")
        self.vocab_size, self.feature_dim, self.hidden_dim = int(vocab_size), int(feature_dim), int(hidden_dim)
        self.word_dim, self.attention_dim, self.dropout = int(word_dim), int(attention_dim), dropout
        bias_init = "zeros"
        if output_bias is not None:
            output_bias = np.asarray(output_bias, "float32")
            if output_bias.shape != (vocab_size,):
                raise ValueError(f"output_bias has shape {output_bias.shape}, expected ({vocab_size},)")
            bias_init = keras.initializers.Constant(output_bias)
        self.region_proj = keras.layers.Dense(hidden_dim, activation="relu", name="w_v")
        self.region_key = keras.layers.Dense(attention_dim, use_bias=False, name="w_va")
        self.query_proj = keras.layers.Dense(attention_dim, name="w_ha")  # its bias is b_a
        self.attention_score = keras.layers.Dense(1, use_bias=False, name="w_a")
        self.embedding = keras.layers.Embedding(vocab_size, word_dim, name="word_embedding")
        self.attention_lstm = keras.layers.LSTMCell(hidden_dim, name="attention_lstm")
        self.language_lstm = keras.layers.LSTMCell(hidden_dim, name="language_lstm")
        self.drop_region = keras.layers.Dropout(dropout)
        self.drop_word = keras.layers.Dropout(dropout)
        self.drop_out = keras.layers.Dropout(dropout)
        self.output_proj = keras.layers.Dense(vocab_size, bias_initializer=bias_init, name="w_p")

    def build(self, input_shape=None):
        H, A, E = self.hidden_dim, self.attention_dim, self.word_dim
        self.region_proj.build((None, None, self.feature_dim))
        self.region_key.build((None, None, H))
        self.query_proj.build((None, H))
        self.attention_score.build((None, None, A))
        self.embedding.build((None, None))
        self.attention_lstm.build((None, 2 * H + E))
        self.language_lstm.build((None, 2 * H))
        self.output_proj.build((None, None, H))
        self.built = True

    # -- regions: embedded once per image ---------------------------------------------------------------------
    def encode_regions(self, region_features, region_mask, training=None):
        """Region features (B, R, D) + mask (B, R) -> what attention reads: ``regions`` (B, R, H), ``keys``
        (B, R, A), ``mask`` (B, R) in the compute dtype and ``mean`` (B, H), the mean of the valid regions."""
        regions = self.drop_region(self.region_proj(region_features), training=training)  # (B, R, H)
        mask = tf.cast(region_mask, regions.dtype)  # (B, R)
        count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)  # (B, 1)
        mean = tf.reduce_sum(regions * mask[:, :, None], axis=1) / count  # (B, H)
        return {"regions": regions, "keys": self.region_key(regions), "mask": mask, "mean": mean}

    def _attend(self, h1, memory):
        """Soft attention of the query h1 (B, H) over the valid regions -> (context (B, H), alpha (B, R))."""
        query = self.query_proj(h1)  # (B, A)
        logits = self.attention_score(tf.tanh(memory["keys"] + query[:, None, :]))[:, :, 0]  # (B, R)
        logits = tf.where(memory["mask"] > 0, tf.cast(logits, tf.float32), _MASKED)  # (B, R) float32
        alpha = tf.cast(tf.nn.softmax(logits, axis=-1), memory["regions"].dtype)  # (B, R)
        context = tf.einsum("br,brh->bh", alpha, memory["regions"])  # (B, H)
        return context, alpha

    # -- the recurrence, shared by teacher-forced training and step-wise decoding ------------------------------
    def _cell(self, x, lstm_state, memory):
        """One step: embedded word x (B, E) -> (h2 (B, H), new LSTM state, alpha (B, R))."""
        att_in = tf.concat([lstm_state["h2"], memory["mean"], x], axis=-1)  # (B, 2H + E)
        h1, (h1_new, c1_new) = self.attention_lstm(att_in, [lstm_state["h1"], lstm_state["c1"]])
        context, alpha = self._attend(h1, memory)  # (B, H), (B, R)
        h2, (h2_new, c2_new) = self.language_lstm(tf.concat([context, h1], axis=-1),
                                                  [lstm_state["h2"], lstm_state["c2"]])
        return h2, {"h1": h1_new, "c1": c1_new, "h2": h2_new, "c2": c2_new}, alpha

    def _zero_state(self, batch, dtype):
        zeros = tf.zeros([batch, self.hidden_dim], dtype)
        return {"h1": zeros, "c1": zeros, "h2": zeros, "c2": zeros}

    # -- the decoder contract -----------------------------------------------------------------------------------
    def initial_state(self, region_features, region_mask):
        """Decoding state for region features (B, R, D) and mask (B, R): zero LSTM states plus the embedded
        regions, their attention keys, the mask and the mean region vector (carried unchanged by :meth:`step`)."""
        memory = self.encode_regions(region_features, region_mask, training=False)
        state = self._zero_state(tf.shape(memory["mean"])[0], memory["mean"].dtype)
        return {**state, **memory}

    def step(self, token_ids, state):
        """token_ids (B,) -> (logits (B, V), state)."""
        logits, new_state, _ = self.step_with_attention(token_ids, state)
        return logits, new_state

    def step_with_attention(self, token_ids, state):
        """:meth:`step` that also returns the attention weights (B, R) the step used."""
        memory = {k: state[k] for k in ("regions", "keys", "mask", "mean")}
        x = self.embedding(token_ids)  # (B, E)
        h2, lstm_state, alpha = self._cell(x, state, memory)
        return self.output_proj(h2), {**lstm_state, **memory}, alpha

    # -- teacher forcing ----------------------------------------------------------------------------------------
    def call(self, inputs, training=None):
        """{"region_features": (B, R, D), "region_mask": (B, R), "tokens": (B, T)} -> logits (B, T, V)."""
        return self.attention(inputs, training=training)[0]

    def attention(self, inputs, training=None):
        """Teacher forcing with the attention weights: -> (logits (B, T, V), alpha (B, T, R))."""
        memory = self.encode_regions(inputs["region_features"], inputs["region_mask"], training=training)
        x = self.drop_word(self.embedding(inputs["tokens"]), training=training)  # (B, T, E)
        state = self._zero_state(tf.shape(x)[0], x.dtype)
        alpha0 = tf.zeros_like(memory["mask"])  # (B, R)

        def body(carry, x_t):
            h2, new_state, alpha = self._cell(x_t, carry[1], memory)
            return h2, new_state, alpha

        hs, _, alphas = tf.scan(body, tf.transpose(x, [1, 0, 2]),
                                initializer=(state["h2"], state, alpha0))  # (T, B, H), ..., (T, B, R)
        hs = tf.transpose(hs, [1, 0, 2])  # (B, T, H)
        logits = self.output_proj(self.drop_out(hs, training=training))  # (B, T, V)
        return logits, tf.transpose(alphas, [1, 0, 2])  # (B, T, V), (B, T, R)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "feature_dim": self.feature_dim,
                "hidden_dim": self.hidden_dim, "word_dim": self.word_dim, "attention_dim": self.attention_dim,
                "dropout": self.dropout,
                "output_bias": None}  # saved as the w_p bias weight (see the class docstring)
