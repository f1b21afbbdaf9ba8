"""karpalign-train --task caption with ``model.generator: updown``: it learns from every region (with the mask),
resumes exactly, trains alike under the mirrored strategy, and the mRNN stays the default, built as before."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from karpalign.config import load_config
from karpalign.testing import SMALL_MODEL as SMALL

UPDOWN = ["model.generator=updown", "model.gen_attention_dim=16", "train.optimizer=rmsprop"]


def _cfg(records, out, *extra):
    return load_config(None, SMALL + UPDOWN + [f"data.records_dir={records}", f"runtime.output_dir={out}", *extra])


def test_updown_training_lowers_perplexity_and_writes_a_loadable_run(toy_records, tmp_path):
    from karpalign.models.updown_decoder import UpDownDecoder
    from karpalign.training.loop import train
    from karpalign.training.run_dir import RunDir
    from karpalign.training.tasks import CaptionTask

    out = tmp_path / "updown"
    result = train(_cfg(toy_records, out, "train.steps=80", "train.eval_every=40"), CaptionTask, progress=False)
    vocab_size = len(open(os.path.join(toy_records, "vocab.txt")).read().split("\n")) - 1
    first, last = result.history[0], result.history[-1]
    assert last["perplexity"] < first["perplexity"] and result.best["perplexity"] < vocab_size / 2
    assert np.mean(result.losses[-10:]) < 0.7 * np.mean(result.losses[:5])
    assert list((out / "tensorboard").iterdir())
    generator, vocab = RunDir(str(out), "caption").load_generator()
    assert type(generator) is UpDownDecoder and generator.hidden_dim == 32 and generator.attention_dim == 16
    assert RunDir(str(out)).load_config().model.generator == "updown"


def test_caption_batches_carry_every_region_and_the_mask(toy_records, tmp_path):
    from karpalign.training.tasks import CaptionTask

    task = CaptionTask(_cfg(toy_records, tmp_path / "x", "train.batch_size=8"))
    batch = next(iter(task.dataset(None)))
    assert batch["region_features"].shape == (8, 4, 16) and batch["region_mask"].shape == (8, 4)
    np.testing.assert_array_equal(batch["region_features"][:, 0].numpy(), batch["image"].numpy())
    assert set(np.unique(batch["region_mask"].numpy())) <= {0.0, 1.0} and np.all(batch["region_mask"][:, 0] == 1)
    mrnn = CaptionTask(load_config(None, SMALL + [f"data.records_dir={toy_records}", "train.batch_size=8"]))
    assert "region_features" not in next(iter(mrnn.dataset(None)))  # the mRNN's batches are as before


def test_updown_resume_gives_the_same_model_as_an_uninterrupted_run(toy_records, tmp_path):
    import keras

    from karpalign.training.loop import train
    from karpalign.training.tasks import CaptionTask

    extra = ["train.steps=12", "train.checkpoint_every=4", "train.eval_every=12"]
    straight = train(_cfg(toy_records, tmp_path / "a", *extra), CaptionTask, progress=False)
    first = train(_cfg(toy_records, tmp_path / "b", *extra), CaptionTask, progress=False, stop_after=4)
    assert first.steps == 4
    second = train(_cfg(toy_records, tmp_path / "b", *extra), CaptionTask, progress=False)
    assert second.steps == 12 and len(second.losses) == 8
    np.testing.assert_allclose(second.losses, straight.losses[4:], rtol=1e-4, atol=1e-5)
    a = keras.saving.load_model(str(tmp_path / "a" / "generator.keras"))
    b = keras.saving.load_model(str(tmp_path / "b" / "generator.keras"))
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_allclose(wa.numpy(), wb.numpy(), rtol=1e-4, atol=1e-5)


def test_mrnn_is_the_default_and_built_as_before(toy_records, tmp_path):
    import keras
    import tensorflow as tf

    from karpalign.data.text import Vocabulary
    from karpalign.models.mrnn_decoder import MRNNDecoder, log_frequency_bias
    from karpalign.training.tasks import CaptionTask

    cfg = load_config(None, SMALL + [f"data.records_dir={toy_records}", "model.gen_cell=lstm"])
    assert cfg.model.generator == "mrnn"
    keras.utils.set_random_seed(3)
    built = CaptionTask(cfg).build_model()
    # What CaptionTask built before the generator registry existed, from the same seed.
    vocab = Vocabulary.load(os.path.join(toy_records, "vocab.txt"))
    keras.utils.set_random_seed(3)
    before = MRNNDecoder(len(vocab), 16, hidden_dim=32, word_dim=16, cell="lstm", dropout=0.0,
                         output_bias=log_frequency_bias(vocab.counts, len(vocab)), name="generator")
    before({"image": tf.zeros([1, 16]), "tokens": tf.zeros([1, 2], tf.int32)})
    assert type(built) is MRNNDecoder and built.get_config() == before.get_config()
    for wa, wb in zip(built.weights, before.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())


def test_unknown_generator_is_refused_naming_the_key(toy_records, tmp_path, capsys):
    from karpalign.cli.train import main
    from karpalign.training.tasks import CaptionTask

    with pytest.raises(ValueError, match=r"model.generator must be one of \['mrnn', 'updown'\], got 'attention'"):
        CaptionTask(load_config(None, [f"data.records_dir={toy_records}", "model.generator=attention"]))
    code = main(["--task", "caption", "--set", f"data.records_dir={toy_records}", "--set", "model.generator=x",
                 "--output-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "model.generator must be one of" in capsys.readouterr().err


MIRRORED = textwrap.dedent("""
    import json, sys
    from karpalign.training.strategy import split_cpu
    split_cpu(2)
    from karpalign.config import load_config
    from karpalign.training.loop import train
    from karpalign.training.tasks import CaptionTask
    records, out, sets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    losses = {}
    for name in ("default", "mirrored"):
        cfg = load_config(None, sets + [f"data.records_dir={records}", f"runtime.output_dir={out}/{name}",
                                        "train.steps=4", "train.eval_every=4", f"runtime.strategy={name}"])
        losses[name] = train(cfg, CaptionTask, progress=False).losses
    print(json.dumps(losses))
""")


def test_updown_mirrored_on_two_cpus_matches_one_device(toy_records, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, str(script), toy_records, str(tmp_path), json.dumps(SMALL + UPDOWN)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(losses["default"]) == 4
    np.testing.assert_allclose(losses["mirrored"], losses["default"], rtol=2e-3, atol=1e-4)
