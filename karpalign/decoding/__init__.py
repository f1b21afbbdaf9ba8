"""Decoding: model-agnostic, in-graph beam search over any ``step(token_ids, state) -> (logits, state)``."""

from karpalign.decoding.beam_search import BeamResult, beam_search, greedy_search, length_penalty

__all__ = ["BeamResult", "beam_search", "greedy_search", "length_penalty"]
