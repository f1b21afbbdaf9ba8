"""The learned proposer: model (serialization, targets, loss, post-processing), its feature maps, and the
``learned:RUN`` proposer the extraction job and the export build from a run folder."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from karpalign.config import load_config, save_config
from karpalign.testing.toy_proposer import save_tiny_feature_net, untrained_proposer_run
from karpalign.training.run_dir import RunDir, RunDirError
from karpalign.vision.backbones import get_feature_map_backbone
from karpalign.vision.learned_proposer import (LearnedProposer, cell_centres,
                                               decode_boxes, postprocess_tf, proposal_loss, proposal_targets)
from karpalign.vision.proposers import (LearnedRegionProposer, get_proposer, parse_learned_spec, proposer_name)
from tests.helpers import run_serialization_test

S = 32  # input size of the tiny models: a 4 x 4 feature map at stride 8


@pytest.fixture(scope="module")
def tiny_net(tmp_path_factory):
    return save_tiny_feature_net(str(tmp_path_factory.mktemp("tiny") / "net.keras"))


@pytest.fixture(scope="module")
def proposer_run(tiny_net, tmp_path_factory):
    """An untrained propose run folder (config.yaml + proposer.keras), as karpalign-train writes it."""
    return untrained_proposer_run(str(tmp_path_factory.mktemp("propose_run")), tiny_net, S, k=3)


def test_serialization_round_trips(tiny_net, tmp_path):
    extractor = keras.saving.load_model(tiny_net)
    images = tf.random.stateless_uniform([2, S, S, 3], seed=[1, 2], maxval=255.0)
    kwargs = dict(feature_extractor=extractor, input_size=S, head_dim=6, head_layers=2, pixel_scale=1 / 255,
                  pixel_offset=0.1, backbone_name="tiny", k=5, score_threshold=0.2, iou_threshold=0.6,
                  pre_nms_top_n=7)
    layer, _, loaded = run_serialization_test(LearnedProposer, kwargs, lambda m: m(images), tmp_path)
    assert not loaded.feature_extractor.trainable
    assert len(layer.trainable_weights) == len(loaded.trainable_weights) == 2 * 2 + 4  # the head only


def test_bad_arguments_are_refused(tiny_net):
    extractor = keras.saving.load_model(tiny_net)
    with pytest.raises(ValueError, match="input_size must be an int >= 16"):
        LearnedProposer(extractor, input_size=8)
    with pytest.raises(ValueError, match="iou_threshold must be in"):
        LearnedProposer(extractor, iou_threshold=0.0)


def test_feature_map_backbones(tiny_net, tmp_path, lite0_classifier):
    fm = get_feature_map_backbone(f"keras:{tiny_net}|range=0,1", 8)
    assert (fm.stride, fm.channels) == (8, 16)
    np.testing.assert_allclose([fm.pixel_scale, fm.pixel_offset], [1 / 255, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="has stride 8 .* not 16"):
        get_feature_map_backbone(f"keras:{tiny_net}", 16)
    pooled = str(tmp_path / "pooled.keras")
    inputs = keras.Input((None, None, 3))
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs)).save(pooled)
    with pytest.raises(ValueError, match="one 4-D feature map"):
        get_feature_map_backbone(f"keras:{pooled}", 8)
    with pytest.raises(ValueError, match="hub: modules return pooled vectors"):
        get_feature_map_backbone("hub:somewhere", 16)
    lite = get_feature_map_backbone("efficientnet_lite0", 16)
    assert lite.model(np.zeros((1, 224, 224, 3), np.float32)).shape == (1, 14, 14, 112)
    fused = get_feature_map_backbone("efficientnet_lite0", 8)
    assert fused.model(np.zeros((1, 64, 64, 3), np.float32)).shape == (1, 8, 8, 40 + 112)
    with pytest.raises(ValueError, match="stride 12 do not exist"):
        get_feature_map_backbone("efficientnet_lite0", 12)


def test_targets_follow_the_boxes():
    # A 4 x 4 map: cell centres at 0.125, 0.375, 0.625, 0.875.
    gt = tf.constant([[[0.0, 0.0, 0.5, 0.5], [0.05, 0.05, 0.45, 0.45], [0.5, 0.5, 1.0, 1.0], [0, 0, 0, 0]]])
    mask = tf.constant([[1.0, 1.0, 0.0, 0.0]])  # the third box is padding too
    target, box, positive = proposal_targets(gt, mask, 4, 4, radius=1.5)
    positive = tf.reshape(positive, [4, 4]).numpy()
    assert positive[:2, :2].all() and positive.sum() == 4  # only the cells inside the real boxes
    # Overlapping boxes: the smaller one wins.
    np.testing.assert_allclose(tf.reshape(box, [4, 4, 4])[0, 0].numpy(), [0.05, 0.05, 0.45, 0.45])
    t = tf.reshape(target, [4, 4]).numpy()
    # Centreness of cell (0.125, 0.125) in [0.05, 0.45]: sqrt((0.075/0.325)^2).
    np.testing.assert_allclose(t[0, 0], 0.075 / 0.325, rtol=1e-5)
    assert (t[2:, :] == 0).all() and (t[:, 2:] == 0).all()


def test_a_box_smaller_than_a_cell_still_has_its_centre_cell():
    gt = tf.constant([[[0.30, 0.55, 0.40, 0.62]]])  # centre (0.35, 0.585): cell (1, 2) of a 4 x 4 map
    target, _, positive = proposal_targets(gt, tf.ones([1, 1]), 4, 4)
    assert np.flatnonzero(positive.numpy()[0]).tolist() == [1 * 4 + 2]
    assert target.numpy()[0, 6] > 0


def _perfect_outputs(gt, mask, h, w):
    """Head outputs that predict the targets exactly (distances of the assigned boxes)."""
    target, box, positive = proposal_targets(gt, mask, h, w)
    centres = cell_centres(h, w)[None]  # (1, L, 2)
    cells = tf.constant([1.0 / h, 1.0 / w])
    d = tf.stack([(centres[..., 0] - box[..., 0]) / cells[0], (centres[..., 1] - box[..., 1]) / cells[1],
                  (box[..., 2] - centres[..., 0]) / cells[0], (box[..., 3] - centres[..., 1]) / cells[1]], -1)
    d = tf.where(positive[..., None], tf.math.log(tf.maximum(d, 1e-3)), 0.0)
    logits = tf.math.log(tf.clip_by_value(target, 1e-4, 1 - 1e-4) / (1 - tf.clip_by_value(target, 1e-4, 1 - 1e-4)))
    return {"objectness": tf.reshape(logits, [1, h, w]), "distances": tf.reshape(d, [1, h, w, 4])}


def test_loss_is_lowest_for_the_targets():
    gt = tf.constant([[[0.1, 0.2, 0.6, 0.7], [0.55, 0.05, 0.95, 0.5]]])
    mask = tf.ones([1, 2])
    perfect = _perfect_outputs(gt, mask, 8, 8)
    np.testing.assert_allclose(decode_boxes(perfect["distances"]).numpy()[0, 3 * 8 + 3], [0.1, 0.2, 0.6, 0.7],
                               atol=1e-5)
    best = float(proposal_loss(perfect, gt, mask)[0])
    noisy = {k: v + tf.random.stateless_normal(tf.shape(v), seed=[3, 4]) for k, v in perfect.items()}
    assert best < 0.05 < float(proposal_loss(noisy, gt, mask)[0])
    # No boxes at all: only the objectness term, which punishes confident cells.
    empty = proposal_loss(perfect, gt, tf.zeros([1, 2]))
    assert float(empty[0]) > best


def test_postprocess_ranks_suppresses_and_pads():
    h = w = 4
    logits = np.full((1, h, w), -8.0, np.float32)
    distances = np.zeros((1, h, w, 4), np.float32)
    # Cell (1, 1) and its neighbour (1, 2) predict nearly the same box (NMS keeps the better); cell (3, 3)
    # a distinct one; cell (0, 3) one below the score threshold.
    logits[0, 1, 1], logits[0, 1, 2], logits[0, 3, 3], logits[0, 0, 3] = 3.0, 2.0, 1.0, -3.5
    distances[0, 1, 2] = np.log([1.0, 2.0, 1.0, 0.05])  # shifted one cell: left 2 cells, right ~0
    for i, j in ((1, 1), (3, 3), (0, 3)):
        distances[0, i, j] = 0.0  # one cell each side
    out = postprocess_tf(tf.constant(logits), tf.constant(distances), k=3, score_threshold=0.05, iou_threshold=0.5)
    boxes, scores, mask = out["boxes"].numpy()[0], out["scores"].numpy()[0], out["mask"].numpy()[0]
    np.testing.assert_allclose(boxes[0], [0, 0, 1, 1])
    np.testing.assert_allclose(boxes[1], [0.125, 0.125, 0.625, 0.625], atol=1e-6)  # cell (1, 1) +- 1 cell
    np.testing.assert_allclose(boxes[2], [0.625, 0.625, 1.0, 1.0], atol=1e-6)  # cell (3, 3), clipped
    assert mask.tolist() == [True, True, True, False]
    np.testing.assert_allclose(scores, [1.0, 1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(-1.0)), 0.0], rtol=1e-5)
    np.testing.assert_array_equal(boxes[3], 0.0)
    only_full = postprocess_tf(tf.constant(logits), tf.constant(distances), k=0, score_threshold=0.05,
                               iou_threshold=0.5)
    np.testing.assert_allclose(only_full["boxes"].numpy(), [[[0, 0, 1, 1]]])


def test_learned_region_proposer_from_a_run(proposer_run):
    proposer = get_proposer(f"learned:{proposer_run}", 3)
    assert isinstance(proposer, LearnedRegionProposer) and proposer.num_regions == 4
    assert proposer.name == proposer_name(f"learned:{proposer_run}", 3) == (
        f"learned:{os.path.abspath(proposer_run)}|k=3|score=0|iou=0.5")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)]
    one = proposer.propose(images[0], source="a.jpg")
    assert one.dtype == np.float32 and one.shape == (4, 4)  # score 0: always K boxes
    np.testing.assert_allclose(one[0], [0, 0, 1, 1])
    assert ((one[1:, 2] > one[1:, 0]) & (one[1:, 3] > one[1:, 1])).all()
    batch = proposer.propose_batch(images, ["a.jpg", "b.jpg"])
    np.testing.assert_allclose(batch[0], one, atol=1e-5)
    np.testing.assert_allclose(batch[1], proposer.propose(images[1]), atol=1e-5)
    with pytest.raises(ValueError, match=r"empty\.png: empty image \(0 x 5 pixels\)"):
        proposer.propose(np.zeros((0, 5, 3), np.uint8), source="empty.png")
    with pytest.raises(ValueError, match="must be uint8"):
        proposer.propose(np.zeros((4, 4, 3), np.float32))
    options = get_proposer(f"learned:{proposer_run}|score=0.9|iou=0.3", 3)
    assert (options.score_threshold, options.iou_threshold) == (0.9, 0.3)
    assert len(options.propose(images[0])) < 4  # every untrained score is below 0.9


def test_learned_specs_are_checked(proposer_run, tmp_path):
    align_dir = str(tmp_path / "align")
    save_config(load_config(None, ["train.task=align"]), align_dir)  # what an align run's folder says first
    with pytest.raises(RunDirError, match="is a `karpalign-train --task align` run, not a --task propose run"):
        get_proposer(f"learned:{align_dir}")
    with pytest.raises(ValueError, match="--task align` run, not a --task propose run"):
        proposer_name(f"learned:{align_dir}")
    with pytest.raises(ValueError, match="propose run folder does not exist"):
        proposer_name(f"learned:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match="bad option 'k=3'"):
        parse_learned_spec(f"learned:{proposer_run}|k=3")
    with pytest.raises(ValueError, match="score must be in"):
        parse_learned_spec(f"learned:{proposer_run}|score=1.5")
    with pytest.raises(ValueError, match="needs the run folder"):
        parse_learned_spec("learned:")
    with pytest.raises(RunDirError, match="not a LearnedProposer"):
        other = tmp_path / "fake"
        other.mkdir()
        save_config(load_config(None, ["train.task=propose"]), str(other))
        inputs = keras.Input((2,))
        keras.Model(inputs, keras.layers.Dense(1)(inputs)).save(str(other / "proposer.keras"))
        RunDir(str(other), "propose").load_proposer()


def test_the_extraction_step_batches_and_isolates_a_bad_image(proposer_run):
    """karpalign.beam.transforms.ProposeBatchesFn: one propose_batch call per batch; a batch with an empty image
    falls back to one image at a time, so only that image becomes a dead letter (stage "propose")."""
    from karpalign.beam.elements import DeadLetter, ImageItem
    from karpalign.beam.transforms import ProposeBatchesFn, ProposerSpec

    spec = ProposerSpec(f"learned:{proposer_run}", 3)
    fn = ProposeBatchesFn(None, spec)
    fn._proposer = spec.build()
    rng = np.random.default_rng(1)
    items = [ImageItem(f"i{n}", "train", f"/data/i{n}.png", ["a caption"],
                       image=rng.integers(0, 256, (24 + 8 * n, 40, 3), dtype=np.uint8)) for n in range(3)]
    good = list(fn.process(items))
    assert [o.image_id for o in good] == ["i0", "i1", "i2"]
    for item, out in zip(items, good):
        np.testing.assert_allclose(out.regions, fn._proposer.propose(item.image), atol=1e-5)
    broken = items[:1] + [ImageItem("bad", "train", "/data/bad.png", ["x"], image=np.zeros((0, 3, 3), np.uint8))]
    outcomes = list(fn.process(broken))
    assert outcomes[0].image_id == "i0" and outcomes[0].regions.shape == (4, 4)
    assert isinstance(outcomes[1], DeadLetter) and outcomes[1].stage == "propose"
    assert "/data/bad.png: empty image (0 x 3 pixels)" in outcomes[1].reason
