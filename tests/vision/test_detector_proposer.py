"""detector:PATH: a SavedModel with the TF Object Detection API outputs, in the extraction job and in the graph."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from karpalign.testing.toy_proposer import save_toy_detector
from karpalign.vision.proposers import DetectorProposer, get_proposer, in_graph_proposer, spec_from_name


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    return save_toy_detector(str(tmp_path_factory.mktemp("det") / "detector"))


def _image():
    """Bright top-left quadrant and centre, dark elsewhere: the toy detector ranks those two first."""
    pixels = np.full((40, 60, 3), 20, np.uint8)
    pixels[:20, :30] = 250
    pixels[10:30, 15:45] = 230
    return pixels


def test_detections_scores_and_classes(detector_dir):
    detector = get_proposer(f"detector:{detector_dir}", 3, score_threshold=0.3, iou_threshold=0.5)
    boxes, scores, classes = detector.detect(_image(), source="x.png")
    # Box 0 (top-left quadrant, class 1) and the centre (class 5) are bright; the centre box overlaps the
    # quadrant with IoU 1/7, so NMS keeps both; the dark quadrants score below 0.3.
    np.testing.assert_allclose(boxes, [[0, 0, .5, .5], [.25, .25, .75, .75]])
    assert classes.tolist() == [1, 5] and (np.diff(scores) <= 0).all() and scores.min() > 0.3
    np.testing.assert_allclose(detector.propose(_image())[0], [0, 0, 1, 1])
    # The graph path: encoded bytes in, the same proposals padded to 1 + K, classes and scores along.
    buf = io.BytesIO()
    Image.fromarray(_image()).save(buf, format="PNG")
    out = detector.propose_encoded_tf(tf.constant([buf.getvalue()]))
    assert out["region_mask"].numpy().tolist() == [[1, 1, 1, 0]]
    np.testing.assert_allclose(out["boxes"].numpy()[0, 1:3], boxes)
    assert out["box_classes"].numpy()[0].tolist() == [0, 1, 5, 0]
    np.testing.assert_allclose(out["box_scores"].numpy()[0], [1.0, *scores, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"x\.png: empty image"):
        detector.detect(np.zeros((0, 4, 3), np.uint8), source="x.png")


def test_names_rebuild_the_proposer(detector_dir):
    detector = DetectorProposer(detector_dir, 0.25, 0.6, 4)
    spec, k, score, iou = spec_from_name(detector.name)
    assert (spec, k, score, iou) == (f"detector:{detector_dir}", 4, 0.25, 0.6)
    assert in_graph_proposer(spec, k, score, iou).name == detector.name
    assert spec_from_name("grid|k=7")[:2] == ("grid", 7)
    with pytest.raises(ValueError, match="cannot run inside the serving graph; use one of: grid, learned:"):
        in_graph_proposer("segments|scale=80", 4)


def test_detectors_without_the_contract_are_refused(tmp_path):
    bad = save_toy_detector(str(tmp_path / "bad"), with_outputs=False)
    with pytest.raises(ValueError, match=rf"detector {bad}: outputs \['boxes', 'scores'\] lack \['detection_boxes'"):
        DetectorProposer(bad)
    pixels = save_toy_detector(str(tmp_path / "pixels"), box_scale=100.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="detection_boxes must be normalised"):
        DetectorProposer(pixels).detect(_image())
    with pytest.raises(ValueError, match="cannot load"):
        DetectorProposer(str(tmp_path / "missing"))
