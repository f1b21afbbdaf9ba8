"""karpalign-train --task propose: the learned proposer trains in the shared loop (files, validation, resume), on
the scenes' dataset.json boxes and on a COCO instances file."""

import json
import os
import shutil

import numpy as np
import pytest

from karpalign.cli.train import main as train_main
from karpalign.config import load_config
from karpalign.testing.toy_proposer import make_square_images, save_pooling_feature_net, write_coco_instances
from karpalign.training.run_dir import RunDir

K = 3


def _settings(dataset, net, out, *extra):
    return [f"data.dataset={dataset}", f"runtime.output_dir={out}", f"model.proposer_backbone=keras:{net}|range=0,1",
            "model.proposer_stride=8", "model.proposer_input_size=48", "model.proposer_head_dim=16",
            f"extract.regions={K}", "train.batch_size=8", "train.optimizer=adam", "train.learning_rate=0.02",
            "train.val_max_images=16", *extra]


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    return make_square_images(str(root / "data"), 64, 48), save_pooling_feature_net(str(root / "pool.keras"))


@pytest.fixture(scope="module")
def trained(squares, tmp_path_factory):
    dataset, net = squares
    out = str(tmp_path_factory.mktemp("propose_run"))
    argv = ["--task", "propose", "--no-progress"]
    for item in _settings(dataset, net, out, "train.steps=60", "train.eval_every=30", "train.checkpoint_every=30"):
        argv += ["--set", item]
    assert train_main(argv) == 0
    return out


def test_propose_task_learns_in_the_shared_loop(trained):
    run = RunDir(trained, "propose").check()
    for name in ("proposer.keras", "config.yaml", "history.jsonl"):
        assert os.path.isfile(os.path.join(trained, name)), name
    assert os.listdir(run.tensorboard_dir) and os.path.isfile(os.path.join(trained, "checkpoints", "checkpoint"))
    history = run.read_history()
    assert [h["step"] for h in history] == [30, 60]
    # Untrained, every cell scores 0.01 < the 0.05 threshold: only the full image, which finds no square.
    best = max(h["score"] for h in history)
    assert history[-1][f"recall@{K}_iou0.5"] >= 0.9 and best >= 0.6
    model = run.load_proposer()
    assert model.k == K and model.input_size == 48 and model.backbone_name.startswith("keras:")
    assert run.load_config().train.task == "propose"


def test_resume_continues_the_same_input_stream(squares, tmp_path):
    from karpalign.training.loop import train
    from karpalign.training.propose import ProposeTask

    dataset, net = squares
    extra = ["train.steps=6", "train.checkpoint_every=3", "train.eval_every=6"]
    straight = train(load_config(None, _settings(dataset, net, tmp_path / "a", *extra)), ProposeTask, progress=False)
    first = train(load_config(None, _settings(dataset, net, tmp_path / "b", *extra)), ProposeTask, progress=False,
                  stop_after=3)
    second = train(load_config(None, _settings(dataset, net, tmp_path / "b", *extra)), ProposeTask, progress=False)
    assert first.steps == 3 and second.steps == 6 and len(second.losses) == 3
    np.testing.assert_allclose(second.losses, straight.losses[3:], rtol=1e-4, atol=1e-5)
    assert len(set(np.round(straight.losses, 4))) == 6  # the batches differ (augmented, shuffled)


def test_trains_on_coco_instances(squares, tmp_path):
    from karpalign.training.loop import train
    from karpalign.training.propose import ProposeTask

    _, net = squares
    val, images, _ = write_coco_instances(str(tmp_path / "coco"))
    train_file = str(tmp_path / "coco" / "instances_train2017.json")
    shutil.copy(val, train_file)
    settings = _settings(train_file, net, tmp_path / "run", "train.steps=2", "train.batch_size=2",
                         f"data.image_root={images}", f"data.val_dataset={val}")
    result = train(load_config(None, settings), ProposeTask, progress=False)
    assert result.steps == 2 and np.isfinite(result.losses).all()
    assert set(result.history[-1]) >= {f"recall@{K}_iou0.5", f"recall@{K}_iou0.7", "boxes_per_image"}


def test_bad_data_is_refused(squares, tmp_path, capsys):
    dataset, net = squares
    captions_only = tmp_path / "captions.json"
    data = json.load(open(dataset))
    for image in data["images"]:
        del image["boxes"]
    captions_only.write_text(json.dumps(data))
    argv = ["--task", "propose"]
    root = f"data.image_root={os.path.dirname(dataset)}"
    for item in _settings(str(captions_only), net, tmp_path / "run", "train.steps=1", root):
        argv += ["--set", item]
    assert train_main(argv) == 2
    assert f"{captions_only}, field 'boxes': no record has boxes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no val images with boxes"):
        from karpalign.training.propose import ProposeTask

        train_only = tmp_path / "train_only.json"
        data = json.load(open(dataset))
        data["images"] = [im for im in data["images"] if im["split"] == "train"]
        train_only.write_text(json.dumps(data))
        ProposeTask(load_config(None, _settings(str(train_only), net, tmp_path / "run2", root)))
