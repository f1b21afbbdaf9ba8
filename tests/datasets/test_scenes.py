"""Synthetic captioned scenes: rendering, boxes, caption truth, phrase links, splits, determinism, CLI."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from karpalign.cli.make_scenes import main as make_scenes_main
from karpalign.data.records import read_karpathy_json
from karpalign.data.text import python_tokenize
from karpalign.datasets import (COLOURS, SHAPES, SIZES, BackgroundSpec, ObjectSpec, SceneSpec, ScenesError,
                                assign_splits, describe_scene, generate_scenes, heldout_pairs, pair_relations,
                                parse_split_fractions, render_scene_array, sample_scene, scene_layout,
                                split_counts)
from karpalign.datasets.captions import referents, relation_triples

NUM_IMAGES, IMAGE_SIZE, SEED = 60, 96, 11


# ----------------------------------------------------------------------------------------------------------
# Word tables the checks below use, written out independently of the generator: every (multi-word) token
# sequence that may name a shape / colour / size, and every other word a noun phrase may contain.

SHAPE_NAMES = {  # every singular and plural form, by the shape it names
    "circle": ["circle", "circles", "disc", "discs"],
    "square": ["square", "squares"],
    "triangle": ["triangle", "triangles"],
    "star": ["star", "stars"],
    "diamond": ["diamond", "diamonds", "rhombus", "rhombuses"],
    "cross": ["cross", "crosses", "plus sign", "plus signs"],
    "hexagon": ["hexagon", "hexagons"],
}
SHAPE_TABLE = {tuple(form.split()): {shape} for shape, forms in SHAPE_NAMES.items() for form in forms}
COLOUR_TABLE = {(c,): {c} for c in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")}
COLOUR_TABLE[("violet",)] = {"purple"}
SIZE_TABLE = {("small",): {"small"}, ("little",): {"small"}, ("tiny",): {"small"},
              ("medium", "sized"): {"medium"}, ("mid", "sized"): {"medium"}, ("large",): {"large"},
              ("big",): {"large"}}
GENERIC = {"shape", "shapes", "object", "objects"}
COUNTS = {"two": 2, "three": 3, "four": 4}
GLUE = {"a", "an", "one", "single", "that", "is", "are", "and"}
ATTRIBUTE_WORDS = {w for table in (SHAPE_TABLE, COLOUR_TABLE, SIZE_TABLE) for key in table for w in key}
PHRASE_WORDS = GENERIC | set(COUNTS) | GLUE | ATTRIBUTE_WORDS


def _find(table, span):
    """Values named in ``span`` by any (possibly multi-word) entry of ``table``."""
    found = set()
    for words, values in table.items():
        n = len(words)
        if any(tuple(span[i:i + n]) == words for i in range(len(span) - n + 1)):
            found |= values
    return found


# ----------------------------------------------------------------------------------------------------------
# The generated dataset, once with 2 workers and once with 1 (also the determinism check).

@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    two, one = str(root / "two"), str(root / "one")
    summary = generate_scenes(two, NUM_IMAGES, seed=SEED, image_size=IMAGE_SIZE, workers=2)
    generate_scenes(one, NUM_IMAGES, seed=SEED, image_size=IMAGE_SIZE, workers=1)
    with open(os.path.join(two, "dataset.json")) as f:
        data = json.load(f)
    with open(os.path.join(two, "scenes_meta.json")) as f:
        meta = json.load(f)
    return {"dir": two, "dir_one_worker": one, "summary": summary, "data": data, "meta": meta}


def test_files_and_karpathy_fields(generated):
    data, summary = generated["data"], generated["summary"]
    assert data["dataset"] == "scenes"
    images = data["images"]
    assert [im["imgid"] for im in images] == list(range(NUM_IMAGES))
    assert summary["split_counts"] == {"train": 48, "val": 3, "test": 5, "test_novel": 4}
    counts = summary["split_counts"]
    assert {s: sum(im["split"] == s for im in images) for s in counts} == counts
    sentids = [sid for im in images for sid in im["sentids"]]
    assert len(sentids) == len(set(sentids)) == summary["num_sentences"]
    for im in images:
        path = os.path.join(generated["dir"], im["filepath"], im["filename"])
        with Image.open(path) as pic:
            assert pic.format == "JPEG"
            assert pic.size == (im["width"], im["height"]) == (IMAGE_SIZE, IMAGE_SIZE)
        assert 1 <= len(im["objects"]) == len(im["boxes"]) <= 4
        assert [s["sentid"] for s in im["sentences"]] == im["sentids"]
        assert all(s["imgid"] == im["imgid"] for s in im["sentences"])
        for obj in im["objects"]:
            assert obj["shape"] in SHAPES and obj["colour"] in COLOURS and obj["size"] in SIZES
    written = sorted(os.listdir(os.path.join(generated["dir"], "images")))
    assert written == sorted(im["filename"] for im in images)


def test_boxes_inside_image_with_area(generated):
    for im in generated["data"]["images"]:
        for ymin, xmin, ymax, xmax in im["boxes"]:
            assert 0.0 <= ymin < ymax <= 1.0 and 0.0 <= xmin < xmax <= 1.0
            assert (ymax - ymin) * IMAGE_SIZE >= 2 and (xmax - xmin) * IMAGE_SIZE >= 2


def _overlaps(a, b, slack=0.0):
    """Boxes share area (or, with ``slack``, come within ``slack`` of each other)."""
    return min(a[2], b[2]) + slack > max(a[0], b[0]) and min(a[3], b[3]) + slack > max(a[1], b[1])


def test_unoccluded_box_centres_have_the_object_colour_in_the_jpeg(generated):
    checked = 0
    for im in generated["data"]["images"]:
        with Image.open(os.path.join(generated["dir"], "images", im["filename"])) as pic:
            pixels = np.asarray(pic.convert("RGB"))
        boxes = im["boxes"]
        for i, (obj, box) in enumerate(zip(im["objects"], boxes)):
            if any(_overlaps(box, other) for other in boxes[i + 1:]):
                continue  # a later object may cover the centre
            cy = int((box[0] + box[2]) / 2 * IMAGE_SIZE)
            cx = int((box[1] + box[3]) / 2 * IMAGE_SIZE)
            patch = pixels[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3).mean(axis=0)
            assert np.abs(patch - COLOURS[obj["colour"]]).max() < 45, (im["filename"], obj, patch)
            checked += 1
    assert checked >= NUM_IMAGES


def test_tokens_are_the_project_tokenizer_and_captions_differ(generated):
    for im in generated["data"]["images"]:
        sents = im["sentences"]
        assert len(sents) >= 5
        assert len({tuple(s["tokens"]) for s in sents}) == len(sents)
        for s in sents:
            assert s["tokens"] == python_tokenize(s["raw"])
            assert s["raw"][0].isupper() and s["raw"].endswith(".")


def _check_phrase(span, objects):
    """Every attribute word in the span is true of every box, and the count agrees; True if colour+shape."""
    assert set(span) <= PHRASE_WORDS, span
    shapes, colours, sizes = _find(SHAPE_TABLE, span), _find(COLOUR_TABLE, span), _find(SIZE_TABLE, span)
    if shapes:
        assert shapes == {o["shape"] for o in objects}, (span, objects)
    else:
        assert GENERIC & set(span), (span, objects)
    if colours:
        assert colours == {o["colour"] for o in objects}, (span, objects)
    if sizes:
        assert sizes == {o["size"] for o in objects}, (span, objects)
    if span[0] in COUNTS:
        assert COUNTS[span[0]] == len(objects), (span, objects)
    else:
        assert span[0] in ("a", "an", "one") and len(objects) == 1, (span, objects)
    return bool(shapes and colours)


def test_phrases_name_their_boxes(generated):
    named_both = total = plural_links = 0
    for im in generated["data"]["images"]:
        for s in im["sentences"]:
            assert s["phrases"], s["raw"]
            for p in s["phrases"]:
                assert 0 <= p["start"] < p["end"] <= len(s["tokens"])
                assert p["boxes"] == sorted(set(p["boxes"]))
                assert all(0 <= b < len(im["boxes"]) for b in p["boxes"])
                span = s["tokens"][p["start"]:p["end"]]
                counted = span[0] in COUNTS or span[0] == "one" or span[:2] == ["a", "single"]
                whole_scene = len(p["boxes"]) == len(im["objects"])
                if span[-1] in GENERIC and counted and whole_scene and len(span) <= 3:
                    continue  # "three shapes": the whole scene
                named_both += _check_phrase(span, [im["objects"][b] for b in p["boxes"]])
                total += 1
                plural_links += len(p["boxes"]) > 1
    assert named_both >= 0.6 * total  # most phrases name both colour and shape
    assert plural_links > 0  # counted plurals ("two blue circles") link several boxes


RELATIONS = {"left of": ("left of",), "right of": ("right of",), "above": ("above",),
             "below": ("below", "beneath", "under"), "next to": ("next to", "beside"),
             "in front of": ("in front of",), "behind": ("behind",)}


def _relation_of(tokens, phrases):
    """(subject boxes, relation, object boxes) of a two-phrase relation caption, or None."""
    if len(phrases) != 2:
        return None
    (a, b) = phrases
    for rel, forms in RELATIONS.items():
        for form in forms:
            words = python_tokenize(form)
            n = len(words)
            hits = [i for i in range(len(tokens) - n + 1) if tokens[i:i + n] == words]
            for i in hits:
                if a["end"] <= i and i + n <= b["start"]:
                    return a["boxes"], rel, b["boxes"]  # "A rel B"
                if i + n <= a["start"] and b["start"] >= a["end"]:
                    return b["boxes"], rel, a["boxes"]  # "Rel B there is A"
    return None


def test_relations_are_true_from_box_centres(generated):
    checked = 0
    for im in generated["data"]["images"]:
        centres = [((b[1] + b[3]) / 2, (b[0] + b[2]) / 2) for b in im["boxes"]]
        for s in im["sentences"]:
            found = _relation_of(s["tokens"], s["phrases"])
            if found is None:
                continue
            subj, rel, obj = found
            for i in subj:
                for j in obj:
                    (xi, yi), (xj, yj) = centres[i], centres[j]
                    if rel == "left of":
                        assert xi < xj, (s["raw"], im["boxes"])
                    elif rel == "right of":
                        assert xi > xj, (s["raw"], im["boxes"])
                    elif rel == "above":
                        assert yi < yj, (s["raw"], im["boxes"])
                    elif rel == "below":
                        assert yi > yj, (s["raw"], im["boxes"])
                    elif rel == "next to":
                        assert abs(yi - yj) < 0.5 and abs(xi - xj) > 0.0, (s["raw"], im["boxes"])
                    elif rel == "in front of":
                        assert i > j and _overlaps(im["boxes"][i], im["boxes"][j], 1.5 / IMAGE_SIZE), s["raw"]
                    elif rel == "behind":
                        assert i < j and _overlaps(im["boxes"][i], im["boxes"][j], 1.5 / IMAGE_SIZE), s["raw"]
            checked += 1
    assert checked >= 20


def test_test_novel_pairs_never_in_train(generated):
    heldout = {tuple(p) for p in generated["meta"]["heldout_pairs"]}
    assert 1 <= len(heldout) <= 7
    for im in generated["data"]["images"]:
        pairs = {(o["colour"], o["shape"]) for o in im["objects"]}
        if im["split"] == "test_novel":
            assert pairs & heldout, im["filename"]
        else:
            assert not pairs & heldout, im["filename"]


def test_same_seed_same_bytes_with_one_or_two_workers(generated):
    a, b = generated["dir"], generated["dir_one_worker"]
    for name in ("dataset.json", "scenes_meta.json"):
        with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
            assert fa.read() == fb.read(), name
    for name in sorted(os.listdir(os.path.join(a, "images"))):
        with open(os.path.join(a, "images", name), "rb") as fa:
            with open(os.path.join(b, "images", name), "rb") as fb:
                assert fa.read() == fb.read(), name


def test_other_seed_other_dataset(tmp_path):
    generate_scenes(str(tmp_path / "s1"), 6, seed=1, image_size=64, workers=1)
    generate_scenes(str(tmp_path / "s2"), 6, seed=2, image_size=64, workers=1)
    assert (tmp_path / "s1" / "dataset.json").read_bytes() != (tmp_path / "s2" / "dataset.json").read_bytes()


def test_reads_back_with_the_project_reader(generated):
    records = read_karpathy_json(os.path.join(generated["dir"], "dataset.json"))
    assert len(records) == NUM_IMAGES
    first = generated["data"]["images"][0]
    assert records[0].boxes == [[float(v) for v in b] for b in first["boxes"]]
    assert [(p.start, p.end, p.boxes) for p in records[0].sentences[0].phrases] == \
        [(p["start"], p["end"], p["boxes"]) for p in first["sentences"][0]["phrases"]]


# ----------------------------------------------------------------------------------------------------------
# The pieces: rendering, layout, relations, grammar.

def test_boxes_are_tight_around_visible_pixels():
    """In the lossless render, the pixels of an object's exact RGB have exactly the object's box."""
    checked = 0
    for i in range(30):
        spec = sample_scene(np.random.default_rng([5, i]), 80)
        if len({o.rgb for o in spec.objects}) != len(spec.objects):
            continue
        layout = scene_layout(spec)
        pixels = render_scene_array(spec, layout)
        for obj, box, frac in zip(spec.objects, layout.boxes, layout.visible_fraction):
            ys, xs = np.nonzero((pixels == obj.rgb).all(axis=-1))
            assert [ys.min() / 80, xs.min() / 80, (ys.max() + 1) / 80, (xs.max() + 1) / 80] == box
            assert frac >= 0.6  # sampling keeps most of every object visible
            checked += 1
    assert checked >= 40


def test_every_shape_and_background_renders():
    for k, shape in enumerate(SHAPES):
        obj = ObjectSpec(shape=shape, colour="red", size="large", rgb=COLOURS["red"],
                         cx=32.0, cy=32.0, radius=20.0)
        for bg in (BackgroundSpec("plain", ((242, 242, 242),), "white"),
                   BackgroundSpec("stripes", ((236, 236, 236), (198, 198, 198)), period=5,
                                  orientation="diagonal"),
                   BackgroundSpec("checker", ((98, 98, 98), (62, 62, 62)), period=4),
                   BackgroundSpec("noise", ((150, 150, 150),), noise_seed=k),
                   BackgroundSpec("gradient", ((228, 214, 186), (194, 178, 148)), orientation="vertical")):
            spec = SceneSpec(64, bg, (obj,))
            pixels = render_scene_array(spec)
            assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
            assert tuple(pixels[32, 32]) == COLOURS["red"], (shape, bg.kind)
            ymin, xmin, ymax, xmax = scene_layout(spec).boxes[0]
            assert 0.3 < (ymax - ymin) <= 0.7 and 0.3 < (xmax - xmin) <= 0.7, shape
    with pytest.raises(ValueError, match="unknown shape"):
        render_scene_array(SceneSpec(64, BackgroundSpec("plain", ((0, 0, 0),), "black"),
                                     (ObjectSpec("blob", "red", "small", (1, 2, 3), 5.0, 5.0, 3.0),)))


def test_pair_relations_from_centres():
    left, right = [0.4, 0.1, 0.6, 0.3], [0.4, 0.6, 0.6, 0.8]
    assert pair_relations(left, right) == {"left of"}
    assert pair_relations(right, left) == {"right of"}
    top, bottom = [0.05, 0.4, 0.25, 0.6], [0.7, 0.45, 0.9, 0.65]
    assert pair_relations(top, bottom) == {"above"}
    assert pair_relations(bottom, top) == {"below"}
    near_a, near_b = [0.4, 0.1, 0.6, 0.3], [0.42, 0.33, 0.62, 0.53]
    assert pair_relations(near_a, near_b) == {"left of", "next to"}
    assert pair_relations(near_b, near_a, a_covers_b=True) == {"right of", "next to", "in front of"}
    assert pair_relations(left, [0.41, 0.12, 0.61, 0.32]) == set()  # centres too close for any direction


def _handmade_scene():
    """A small red triangle on the left; two blue circles (medium, large) on the right, stacked."""
    bg = BackgroundSpec("plain", ((242, 242, 242),), "white")
    objs = (ObjectSpec("triangle", "red", "small", COLOURS["red"], 20.0, 64.0, 8.0),
            ObjectSpec("circle", "blue", "medium", COLOURS["blue"], 100.0, 30.0, 13.0),
            ObjectSpec("circle", "blue", "large", COLOURS["blue"], 100.0, 95.0, 18.0))
    return SceneSpec(128, bg, objs)


def test_referents_and_relations_of_a_handmade_scene():
    spec = _handmade_scene()
    layout = scene_layout(spec)
    refs = referents(spec)
    by_members = {r.members: r for r in refs}
    assert ("circle", "blue", None) in by_members[(1, 2)].filters
    assert ("circle", None, "large") in by_members[(2,)].filters  # sizes tell the two circles apart
    assert not any(f[2] for f in by_members[(1, 2)].filters)  # ... so no size word names both
    assert (None, None, None) in by_members[(0, 1, 2)].filters
    assert ("triangle", None, None) in by_members[(0,)].filters
    triples = {(a.members, rel, b.members) for a, rel, b in relation_triples(spec, layout, refs)}
    assert ((0,), "left of", (1, 2)) in triples and ((1, 2), "right of", (0,)) in triples
    assert ((1,), "above", (2,)) in triples and ((2,), "below", (1,)) in triples
    assert not any(rel == "above" and a == (0,) for a, rel, _ in triples)  # the triangle is between them

    captions = describe_scene(spec, layout, np.random.default_rng(0), num_captions=8)
    assert len({c.tokens for c in captions}) == 8
    for cap in captions:
        for p in cap.phrases:
            span = cap.tokens[p.start:p.end]
            if p.boxes == (1, 2) and span[0] == "two":
                assert _find(SHAPE_TABLE, list(span)) <= {"circle"}


def test_splits_and_heldout_pairs():
    fr = parse_split_fractions("train=0.8,val=0.05,test=0.075,test_novel=0.075")
    assert fr == parse_split_fractions("0.8, 0.05, 0.075, 0.075")
    assert split_counts(7, fr) == {"train": 6, "val": 0, "test": 1, "test_novel": 0}
    assert sum(split_counts(12345, fr).values()) == 12345
    splits = assign_splits(200, fr, seed=3)
    assert splits == assign_splits(200, fr, seed=3) and splits != assign_splits(200, fr, seed=4)
    assert {s: splits.count(s) for s in set(splits)} == {"train": 160, "val": 10, "test": 15,
                                                         "test_novel": 15}
    pairs = heldout_pairs(3)
    assert len(pairs) == 6 and pairs == heldout_pairs(3)
    # no colour or shape twice, so every colour and every shape still occurs in training
    assert len({c for c, _ in pairs}) == len({s for _, s in pairs}) == 6


@pytest.mark.parametrize("text, problem", [
    ("0.5,0.5,0.5,0", "sum to 1"),
    ("train=1.2,val=-0.2", ">= 0"),
    ("train=0.9,dev=0.1", "unknown split"),
    ("0.8,0.2", "four numbers"),
    ("train=abc", "could not convert"),
])
def test_bad_split_fractions(text, problem):
    with pytest.raises(ScenesError, match=problem):
        parse_split_fractions(text)


# ----------------------------------------------------------------------------------------------------------
# CLI.

def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = make_scenes_main(["--num-images", "5", "--out", str(out), "--seed", "4", "--image-size", "64",
                           "--workers", "1", "--split-fractions", "0.6,0.2,0.0,0.2", "--quiet"])
    assert rc == 0
    data = json.loads((out / "dataset.json").read_text())
    assert sorted(im["split"] for im in data["images"]) == ["test_novel", "train", "train", "train", "val"]
    assert "wrote 5 images" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--num-images", "0"], "num_images"),
    (["--num-images", "3", "--split-fractions", "0.5,0.2,0.2,0.2"], "sum to 1"),
    (["--num-images", "3", "--image-size", "8"], "image_size"),
    (["--num-images", "3", "--workers", "0"], "workers"),
])
def test_cli_bad_arguments_exit_2(tmp_path, capsys, args, message):
    assert make_scenes_main(args + ["--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_cli_unwritable_out_dir_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert make_scenes_main(["--num-images", "2", "--out", str(blocker / "sub"), "--quiet"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_cli_argparse_errors_exit_2(tmp_path):
    with pytest.raises(SystemExit) as e:
        make_scenes_main(["--num-images", "many", "--out", str(tmp_path)])
    assert e.value.code == 2
