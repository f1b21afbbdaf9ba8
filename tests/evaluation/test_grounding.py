"""The grounded caption metric on hand-made captions: mentions parsed with the scenes' own words (synonyms,
plurals, counts, relative clauses), object precision / recall, count accuracy, novel pairs, and the scenes'
own (always true) reference captions scoring 100%."""

import json

import pytest

from karpalign.evaluation.grounding import (SceneLexicon, check_objects, ground_caption, grounded_metrics,
                                            parse_mentions, read_scene_objects, scene_objects_of_records)


def _o(colour, shape, size="medium"):
    return {"colour": colour, "shape": shape, "size": size}


def _parsed(caption):
    return [(m.colour, m.shape, m.size, m.count) for m in parse_mentions(caption)]


def test_mentions_use_the_datasets_synonyms_plurals_and_counts():
    assert _parsed("A red disc and two big violet rhombuses.") == [
        ("red", "circle", None, 1), ("purple", "diamond", "large", 2)]
    assert _parsed("three tiny plus signs on a striped background") == [(None, "cross", "small", 3)]
    assert _parsed("Mid sized green crosses left of a single yellow hexagon") == [
        ("green", "cross", "medium", None), ("yellow", "hexagon", None, 1)]
    assert _parsed("An orange star") == [("orange", "star", None, 1)]
    assert _parsed("blue squares") == [("blue", "square", None, None)]  # a bare plural states no count


def test_relative_clauses_and_generic_nouns():
    assert _parsed("A triangle that is small and pink is above two circles that are red.") == [
        ("pink", "triangle", "small", 1), ("red", "circle", None, 2)]
    # "and" followed by a new noun phrase ends the clause
    assert _parsed("a star that is brown and yellow stars") == [("brown", "star", None, 1),
                                                                ("yellow", "star", None, None)]
    assert _parsed("Two shapes: a red object and a shape that is blue") == [
        (None, None, None, 2), ("red", None, None, 1), ("blue", None, None, 1)]
    # Words that are not objects, and a background colour, are not mentions.
    assert _parsed("A picture of a white background.") == []
    assert [m.text for m in parse_mentions("There is a big red star right of it")] == ["a big red star"]


def test_one_caption_grounded_by_hand():
    objects = [_o("red", "circle", "large"), _o("red", "circle", "small"), _o("blue", "star")]
    # "two red discs": true, count right; "a green star": false; "a blue star": true, count right.
    g = ground_caption("Two red discs, a green star and a blue star.", objects)
    assert (g["mentions"], g["true_mentions"], g["objects"], g["objects_named"]) == (3, 2, 3, 3)
    assert (g["counts_stated"], g["counts_right"]) == (3, 2)  # "a green star": no green star at all
    assert g["false"] == ["a green star"]
    # "a red circle" claims exactly one red circle: the pair is true, the count is not.
    g = ground_caption("a red circle", objects)
    assert (g["true_mentions"], g["objects_named"], g["counts_right"]) == (1, 2, 0)
    # A size narrows the count: there is exactly one large red circle.
    assert ground_caption("a large red circle", objects)["counts_right"] == 1
    # A generic count phrase is checked against every object.
    g = ground_caption("three shapes", objects)
    assert (g["mentions"], g["counts_stated"], g["counts_right"]) == (0, 1, 1)


def test_metrics_over_captions_are_micro_averages():
    objects = {"a": [_o("red", "circle"), _o("blue", "star")], "b": [_o("green", "square")],
               "c": [_o("yellow", "cross"), _o("yellow", "cross")]}
    captions = {"a": "a red circle and a blue square", "b": "a picture on a grey background",
                "c": "two yellow plus signs"}
    m = grounded_metrics(captions, objects)
    # mentions: red circle (T), blue square (F), yellow cross x2 (T) -> 2 / 3; objects named: 1 + 0 + 2 of 5
    assert m["object_precision"] == pytest.approx(2 / 3) and m["object_recall"] == pytest.approx(3 / 5)
    assert m["count_accuracy"] == pytest.approx(2 / 3)  # "a blue square" claims one; there is none
    assert m["captions_without_mentions"] == 1 and m["n_images"] == 3
    assert m["frequent_false"] == [("a blue square", 1)]
    assert m["novel_pair_named"] is None and m["novel_mention_precision"] is None


def test_novel_pairs_named_and_mentioned():
    objects = {"a": [_o("pink", "cross"), _o("red", "star")], "b": [_o("pink", "cross")], "c": [_o("red", "star")]}
    captions = {"a": "a pink plus sign and a red star", "b": "a red star", "c": "a pink cross"}
    m = grounded_metrics(captions, objects, novel_pairs=[("pink", "cross")])
    assert (m["novel_images"], m["novel_named"]) == (2, 1) and m["novel_pair_named"] == 0.5
    assert (m["novel_mentions"], m["novel_true"]) == (2, 1) and m["novel_mention_precision"] == 0.5
    with pytest.raises(ValueError, match=r"novel_pairs: \('pink', 'blob'\) is not a \(colour, shape\) pair"):
        grounded_metrics(captions, objects, novel_pairs=[("pink", "blob")])


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match=r"objects\['x'\]\[1\]: field 'colour' is 'teal'"):
        grounded_metrics({"x": "a red star"}, {"x": [_o("red", "star"), _o("teal", "star")]})
    with pytest.raises(ValueError, match=r"field 'shape' is None"):
        check_objects([{"colour": "red"}], "objects")
    with pytest.raises(ValueError, match=r"1 captioned images have no objects, e.g. \['y'\]"):
        grounded_metrics({"y": "a red star"}, {"x": []})
    with pytest.raises(TypeError, match=r"captions\['x'\] must be a string"):
        grounded_metrics({"x": ["a red star"]}, {"x": []})
    with pytest.raises(ValueError, match="captions is empty"):
        grounded_metrics({}, {})
    with pytest.raises(ValueError, match="'disc' is both"):
        SceneLexicon(shape_words={"circle": ("disc",), "square": ("disc",)})


def test_the_scenes_reference_captions_are_all_true(tmp_path):
    """The scenes' grammar only says true things, so its own captions must score precision 1 and count
    accuracy 1 (a parser that misreads a synonym, plural, clause or count would lose some)."""
    from karpalign.datasets.generate import generate_scenes

    generate_scenes(str(tmp_path / "scenes"), 60, seed=4, image_size=64, workers=1, captions_per_image=5)
    scene = read_scene_objects(str(tmp_path / "scenes" / "dataset.json"))
    data = json.load(open(tmp_path / "scenes" / "dataset.json"))
    for k in range(5):
        captions = {str(img["imgid"]): img["sentences"][k]["raw"] for img in data["images"]}
        m = grounded_metrics(captions, scene.objects, scene.novel_pairs())
        assert m["mentions"] > 30 and m["counts_stated"] > 30
        assert m["object_precision"] == 1.0 and m["count_accuracy"] == 1.0, m["frequent_false"]
    # The first caption of every image lists all objects grouped by colour and shape: recall is high.
    first = {str(img["imgid"]): img["sentences"][0]["raw"] for img in data["images"]}
    assert grounded_metrics(first, scene.objects)["object_recall"] > 0.7
    held_out = {tuple(p) for p in json.load(open(tmp_path / "scenes" / "scenes_meta.json"))["heldout_pairs"]}
    present = {(o["colour"], o["shape"]) for objs in scene.objects.values() for o in objs}
    assert held_out & present and held_out & present <= set(scene.novel_pairs())  # held out of train: novel


def test_objects_of_records_come_from_their_dataset(tmp_path):
    from karpalign.data import features as F
    from karpalign.testing import make_toy_records

    records = make_toy_records(str(tmp_path / "records"), num_train=8, num_val=2, num_test=2, shards=1)
    manifest = F.read_manifest(records)
    scene, note = scene_objects_of_records(manifest)
    assert scene is None and "names no dataset file" in note
    dataset = str(tmp_path / "records" / "dataset.json")
    scene, note = scene_objects_of_records(manifest, dataset)
    assert len(scene.objects) == 12 and note == f"objects from {dataset}"
    manifest.extra["dataset"] = dataset
    assert scene_objects_of_records(manifest)[0].objects == scene.objects
    data = json.load(open(dataset))
    del data["images"][3]["objects"]
    json.dump(data, open(dataset, "w"))
    with pytest.raises(ValueError, match=r"images\[3\] has no 'objects'"):
        read_scene_objects(dataset)
    assert "grounded metric skipped" in scene_objects_of_records(manifest)[1]
    with pytest.raises(FileNotFoundError, match="nope.json: file not found"):
        read_scene_objects(str(tmp_path / "nope.json"))
