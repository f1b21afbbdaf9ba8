"""Synthetic captioned scenes: karpalign's embedded default dataset (no download needed).

``generate_scenes`` writes JPEGs plus a Karpathy-format ``dataset.json`` with boxes and phrase links;
``sample_scene`` / ``render_scene`` / ``scene_layout`` / ``describe_scene`` are the pieces it is made of.
"""

from karpalign.datasets.captions import Caption, Phrase, describe_scene, pair_relations, referents
from karpalign.datasets.generate import (DEFAULT_SPLIT_FRACTIONS, SPLIT_NAMES, ScenesError, assign_splits,
                                         generate_scenes, heldout_pairs, make_image, parse_split_fractions,
                                         split_counts)
from karpalign.datasets.scenes import (BACKGROUND_KINDS, COLOURS, SHAPES, SIZES, BackgroundSpec, ObjectSpec,
                                       SceneLayout, SceneSpec, all_pairs, render_scene, render_scene_array,
                                       sample_scene, scene_layout)

__all__ = [
    "BACKGROUND_KINDS", "COLOURS", "DEFAULT_SPLIT_FRACTIONS", "SHAPES", "SIZES", "SPLIT_NAMES",
    "BackgroundSpec", "Caption", "ObjectSpec", "Phrase", "SceneLayout", "SceneSpec", "ScenesError",
    "all_pairs", "assign_splits", "describe_scene", "generate_scenes", "heldout_pairs", "make_image",
    "pair_relations", "parse_split_fractions", "referents", "render_scene", "render_scene_array",
    "sample_scene", "scene_layout", "split_counts",
]
