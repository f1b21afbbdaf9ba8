"""Region proposers (record boxes, grid, detector SavedModel), batched crops and region features."""

import numpy as np
import pytest
import tensorflow as tf

from karpalign.vision.backbones import get_backbone
from karpalign.vision.proposers import (BoxesProposer, DetectorProposer, GridProposer, crop_regions,
                                        get_proposer, grid_boxes, pad_boxes, region_features)

FULL = [0.0, 0.0, 1.0, 1.0]


def test_boxes_proposer_puts_full_image_first_and_truncates_to_k():
    given = np.array([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.9, 0.8], [0.0, 0.5, 0.5, 1.0]], np.float32)
    out = BoxesProposer(k=2).propose(boxes=given)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_array_equal(out, [FULL, given[0], given[1]])
    assert BoxesProposer(k=19).propose(boxes=np.zeros((0, 4))).tolist() == [FULL]
    with pytest.raises(ValueError, match=r"img7 boxes: box 1 .*not a normalised"):
        BoxesProposer().propose(boxes=[[0.1, 0.1, 0.5, 0.5], [0.5, 0.1, 0.2, 0.5]], source="img7")
    with pytest.raises(ValueError, match="img8: BoxesProposer needs the record's boxes"):
        BoxesProposer().propose(source="img8")
    with pytest.raises(ValueError, match="shape"):
        BoxesProposer().propose(boxes=np.zeros((2, 3)))


def test_grid_proposer_gives_k_plus_one_distinct_valid_boxes():
    out = GridProposer().propose(np.zeros((10, 10, 3), np.uint8))
    assert out.shape == (20, 4)  # paper: R = 20
    np.testing.assert_array_equal(out[0], FULL)
    assert len(np.unique(out, axis=0)) == 20
    assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()
    assert out.min() >= 0 and out.max() <= 1
    assert GridProposer(k=0).propose().tolist() == [FULL]
    for k in (3, 11, 30):
        boxes = grid_boxes(k)
        assert boxes.shape == (k, 4) and len(np.unique(boxes, axis=0)) == k
    with pytest.raises(ValueError, match="K"):
        GridProposer(k=-1)


class _FakeDetector(tf.Module):
    """Ignores the pixels and 'detects' fixed boxes, like an OD API export (padded, with num_detections)."""

    BOXES = [[0.1, 0.1, 0.5, 0.5],    # A   0.9
             [0.12, 0.1, 0.52, 0.5],  # A'  0.8  (IoU with A ~0.9 -> suppressed)
             [0.5, 0.5, 0.9, 0.9],    # B   0.7
             [0.0, 0.6, 0.3, 1.2],    # C   0.6  (sticks out of the image -> clipped)
             [0.6, 0.0, 0.9, 0.3],    # D   0.2  (below the threshold)
             [0.3, 0.3, 0.4, 0.4]]    # padding row beyond num_detections, high score
    SCORES = [0.9, 0.8, 0.7, 0.6, 0.2, 0.95]

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    def __call__(self, images):
        return {"detection_boxes": tf.constant([self.BOXES], tf.float32),
                "detection_scores": tf.constant([self.SCORES], tf.float32),
                "detection_classes": tf.constant([[1.0, 1.0, 3.0, 5.0, 7.0, 9.0]]),
                "num_detections": tf.constant([5.0])}


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("detector") / "saved_model")
    tf.saved_model.save(_FakeDetector(), folder)
    return folder


def test_detector_threshold_nms_and_k(detector_dir):
    image = np.zeros((20, 30, 3), np.uint8)
    det = DetectorProposer(detector_dir, score_threshold=0.3, iou_threshold=0.5, k=19)
    boxes, scores, classes = det.detect(image)
    np.testing.assert_allclose(scores, [0.9, 0.7, 0.6])  # A' suppressed, D thresholded, padding ignored
    assert classes.tolist() == [1, 3, 5]
    np.testing.assert_allclose(boxes[2], [0.0, 0.6, 0.3, 1.0])  # clipped into the image
    out = det.propose(image)
    assert out.shape == (4, 4)
    np.testing.assert_array_equal(out[0], FULL)
    assert DetectorProposer(detector_dir, score_threshold=0.3, k=2).propose(image).shape == (3, 4)
    low = DetectorProposer(detector_dir, score_threshold=0.1, iou_threshold=0.5, k=19)
    assert len(low.detect(image)[1]) == 4  # D now passes
    loose = DetectorProposer(detector_dir, score_threshold=0.3, iou_threshold=0.95, k=19)
    assert len(loose.detect(image)[1]) == 4  # A' survives a looser NMS
    assert get_proposer(f"detector:{detector_dir}", k=1).propose(image).shape == (2, 4)
    assert det.name.startswith("detector:") and "k=19" in det.name
    with pytest.raises(ValueError, match="uint8"):
        det.propose(np.zeros((20, 30, 3), np.float32))
    with pytest.raises(ValueError, match="score_threshold"):
        DetectorProposer(detector_dir, score_threshold=1.5)


def test_crop_regions_is_exact_on_a_gradient():
    h, w = 9, 17
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([yy * 10, xx * 10, np.full_like(yy, 7)], axis=-1).astype(np.uint8)  # (9, 17, 3)
    boxes = np.array([FULL, [0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 1.0, 0.75]], np.float32)
    crops = crop_regions(image, boxes, 5)
    assert crops.shape == (3, 5, 5, 3) and crops.dtype == np.float32
    # crop_and_resize samples box corners exactly at pixel centres (y * (h - 1)), linearly in between.
    np.testing.assert_allclose(crops[0, :, 0, 0], np.linspace(0, (h - 1) * 10, 5))
    np.testing.assert_allclose(crops[0, 0, :, 1], np.linspace(0, (w - 1) * 10, 5))
    np.testing.assert_allclose(crops[1, -1, -1, :2], [0.5 * (h - 1) * 10, 0.5 * (w - 1) * 10])
    np.testing.assert_allclose(crops[2, 0, 0, :2], [0.5 * (h - 1) * 10, 0.25 * (w - 1) * 10])
    np.testing.assert_allclose(crops[..., 2], 7)
    for dtype in (np.float32, np.float64, np.uint16, np.uint32, np.int64):  # uint32: not a kernel type, cast
        other = crop_regions(image.astype(dtype), boxes, 5)
        assert other.dtype == np.float32
        np.testing.assert_array_equal(other, crops)
    assert crop_regions(image, np.zeros((0, 4)), 5).shape == (0, 5, 5, 3)
    with pytest.raises(ValueError, match="image must be"):
        crop_regions(image[..., 0], boxes, 5)


class _ColourMean(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        return tf.reduce_mean(images, axis=[1, 2])  # (B, 3)


def test_region_features_and_padding(tmp_path):
    folder = str(tmp_path / "colour_mean")
    tf.saved_model.save(_ColourMean(), folder)
    backbone = get_backbone(f"hub:{folder}|range=0,255", input_size=(16, 16))
    image = np.zeros((40, 40, 3), np.uint8)
    image[:, 20:] = (0, 0, 200)  # right half blue
    boxes = GridProposer(k=4).propose(image)  # full, top, bottom, left, right
    feats = region_features(backbone, image, boxes, crop_size=12)
    assert feats.shape == (5, 3)
    assert feats[3, 2] < 10 and feats[4, 2] > 190  # left half black, right half blue
    assert 90 < feats[0, 2] < 110
    padded, mask = pad_boxes(boxes, 20)
    assert padded.shape == (20, 4) and mask.tolist() == [True] * 5 + [False] * 15
    np.testing.assert_array_equal(padded[5:], 0)
    with pytest.raises(ValueError, match="do not fit"):
        pad_boxes(boxes, 3)
