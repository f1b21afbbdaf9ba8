"""The caption generators by name (config key ``model.generator``) and what differs between them.

    mrnn     :class:`karpalign.models.mrnn_decoder.MRNNDecoder`, the paper's generator: region 0 (the full
             image) enters once, as a bias at the first step. The default.
    updown   :class:`karpalign.models.updown_decoder.UpDownDecoder`: attention LSTM + language LSTM attending
             over every region at every word (Anderson et al. 2018).

Both follow the decoder-step contract; the only difference the rest of the system sees is what
``initial_state`` and teacher forcing take: the mRNN an image vector (B, D), a generator with
``reads_regions = True`` the region features (B, R, D) and their mask (B, R). :func:`reads_regions` and
:func:`teacher_forcing_inputs` are where that difference is decided; the decode path
(:func:`karpalign.decoding.generate.decode_regions`) asks :func:`reads_regions` too.
"""

from __future__ import annotations

GENERATORS = ("mrnn", "updown")


def reads_regions(generator) -> bool:
    """True for a generator that attends over all regions (its ``initial_state`` takes features and mask)."""
    return bool(getattr(generator, "reads_regions", False))


def check_generator_name(kind: str, where: str = "model.generator") -> str:
    if kind not in GENERATORS:
        raise ValueError(f"{where} must be one of {list(GENERATORS)}, got {kind!r}")
    return kind


def build_generator(kind: str, vocab_size: int, feature_dim: int, *, hidden_dim: int, word_dim: int,
                    cell: str = "rnn", attention_dim: int = 512, dropout: float = 0.0, output_bias=None,
                    num_regions: int = 1, name: str = "generator"):
    """A generator of ``kind`` ('mrnn' or 'updown'), built (every weight created) on a dummy batch.

    ``cell`` is the mRNN's recurrence ('rnn' or 'lstm'; the updown generator is LSTMs by construction),
    ``attention_dim`` the updown attention size, ``num_regions`` the regions of the dummy batch.
    """
    import tensorflow as tf

    check_generator_name(kind)
    if kind == "mrnn":
        from karpalign.models.mrnn_decoder import MRNNDecoder

        model = MRNNDecoder(vocab_size, feature_dim, hidden_dim=hidden_dim, word_dim=word_dim, cell=cell,
                            dropout=dropout, output_bias=output_bias, name=name)
    else:
        from karpalign.models.updown_decoder import UpDownDecoder

        model = UpDownDecoder(vocab_size, feature_dim, hidden_dim=hidden_dim, word_dim=word_dim,
                              attention_dim=attention_dim, dropout=dropout, output_bias=output_bias, name=name)
    regions = max(int(num_regions), 1)
    model(teacher_forcing_inputs(model, {"region_features": tf.zeros([1, regions, feature_dim]),
                                         "region_mask": tf.ones([1, regions]),
                                         "image": tf.zeros([1, feature_dim]),
                                         "tokens": tf.zeros([1, 2], tf.int32)}))
    return model


def teacher_forcing_inputs(generator, batch: dict) -> dict:
    """The inputs of ``generator(...)`` from a caption batch: ``image`` (B, D) and ``tokens`` for the mRNN;
    ``region_features`` (B, R, D), ``region_mask`` (B, R) and ``tokens`` for a region-reading generator."""
    if reads_regions(generator):
        missing = [k for k in ("region_features", "region_mask") if k not in batch]
        if missing:
            raise ValueError(f"{type(generator).__name__} attends over regions, but the caption batch has no "
                             f"{missing} (build it with the regions, see CaptionTask.dataset)")
        return {"region_features": batch["region_features"], "region_mask": batch["region_mask"],
                "tokens": batch["tokens"]}
    return {"image": batch["image"], "tokens": batch["tokens"]}
