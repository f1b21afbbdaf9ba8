"""Keras models: the alignment model (``alignment_model``), the caption generators (``mrnn_decoder``, the
paper's mRNN; ``updown_decoder``, region attention) and the generator registry (``generators``: build one by
its ``model.generator`` name)."""

from karpalign.models.generators import GENERATORS, build_generator, reads_regions, teacher_forcing_inputs

__all__ = ["GENERATORS", "build_generator", "reads_regions", "teacher_forcing_inputs"]
