"""Test fixtures and examples in karpalign's formats: small learnable records, untrained run folders and a toy
captioning SavedModel.

- ``toy_data``   ``make_toy_records`` (records, vocab, manifest and a dataset.json with phrase links),
                 ``untrained_runs`` (tiny alignment and caption run folders), ``SMALL_MODEL`` (``--set`` values
                 that learn the toy task in seconds), ``COLOURS``, ``SHAPES``
- ``toy_model``  ``ToyCaptioner``, ``export_toy_model``: a SavedModel with the real export's ``serving_default``
                 contract that needs no training (for the serving stack's tests and benchmarks)

Everything is importable from ``karpalign.testing``; the toy model (TensorFlow) is imported on first use, so
``from karpalign.testing import make_toy_records`` does not load TensorFlow.
"""

from karpalign.testing.toy_data import COLOURS, SHAPES, SMALL_MODEL, make_toy_records, untrained_runs

_TOY_MODEL = ("ToyCaptioner", "export_toy_model")

__all__ = ["COLOURS", "SHAPES", "SMALL_MODEL", "ToyCaptioner", "export_toy_model", "make_toy_records",
           "untrained_runs"]


def __getattr__(name: str):
    if name in _TOY_MODEL:
        from karpalign.testing import toy_model

        return getattr(toy_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
