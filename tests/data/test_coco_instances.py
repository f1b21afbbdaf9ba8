"""COCO instances_*.json boxes -> Records (the learned proposer's training data), and read_box_dataset."""

import json
import os

import numpy as np
import pytest

from karpalign.data.records import DatasetError, ReadReport, read_box_dataset, read_coco_instances
from karpalign.testing.toy_proposer import write_coco_instances


def test_reads_boxes_normalised_clipped_and_without_crowds(tmp_path):
    path, images, expected = write_coco_instances(str(tmp_path))
    report = ReadReport()
    records = read_coco_instances(path, images, report=report)
    assert [os.path.basename(r.path) for r in records] == list(expected)
    for record in records:
        boxes, classes = expected[os.path.basename(record.path)]
        np.testing.assert_allclose(np.asarray(record.boxes).reshape(-1, 4), np.asarray(boxes).reshape(-1, 4))
        assert record.extra["classes"] == classes and record.sentences == []
        assert record.split == "val"  # from the file name instances_val2017.json
    assert report.records == 3 and report.skipped_boxes == 2  # the crowd region and the zero-width box
    assert "2 crowd or empty boxes skipped" in report.summary()
    with_crowd = read_coco_instances(path, images, keep_crowd=True, split="train")
    assert len(with_crowd[0].boxes) == 3 and with_crowd[0].split == "train"


def test_read_box_dataset_picks_the_format(tmp_path):
    path, images, _ = write_coco_instances(str(tmp_path), name="instances_train2017.json")
    records = read_box_dataset(path, images)
    assert len(records) == 3 and {r.split for r in records} == {"train"}
    with pytest.raises(DatasetError, match="need the image folder"):
        read_box_dataset(path)
    captions = tmp_path / "dataset.json"
    captions.write_text(json.dumps({"images": [{"filename": "images/000000000001.png", "split": "train",
                                                "sentences": [{"raw": "a dog"}]}]}))
    with pytest.raises(DatasetError, match="field 'boxes': no record has boxes"):
        read_box_dataset(str(captions))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"][0].pop("width"), "record 0, field 'images.width': missing"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "record 0, field 'annotations.bbox': expected"),
    (lambda d: d["annotations"][1].update(image_id=99), "record 1, field 'annotations.image_id': image 99"),
    (lambda d: d["images"].append(dict(d["images"][0])), "field 'images.id': duplicate image id 1"),
])
def test_bad_files_name_the_record_and_field(tmp_path, change, message):
    path, images, _ = write_coco_instances(str(tmp_path))
    data = json.load(open(path))
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)
    with pytest.raises(DatasetError, match=message) as err:
        read_coco_instances(path, images)
    assert path in str(err.value)
