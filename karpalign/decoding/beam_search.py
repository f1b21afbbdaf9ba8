"""Model-agnostic beam search made of TensorFlow ops only.

Any generator that exposes the decoder-step contract (DESIGN.md, "Decoder step")

    state = generator.initial_state(image_vec)                    # nest of (B, ...) tensors
    logits, state = generator.step(token_ids, state)              # token_ids (B,) int32 -> logits (B, V)

can be decoded with :func:`beam_search`. The whole search is one ``tf.while_loop`` with shape invariants,
so it runs eagerly, inside ``tf.function`` with a dynamic batch size, and inside an exported SavedModel
served by TF Serving -- no ``py_function`` and no Python-side state.

How the search works (B images, K = ``beam_size``, V words, T = ``max_length``):

* **Alive and finished are kept apart.** ``K`` alive hypotheses per image keep growing; finished ones
  (ended by END, or cut at ``max_length``) live in a separate top-``top_k`` table and never grow again.
* **Candidates.** Every step scores all ``K * V`` one-word extensions by total log-probability
  (log-softmax of the logits, summed over the sequence) and keeps the best ``2K``. At most ``K`` of those
  end in END (one END per alive beam), so after moving END candidates out there are always ``K`` non-END
  candidates left to stay alive. This is the fix for the im2txt bug, where a beam whose best word was END
  lost a slot and the best continuation could be dropped.
* **When END finishes a hypothesis.** An END candidate is moved to the finished table only if it ranks
  among the top ``K`` of the step's candidates, i.e. only if it would have won a beam slot. This is what
  makes ``beam_size=1`` exactly greedy decoding (for ``alpha=0``): a sentence ends exactly when END is the
  arg-max word.
* **Minimum length.** Before ``min_length`` words have been generated END cannot be chosen: an END candidate
  may neither finish a hypothesis nor (as always) stay alive, so the ``K`` best other words carry on, exactly
  as if END's log-probability were ``-inf``. With the default ``min_length=1`` no caption is empty. The scores
  stay the model's own log-probabilities (no renormalisation over the other words).
* **Length normalisation.** Finished hypotheses are ranked by ``log p(y) / length ** alpha`` where
  ``length`` counts the generated words *including* END (START is never counted). ``alpha=0`` ranks by raw
  log-probability, ``alpha=1`` by mean log-probability per word. (We use the plain power rather than GNMT's
  ``((5 + length) / 6) ** alpha``: it is easier to read and both give the same early-stop bound below.)
* **Early stop.** Log-probabilities only go down as a sequence grows and the penalty only goes up (for
  ``alpha >= 0``), so no alive hypothesis can ever finish above
  ``max(alive log p) / max_length ** alpha``. When that bound is no better than the ``top_k``-th finished
  score for every image, the result cannot change and the loop stops; otherwise it runs to
  ``max_length``. Ties keep the hypothesis that finished first, so an image decodes to the same result
  alone or in a batch.

What one step costs (issue 17). At one image per call a step is a few hundred small ops around three
matrix-vector products, so the loop body is kept lean: one ``top_k`` over each image's flattened K x V scores;
everything that does not change from step to step (START rows, the beam-row offsets, the won-a-slot mask) is
built once before the loop; the word to feed next is carried, not sliced out of the sequences; each state leaf is
reordered with one ``gather`` by precomputed rows, and not at all for ``beam_size=1``; the min-length rule acts
on the 2K candidates instead of masking all V log-probabilities; hypotheses cut at ``max_length`` join the
finished table once, after the loop, and lengths are read off the finished sequences there; the loop condition
is a flag the body computes. The same ops run in the plain graph and under XLA (``jit_compile=True``, the
default of :class:`karpalign.decoding.generate.CaptionGenerator` and of the export), which fuses the whole loop
into one program. Against the earlier, longer body the word ids are unchanged in both, and so are the scores to
the bit at ``alpha=0`` (the default; with some ``alpha`` grappler's rewrites round the division differently).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import tensorflow as tf

StepFn = Callable[[tf.Tensor, Any], "tuple[tf.Tensor, Any]"]

_NEG_INF = float("-inf")


class BeamResult(NamedTuple):
    """Decoded hypotheses, best first.

    ids: (B, top_k, max_length) int32 generated word ids (START excluded, END included when the hypothesis
        ended by END), 0 after the last word.
    scores: (B, top_k) float32 length-normalised log-probability ``log p / length ** alpha``; ``-inf``
        marks an empty slot (only possible when fewer than ``top_k`` distinct hypotheses exist, e.g. with a
        tiny vocabulary and max_length).
    lengths: (B, top_k) int32 number of generated words including END; 0 for an empty slot.
    """

    ids: tf.Tensor
    scores: tf.Tensor
    lengths: tf.Tensor


def length_penalty(length, alpha: float) -> tf.Tensor:
    """The normaliser ``length ** alpha`` (float32) that finished log-probabilities are divided by."""
    return tf.pow(tf.cast(length, tf.float32), tf.constant(alpha, tf.float32))


def beam_search(
    step_fn: StepFn,
    initial_state: Any,
    batch_size,
    *,
    beam_size: int,
    max_length: int,
    start_id: int,
    end_id: int,
    alpha: float = 0.0,
    top_k: int = 1,
    vocab_size: int | None = None,
    min_length: int = 1,
) -> BeamResult:
    """Decodes ``top_k`` best sequences per batch element with a length-normalised beam search.

    Args:
        step_fn: ``step_fn(token_ids (N,) int32, state) -> (logits (N, V), state)``; must return a state
            with the same nesting and dtypes as it was given. It is called with
            ``N = batch_size * beam_size``.
        initial_state: nest (tuple / list / dict) of tensors with leading dimension ``batch_size``, e.g. an
            LSTM ``(h, c)``. It is tiled to ``batch_size * beam_size`` rows (each image's beams adjacent).
        batch_size: Python int or scalar int32 tensor (e.g. ``tf.shape(image_vec)[0]`` for a dynamic batch).
        beam_size: alive hypotheses kept per image (K >= 1); 1 with ``alpha=0`` is greedy decoding.
        max_length: maximum number of generated words including END; a hypothesis that reaches it without END
            is finished as it is.
        start_id: word fed at the first step.
        end_id: word that ends a sentence.
        alpha: length-normalisation exponent (>= 0); see the module docstring.
        top_k: number of finished hypotheses returned per image (1 <= top_k <= beam_size).
        vocab_size: V, if the logits' last dimension is not known statically (it is then checked and pinned).
        min_length: words that must be generated before END may be chosen (0 <= min_length <= max_length;
            default 1: no empty captions). With ``min_length == max_length`` every hypothesis is cut there.

    Returns:
        :class:`BeamResult` with ``ids`` (B, top_k, max_length), ``scores`` (B, top_k) and ``lengths``
        (B, top_k), best hypothesis first.
    """
    _check_arguments(beam_size, max_length, start_id, end_id, alpha, top_k, vocab_size, min_length)
    k_beam, n_best, t_max = beam_size, top_k, max_length
    batch = batch_size if isinstance(batch_size, int) else tf.convert_to_tensor(batch_size, tf.int32)
    static_batch = batch if isinstance(batch, int) else tf.get_static_value(batch)
    static_batch = None if static_batch is None else int(static_batch)

    initial_state = _check_initial_state(tf.nest.map_structure(tf.convert_to_tensor, initial_state), batch)
    state = initial_state if k_beam == 1 else tf.nest.map_structure(
        lambda x: tf.repeat(x, k_beam, axis=0), initial_state)  # (B*K, ...)

    # Step-invariant tensors, built once outside the loop (the body captures them as loop constants).
    # Sequences carry START in column 0, so the word generated at step t goes to column t + 1.
    positions = tf.range(t_max + 1)  # (T+1,)
    alive_seq = tf.pad(tf.fill([batch, k_beam, 1], tf.constant(start_id, tf.int32)),
                       [[0, 0], [0, 0], [0, t_max]])  # (B, K, T+1)
    fed = tf.fill([batch * k_beam], tf.constant(start_id, tf.int32))  # (B*K,) the words fed at the next step
    # All K beams start out identical; only beam 0 may expand at the first step.
    first_beam_only = tf.constant([0.0] + [_NEG_INF] * (k_beam - 1), tf.float32)  # (K,)
    alive_log_probs = tf.tile(first_beam_only[None, :], [batch, 1])  # (B, K)
    finished_seq = tf.zeros([batch, n_best, t_max + 1], tf.int32)  # (B, k, T+1)
    finished_scores = tf.fill([batch, n_best], _NEG_INF)  # (B, k)
    beam_offsets = tf.range(batch)[:, None] * k_beam  # (B, 1) row of each image's first beam in (B*K, ...)
    won_slot = tf.range(2 * k_beam) < k_beam  # (2K,) the candidates that would win a beam slot
    max_penalty = length_penalty(t_max, alpha)  # scalar

    def normalised(log_probs, length=None):
        """log p / length ** alpha, at ``length`` or else at max_length (alpha = 0: no division, which is exact)."""
        if alpha == 0:
            return log_probs
        return log_probs / (max_penalty if length is None else length_penalty(length, alpha))

    def can_improve(alive_log_probs, finished_scores):
        """(B,) bool: could some alive hypothesis still beat the top_k-th finished one?"""
        best_possible = normalised(tf.reduce_max(alive_log_probs, axis=1))  # (B,)
        return best_possible > finished_scores[:, -1]

    def cond(go_on, step, fed, alive_seq, alive_log_probs, alive_state, finished_seq, finished_scores):
        return go_on  # computed at the end of the body: one loop-condition op per step

    def body(go_on, step, fed, alive_seq, alive_log_probs, alive_state, finished_seq, finished_scores):
        logits, new_state = step_fn(fed, alive_state)
        logits = _check_step_output(logits, new_state, alive_state, vocab_size, end_id)
        n_vocab = logits.shape[-1] if logits.shape[-1] is not None else tf.shape(logits)[-1]
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)  # (B*K, V)
        # Every beam's extensions scored by total log-probability, flattened to one row per image, so that a
        # single top-k picks the candidates of all K beams (flat index = beam * V + word).
        candidates = tf.reshape(tf.reshape(alive_log_probs, [-1, 1]) + log_probs, [-1, k_beam * n_vocab])

        # The 2K best extensions: at most K of them end in END, so K non-END ones always remain.
        cand_log_probs, cand_index = tf.math.top_k(candidates, k=2 * k_beam)  # (B, 2K) best first
        cand_word = cand_index if k_beam == 1 else cand_index % n_vocab  # (B, 2K)
        cand_is_end = tf.equal(cand_word, end_id)  # (B, 2K)
        new_step = step + 1
        at_new_word = tf.equal(positions, new_step)  # (T+1,) the column the new word goes to

        # Alive: the K best candidates that did not end (top_k keeps their rank order). END candidates are
        # never alive, so before min_length words (when END may not finish either) END is no choice at all.
        non_end_log_probs = tf.where(cand_is_end, _NEG_INF, cand_log_probs)  # (B, 2K)
        new_alive_log_probs, keep = tf.math.top_k(non_end_log_probs, k=k_beam)  # (B, K)
        kept_index = tf.gather(cand_index, keep, batch_dims=1)  # (B, K)
        if k_beam == 1:  # one beam: every candidate extends it, so nothing is reordered
            new_word, parent_seq, new_alive_state = kept_index, alive_seq, new_state
        else:
            parent_beam = kept_index // n_vocab  # (B, K)
            new_word = kept_index % n_vocab  # (B, K)
            parent_seq = tf.gather(alive_seq, parent_beam, batch_dims=1)  # (B, K, T+1)
            parent_row = tf.reshape(parent_beam + beam_offsets, [-1])  # (B*K,) rows of new_state to keep
            new_alive_state = tf.nest.map_structure(lambda x: tf.gather(x, parent_row), new_state)
        new_alive_seq = tf.where(at_new_word, new_word[:, :, None], parent_seq)  # (B, K, T+1)

        # Finished: END candidates that won a beam slot (rank < K), once min_length words came before END.
        # (A mask, not a slice: XLA turns top_k into its fast TopK call only if the outputs are not sliced.)
        won_end = tf.logical_and(cand_is_end, won_slot)  # (B, 2K)
        if min_length > 0:
            won_end = tf.logical_and(won_end, step >= min_length)
        end_scores = tf.where(won_end, normalised(cand_log_probs, new_step), _NEG_INF)  # (B, 2K)
        cand_parent_seq = (tf.tile(alive_seq, [1, 2, 1]) if k_beam == 1 else
                           tf.gather(alive_seq, cand_index // n_vocab, batch_dims=1))  # (B, 2K, T+1)
        end_seq = tf.where(at_new_word, end_id, cand_parent_seq)  # (B, 2K, T+1)
        # Old finished come first so that on ties the earlier hypothesis is kept.
        finished_scores, finished_seq = _best_of(n_best, (finished_scores, end_scores), (finished_seq, end_seq))

        go_on = tf.logical_and(new_step < t_max,
                               tf.reduce_any(can_improve(new_alive_log_probs, finished_scores)))
        return (go_on, new_step, tf.reshape(new_word, [-1]), new_alive_seq, new_alive_log_probs,
                new_alive_state, finished_seq, finished_scores)

    rows = None if static_batch is None else static_batch * k_beam
    loop_vars = (tf.constant(True), tf.constant(0), fed, alive_seq, alive_log_probs, state,
                 finished_seq, finished_scores)
    invariants = (
        tf.TensorShape([]),
        tf.TensorShape([]),
        tf.TensorShape([rows]),
        tf.TensorShape([static_batch, k_beam, t_max + 1]),
        tf.TensorShape([static_batch, k_beam]),
        tf.nest.map_structure(lambda x: tf.TensorShape([rows]).concatenate(x.shape[1:]), state),
        tf.TensorShape([static_batch, n_best, t_max + 1]),
        tf.TensorShape([static_batch, n_best]),
    )
    _, steps, _, alive_seq, alive_log_probs, _, finished_seq, finished_scores = tf.while_loop(
        cond, body, loop_vars, shape_invariants=invariants)

    # Hypotheses still alive after max_length words are finished as they are (cut), after the ones already
    # finished (ties keep the earlier). Only if the loop ran to max_length: an early stop means none can win.
    cut_scores = tf.where(tf.equal(steps, t_max), normalised(alive_log_probs, steps), _NEG_INF)  # (B, K)
    finished_scores, finished_seq = _best_of(n_best, (finished_scores, cut_scores), (finished_seq, alive_seq))

    # Slots that never received a hypothesis (score -inf) are emptied rather than left with garbage words.
    empty = tf.math.is_inf(finished_scores)  # (B, k)
    words = finished_seq[:, :, 1:]  # (B, k, T)
    # A finished hypothesis holds END only as its last word, or is max_length words long without END.
    is_end = tf.equal(words, end_id)  # (B, k, T)
    end_at = tf.argmax(tf.cast(is_end, tf.int32), axis=-1, output_type=tf.int32)  # (B, k) first END
    lengths = tf.where(tf.reduce_any(is_end, axis=-1), end_at + 1, t_max)  # (B, k)
    ids = tf.where(empty[:, :, None], 0, words)  # (B, k, T)
    lengths = tf.where(empty, 0, lengths)  # (B, k)
    return BeamResult(ids=ids, scores=finished_scores, lengths=lengths)


def _best_of(n_best: int, scores, sequences):
    """The ``n_best`` best of the concatenated (B, n_i) ``scores`` with their (B, n_i, T+1) ``sequences``; on
    equal scores the one that comes first wins (``tf.math.top_k`` is stable)."""
    best_scores, best = tf.math.top_k(tf.concat(scores, axis=1), k=n_best)  # (B, k)
    return best_scores, tf.gather(tf.concat(sequences, axis=1), best, batch_dims=1)  # (B, k), (B, k, T+1)


def greedy_search(
    step_fn: StepFn,
    initial_state: Any,
    batch_size,
    *,
    max_length: int,
    start_id: int,
    end_id: int,
    vocab_size: int | None = None,
    min_length: int = 1,
) -> BeamResult:
    """Greedy decoding (arg-max word each step, stop at END, never before ``min_length`` words):
    :func:`beam_search` with ``beam_size=1``."""
    return beam_search(step_fn, initial_state, batch_size, beam_size=1, max_length=max_length,
                       start_id=start_id, end_id=end_id, alpha=0.0, top_k=1, vocab_size=vocab_size,
                       min_length=min_length)


def _check_arguments(beam_size, max_length, start_id, end_id, alpha, top_k, vocab_size, min_length=1) -> None:
    """Python-side argument checks (they are static in an exported graph, so fail at trace time)."""
    for name, value, low in (("beam_size", beam_size, 1), ("max_length", max_length, 1), ("top_k", top_k, 1),
                             ("start_id", start_id, 0), ("end_id", end_id, 0), ("min_length", min_length, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"beam_search: {name} must be a Python int >= {low}, got {value!r}")
    if min_length > max_length:
        raise ValueError(f"beam_search: min_length ({min_length}) cannot exceed max_length ({max_length})")
    if top_k > beam_size:
        raise ValueError(f"beam_search: top_k ({top_k}) cannot exceed beam_size ({beam_size})")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha < float("inf"):
        raise ValueError(f"beam_search: alpha must be a finite number >= 0, got {alpha!r}")
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
            raise ValueError(f"beam_search: vocab_size must be a Python int >= 2, got {vocab_size!r}")
        for name, value in (("start_id", start_id), ("end_id", end_id)):
            if value >= vocab_size:
                raise ValueError(f"beam_search: {name} ({value}) is outside the vocabulary of size "
                                 f"{vocab_size}")


def _check_initial_state(initial_state, batch):
    """Every state leaf must be a tensor whose first dimension is the batch; returns the (checked) state."""
    leaves = tf.nest.flatten(initial_state)
    if not leaves:
        raise ValueError("beam_search: initial_state has no tensors; it needs at least one (B, ...) tensor")
    checked = []
    for i, leaf in enumerate(leaves):
        if leaf.shape.rank is not None and leaf.shape.rank < 1:
            raise ValueError(f"beam_search: initial_state leaf #{i} is a scalar; every leaf needs a leading "
                             "batch dimension")
        if isinstance(batch, int):
            if leaf.shape[0] is not None and leaf.shape[0] != batch:
                raise ValueError(f"beam_search: initial_state leaf #{i} has leading dimension "
                                 f"{leaf.shape[0]}, but batch_size is {batch}")
            checked.append(leaf)
            continue
        same_batch = tf.debugging.assert_equal(
            tf.shape(leaf)[0], batch,
            message=f"beam_search: initial_state leaf #{i} leading dimension differs from batch_size")
        with tf.control_dependencies([same_batch]):
            checked.append(tf.identity(leaf))
    return tf.nest.pack_sequence_as(initial_state, checked)


def _check_step_output(logits, new_state, old_state, vocab_size, end_id) -> tf.Tensor:
    """Checks what step_fn returned (at trace time where possible) and returns the logits."""
    logits = tf.convert_to_tensor(logits)
    if logits.shape.rank != 2:
        raise ValueError(f"beam_search: step_fn must return logits of shape (N, V), got shape {logits.shape}")
    if not logits.dtype.is_floating:
        raise ValueError(f"beam_search: step_fn must return floating-point logits, got {logits.dtype.name}")
    try:
        tf.nest.assert_same_structure(old_state, new_state)
    except (ValueError, TypeError) as err:
        raise ValueError(f"beam_search: step_fn returned a state whose nesting differs from the state it was "
                         f"given: {err}") from None
    for i, (old, new) in enumerate(zip(tf.nest.flatten(old_state), tf.nest.flatten(new_state))):
        if tf.as_dtype(new.dtype) != old.dtype:
            raise ValueError(f"beam_search: step_fn returned state leaf #{i} as "
                             f"{tf.as_dtype(new.dtype).name}, but it was given as {old.dtype.name}")
    n_vocab = logits.shape[-1]
    if vocab_size is not None:
        if n_vocab is not None and n_vocab != vocab_size:
            raise ValueError(f"beam_search: step_fn returned {n_vocab} logits per row, but vocab_size is "
                             f"{vocab_size}")
        logits = tf.ensure_shape(logits, [None, vocab_size])
    elif n_vocab is not None:
        if n_vocab < 2:
            raise ValueError(f"beam_search: the vocabulary needs at least 2 words, logits have {n_vocab}")
        if end_id >= n_vocab:
            raise ValueError(f"beam_search: end_id ({end_id}) is outside the vocabulary of size {n_vocab}")
    else:
        checks = [
            tf.debugging.assert_greater(
                tf.shape(logits)[-1], end_id,
                message="beam_search: end_id is outside the vocabulary (the logits are too narrow)"),
            tf.debugging.assert_greater_equal(tf.shape(logits)[-1], 2,
                                              message="beam_search: the vocabulary needs at least 2 words"),
        ]
        with tf.control_dependencies(checks):
            logits = tf.identity(logits)
    return logits
