import json

import pytest

from karpalign.data.records import (DatasetError, Phrase, ReadReport, Record, Sentence, by_split,
                                    iter_train_tokens, read_coco_captions, read_dataset, read_jsonl,
                                    read_karpathy_json, write_karpathy_json)


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8fake")


def _karpathy(tmp_path, images, name="dataset.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"dataset": "flickr8k", "images": images}))
    return str(path)


def _img(i, split="train", sentences=("A dog runs.", "Two dogs play"), **kw):
    return dict({"filename": f"{i}.jpg", "imgid": i, "split": split,
                 "sentences": [{"raw": s, "tokens": [], "imgid": i, "sentid": 10 * i + j}
                               for j, s in enumerate(sentences)]}, **kw)


def test_karpathy_reader_and_restval_and_retokenize(tmp_path):
    for i in range(3):
        _touch(tmp_path / "val2014" / f"{i}.jpg")
    path = _karpathy(tmp_path, [_img(0, filepath="val2014", cocoid=42), _img(1, "restval", filepath="val2014"),
                                _img(2, "test", filepath="val2014")])
    recs = read_karpathy_json(path)
    assert [r.split for r in recs] == ["train", "restval", "test"]
    assert recs[0].image_id == "42" and recs[0].sentences[0].tokens == ["a", "dog", "runs"]
    assert recs[0].path == str((tmp_path / "val2014" / "0.jpg").resolve())
    folded = read_karpathy_json(path, fold_restval=True)
    assert [r.split for r in folded] == ["train", "train", "test"]


def test_missing_images_counted_and_empty_captions_dropped(tmp_path):
    _touch(tmp_path / "0.jpg")
    path = _karpathy(tmp_path, [_img(0, sentences=("A cat.", "  ", "!!!")), _img(1), _img(2)])
    report = ReadReport()
    recs = read_karpathy_json(path, report=report)
    assert len(recs) == 1 and len(recs[0].sentences) == 1
    assert report.empty_captions == 2 and report.missing_images == 2
    assert report.missing_examples[0].endswith("1.jpg")
    assert "2 image files missing" in report.summary()


@pytest.mark.parametrize("bad, field", [
    ({"imgid": 0, "split": "train", "sentences": []}, "filename"),
    ({"filename": "0.jpg", "split": "bogus", "sentences": []}, "split"),
    ({"filename": "0.jpg", "split": "train", "sentences": [{"tokens": []}]}, "sentences[0].raw"),
    ({"filename": "0.jpg", "split": "train", "sentences": "oops"}, "sentences"),
    ({"filename": "0.jpg", "split": "train", "sentences": [], "boxes": [[0.5, 0, 0.2, 1]]}, "boxes[0]"),
])
def test_malformed_karpathy_names_file_record_and_field(tmp_path, bad, field):
    path = _karpathy(tmp_path, [_img(0), bad])
    with pytest.raises(DatasetError) as e:
        read_karpathy_json(path, check_images=False)
    assert "dataset.json: record 1" in str(e.value) and repr(field) in str(e.value)


def test_invalid_json_reports_position(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match="invalid JSON at line 1"):
        read_karpathy_json(str(path))


@pytest.mark.parametrize("name", ["../secret.jpg", "/etc/passwd", "a/../../b.jpg"])
def test_paths_escaping_the_root_are_refused(tmp_path, name):
    path = _karpathy(tmp_path, [dict(_img(0), filename=name)])
    with pytest.raises(DatasetError, match="record 0, field 'filename'"):
        read_karpathy_json(path, check_images=False)


def test_symlink_escape_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    path = _karpathy(root, [dict(_img(0), filename="x.jpg", filepath="link")])
    with pytest.raises(DatasetError, match="escapes the image root"):
        read_karpathy_json(path, check_images=False)


def test_phrases_validated(tmp_path):
    img = _img(0, sentences=("A red circle",), boxes=[[0.1, 0.1, 0.5, 0.5]])
    img["sentences"][0]["phrases"] = [{"start": 0, "end": 3, "boxes": [0]}]
    recs = read_karpathy_json(_karpathy(tmp_path, [img]), check_images=False)
    assert recs[0].sentences[0].phrases == [Phrase(0, 3, [0])]
    img["sentences"][0]["phrases"] = [{"start": 0, "end": 9, "boxes": [0]}]
    with pytest.raises(DatasetError, match="outside the 3 tokens"):
        read_karpathy_json(_karpathy(tmp_path, [img]), check_images=False)
    img["sentences"][0]["phrases"] = [{"start": 0, "end": 2, "boxes": [3]}]
    with pytest.raises(DatasetError, match="do not name boxes"):
        read_karpathy_json(_karpathy(tmp_path, [img]), check_images=False)


def test_coco_captions_reader(tmp_path):
    _touch(tmp_path / "imgs" / "a.jpg")
    data = {"images": [{"id": 7, "file_name": "a.jpg"}, {"id": 8, "file_name": "missing.jpg"}],
            "annotations": [{"image_id": 7, "id": 1, "caption": "A man on a horse."},
                            {"image_id": 7, "id": 2, "caption": ""},
                            {"image_id": 8, "id": 3, "caption": "Nothing"}]}
    path = tmp_path / "captions_val2014.json"
    path.write_text(json.dumps(data))
    report = ReadReport()
    recs = read_dataset(str(path), str(tmp_path / "imgs"), report=report)
    assert len(recs) == 1 and recs[0].image_id == "7"
    assert [s.raw for s in recs[0].sentences] == ["A man on a horse."]
    assert report.missing_images == 1 and report.empty_captions == 1
    data["annotations"].append({"image_id": 99, "caption": "ghost"})
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="name images not in 'images'"):
        read_coco_captions(str(path), str(tmp_path / "imgs"))
    data["annotations"][0]["caption"] = 5
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="record 0, field 'annotations.caption'"):
        read_coco_captions(str(path), str(tmp_path / "imgs"))


def test_jsonl_reader_groups_captions(tmp_path):
    _touch(tmp_path / "a.jpg")
    lines = [{"image": "a.jpg", "caption": "One"}, {"image": "a.jpg", "caption": "Two", "split": "train"},
             {"image": "gone.jpg", "caption": "x"}]
    path = tmp_path / "caps.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    report = ReadReport()
    recs = read_dataset(str(path), report=report)
    assert len(recs) == 1 and [s.tokens for s in recs[0].sentences] == [["one"], ["two"]]
    assert report.missing_images == 1
    path.write_text('{"image": "a.jpg", "caption": "ok"}\n{"image": "a.jpg"}\n')
    with pytest.raises(DatasetError, match="caps.jsonl: record 2, field 'caption': missing"):
        read_jsonl(str(path))
    path.write_text('{"image": "a.jpg", "caption": "ok"}\nnot json\n')
    with pytest.raises(DatasetError, match="invalid JSON on line 2"):
        read_jsonl(str(path))


def test_writer_round_trip(tmp_path):
    for n in ("x/a.jpg", "b.jpg"):
        _touch(tmp_path / n)
    recs = [Record("a", "train", str(tmp_path / "x/a.jpg"), [Sentence("A red circle", ["a", "red", "circle"],
                                                                       phrases=[Phrase(1, 3, [0])])],
                   boxes=[[0.0, 0.0, 0.5, 0.5]]),
            Record("b", "test", str(tmp_path / "b.jpg"), [Sentence("Hi", ["hi"])])]
    out = tmp_path / "out" / "dataset.json"
    write_karpathy_json(recs, str(out), str(tmp_path))
    again = read_karpathy_json(str(out), str(tmp_path))
    assert [(r.split, r.path, r.boxes) for r in again] == [(r.split, r.path, r.boxes) for r in recs]
    assert again[0].sentences[0].phrases == [Phrase(1, 3, [0])]
    with pytest.raises(ValueError, match="not under"):
        write_karpathy_json(recs, str(out), str(tmp_path / "x"))


def test_vocabulary_sees_only_train():
    recs = [Record("1", "train", "p", [Sentence("a b", ["a", "b"])]),
            Record("2", "test", "p", [Sentence("secret", ["secret"])]),
            Record("3", "val", "p", [Sentence("hidden", ["hidden"])])]
    assert list(iter_train_tokens(recs)) == [["a", "b"]]
    assert sorted(by_split(recs)) == ["test", "train", "val"]


def test_vocab_cli_uses_train_only(tmp_path, capsys):
    from karpalign.cli.vocab import main
    from karpalign.data.text import Vocabulary
    path = _karpathy(tmp_path, [_img(0, sentences=("zebra zebra",)), _img(1, "test", sentences=("secret",))])
    out = tmp_path / "vocab.txt"
    assert main([path, "--min-count", "1", "--out", str(out)]) == 2  # images missing -> no train images
    assert "no training images" in capsys.readouterr().err
    _touch(tmp_path / "0.jpg")
    _touch(tmp_path / "1.jpg")
    assert main([path, "--min-count", "1", "--out", str(out)]) == 0
    vocab = Vocabulary.load(str(out))
    assert "zebra" in vocab and "secret" not in vocab
