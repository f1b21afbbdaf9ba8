"""One bad image path never stops the extraction job: the readers' keep_bad_paths route (every dataset format),
and the job turning such records into "path" dead letters that count toward the failure rule."""

import json
import os

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BAD = ["../up.jpg", "/abs/x.jpg", "s3://bucket/x.jpg"]


def _karpathy(tmp_path):
    images = [{"filename": name, "split": "train", "imgid": i, "sentences": [{"raw": f"caption {i}"}]}
              for i, name in enumerate(["ok.jpg"] + BAD)]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"images": images}))
    return str(path)


def test_a_refused_path_stops_a_strict_reader_with_file_record_and_field(tmp_path):
    from karpalign.data.records import DatasetError, ImagePathError, read_dataset

    path = _karpathy(tmp_path)
    with pytest.raises(ImagePathError) as err:
        read_dataset(path, check_images=False)
    assert isinstance(err.value, DatasetError)
    assert str(err.value).startswith(f"{path}: record 1, field 'filename': path '../up.jpg' escapes the image root")


def test_kept_bad_paths_in_every_format(tmp_path):
    from karpalign.data.records import PATH_ERROR, ReadReport, read_dataset

    root = str(tmp_path / "images")
    report = ReadReport()
    records = read_dataset(_karpathy(tmp_path), root, check_images=False, report=report, keep_bad_paths=True)
    assert [r.path for r in records] == [os.path.join(os.path.realpath(root), "ok.jpg")] + BAD
    assert PATH_ERROR not in records[0].extra and report.bad_paths == 3 and report.records == 4
    errors = [r.extra[PATH_ERROR] for r in records[1:]]
    assert "record 1, field 'filename': path '../up.jpg' escapes the image root" in errors[0]
    assert "record 2, field 'filename': absolute path '/abs/x.jpg' is not allowed" in errors[1]
    assert "record 3, field 'filename': URL scheme 's3' is not allowed in image path 's3://bucket/x.jpg'" in errors[2]
    assert [s.raw for s in records[3].sentences] == ["caption 3"]  # its captions are read as usual
    assert "3 image paths refused" in report.summary()

    jsonl = tmp_path / "captions.jsonl"
    lines = [{"image": "ok.jpg", "caption": "one"}, {"image": "../up.jpg", "caption": "two"},
             {"image": "../up.jpg", "caption": "three"}]
    jsonl.write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = ReadReport()
    records = read_dataset(str(jsonl), root, check_images=False, report=report, keep_bad_paths=True)
    assert [(r.path, [s.raw for s in r.sentences]) for r in records] == [
        (os.path.join(os.path.realpath(root), "ok.jpg"), ["one"]), ("../up.jpg", ["two", "three"])]
    assert report.bad_paths == 1  # one record however many lines name the path
    assert f"{jsonl}: record 2, field 'image'" in records[1].extra[PATH_ERROR]

    coco = tmp_path / "captions_train.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "/etc/b.jpg"}],
                                "annotations": [{"image_id": 2, "caption": "a b"}]}))
    report = ReadReport()
    records = read_dataset(str(coco), root, check_images=False, report=report, keep_bad_paths=True)
    assert [r.path for r in records][1] == "/etc/b.jpg" and report.bad_paths == 1
    assert "record 1, field 'images.file_name': absolute path" in records[1].extra[PATH_ERROR]


def test_bad_paths_are_dead_letters_and_count_toward_the_failure_rule(scenes, tiny_cnn, tmp_path, capsys):
    from karpalign.cli.extract import main
    from karpalign.data.features import read_manifest

    data = json.load(open(scenes))
    template = next(img for img in data["images"] if img["split"] == "train")
    for k, name in enumerate(BAD[:1]):
        data["images"].append(dict(template, filepath="", filename=name, imgid=500 + k))
    one_bad = tmp_path / "one_bad.json"
    one_bad.write_text(json.dumps(data))
    argv = ["--image-root", os.path.dirname(scenes), "--cnn", tiny_cnn, "--proposer", "grid", "--regions", "1",
            "--min-word-count", "1", "--shards-per-split", "1", "--batch-size", "8", "--quiet"]
    # 1 of 21 images failed: 4.8%, within the default 5%.
    assert main(["--dataset", str(one_bad), "--out", str(tmp_path / "a")] + argv) == 0
    assert "failed: 1 images (path 1)" in capsys.readouterr().out
    manifest = read_manifest(str(tmp_path / "a"))
    assert (manifest.input_records, manifest.written, manifest.failures_by_stage) == (21, 20, {"path": 1})
    (letter,) = [json.loads(line) for line in open(tmp_path / "a" / "dead_letters.jsonl")]
    assert (letter["image_id"], letter["path"], letter["stage"]) == ("500", "../up.jpg", "path")
    assert f"{one_bad}: record 20, field 'filename': path '../up.jpg' escapes the image root" in letter["reason"]

    for k, name in enumerate(BAD[1:], 1):
        data["images"].append(dict(template, filepath="", filename=name, imgid=500 + k))
    three_bad = tmp_path / "three_bad.json"
    three_bad.write_text(json.dumps(data))
    assert main(["--dataset", str(three_bad), "--out", str(tmp_path / "b")] + argv) == 1  # 3 of 23: 13%
    err = capsys.readouterr().err
    assert "3 of 23 images failed (13.0%), more than extract.max_failure_fraction" in err
    assert read_manifest(str(tmp_path / "b")).failures_by_stage == {"path": 3}
