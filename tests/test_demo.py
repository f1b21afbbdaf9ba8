"""The end-to-end demo (`--quick`): every step runs, checks its output, is reused on a second run, and the
report renders in headless Chromium with all its pictures. Plus the demo config's error messages."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from karpalign.cli.demo import main
from karpalign.data.text import SPECIAL_TOKENS
from karpalign.demo import DEFAULT_CONFIG, DemoError, load_demo_config
from karpalign.report import layout as L
from karpalign.report.browser import dump_dom, images_ok
from karpalign.training.run_dir import RunDir

STEPS = 12


def _demo(out_dir, *extra):
    # A subprocess: the demo trains models and sets global Keras state; keep it out of the test process.
    return subprocess.run([sys.executable, "-m", "karpalign.cli.demo", "--out", str(out_dir), "--quick", *extra],
                          capture_output=True, text=True, timeout=600)


def test_quick_demo_end_to_end_then_reused(tmp_path):
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stderr[-4000:]
    p = L.Paths(str(out))
    for k in range(1, STEPS + 1):
        assert f"[demo {k}/{STEPS}]" in first.stderr

    timings = json.load(open(p.timings))
    assert len(timings) == STEPS and not any(t["reused"] for t in timings.values())
    _assert_retrieval_above_chance(p)
    alignment = json.load(open(p.alignment_json))
    assert alignment["train"]["snippets"] > 0 and alignment["pictures"]["pictures"] > 0
    assert alignment["train"]["accuracy"]["word_accuracy"] is not None
    assert alignment["beta_search"]["split"] == "val" and alignment["train"]["beta"] == alignment["beta_search"]["chosen"]
    captions = json.load(open(p.captions_json(p.caption, "test", 3)))
    assert "baseline" in captions and captions["metrics"]["n_images"] > 0
    words = _vocabulary_words(p.caption)
    generated = [sample["generated"] for sample in captions["samples"]]
    assert len(generated) == captions["metrics"]["n_images"]
    assert sum(bool(g.split()) for g in generated) >= 0.8 * len(generated), generated  # 12/12 measured
    assert all(set(g.split()) <= words for g in generated), generated
    assert os.path.exists(p.region_captions_json(p.caption_regions, "test", 3))
    assert os.path.exists(os.path.join(p.export, "karpalign", "1", "saved_model.pb"))

    served = json.load(open(p.served))
    assert len(served["images"]) == 2
    assert all(im["captions"] and im["captions"][0][0] for im in served["images"])
    assert all(set(im["captions"][0][0].split()) <= words for im in served["images"]), served["images"]
    assert "server stopped (exit code 0)" in first.stderr

    index = os.path.join(p.report, "index.html")
    dom = dump_dom(index)
    ok, count = images_ok(dom)
    assert ok and count >= 5  # 3 training curves + 2 sample pictures
    for table in ("retrieval", "alignment", "captions", "region-captions", "served"):
        assert f'<table class="{table}">' in dom

    second = _demo(out)  # everything reused; only the report is written again
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stderr.count("already done, reusing") == STEPS - 1
    assert "karpalign-train" not in second.stderr


def _assert_retrieval_above_chance(p):
    """Retrieval of the quick demo's alignment model is well above chance. Chance R@1 is 100 / N percent for
    N images in both directions; chance R@K is at most 100 K / N, which the rsum bound uses.

    Measured (40 training steps; test 23 images, test_novel 22): image→text R@1 5.0x chance on both splits
    (10 of the 45 images ranked a correct sentence first, 2 expected by chance), rsum (R@1+5+10, both
    directions) 1.56x and 1.88x chance. Perturbed runs: train.seed 7 gave R@1 3.0x and 5.0x (8 images), rsum
    1.47x and 1.61x; scenes seed 1 gave R@1 6.0x and 7.0x (13 images), rsum 1.84x and 1.89x. Text→image R@1
    alone is at chance on test (1.0x, seed 7: 0.8x), so it gets no bound of its own."""
    hits, expected = 0, 0.0
    for split in ("test", "test_novel"):
        r = json.load(open(p.retrieval_json(split)))
        n = r["n_images"]
        assert n >= 20, r
        chance = 100.0 / n
        assert r["i2t"]["R@1"] >= 2 * chance, (split, r)
        assert r["rsum"] >= 1.25 * 2 * chance * (1 + 5 + 10), (split, r)
        hits += round(r["i2t"]["R@1"] * n / 100)  # images whose top sentence is a correct one
        expected += 1.0
    assert hits >= 3 * expected, hits  # pooled over both splits: >= 6 images ranked a correct sentence first


def _vocabulary_words(run):
    """The caption run's vocabulary without the special tokens (vocab.txt: word<TAB>count per line)."""
    vocab = RunDir(run, "caption").load_vocab()
    return set(vocab.words[len(SPECIAL_TOKENS):])


def test_config_errors_name_file_and_key(tmp_path):
    cfg = load_demo_config(DEFAULT_CONFIG, quick=True)
    assert cfg["scenes"]["num_images"] < load_demo_config(DEFAULT_CONFIG)["scenes"]["num_images"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenes: {num_images: 10}\nnonsense: 1\n")
    with pytest.raises(DemoError, match=r"bad.yaml: unknown sections \['nonsense'\]; known: the recipe's"):
        load_demo_config(str(bad))
    bad.write_text("scenes: [1, 2]\n")
    with pytest.raises(DemoError, match=r"bad.yaml: sections \[.*'scenes'.*\] are missing or not mappings"):
        load_demo_config(str(bad))
    with pytest.raises(DemoError, match="not found"):
        load_demo_config(str(tmp_path / "missing.yaml"))
    bad.write_text(open(DEFAULT_CONFIG).read().replace("  num_images: 2000\n", ""))
    with pytest.raises(DemoError, match=r"bad.yaml: scenes: keys \['num_images'\] are missing"):
        load_demo_config(str(bad))
    assert load_demo_config(str(bad), quick=True)["scenes"]["num_images"] == 300  # quick sets it


def test_bad_recipe_key_is_refused_before_any_step_runs(tmp_path, capsys):
    text = open(DEFAULT_CONFIG).read().replace("embed_dim: 256", "embed_dimension: 256")
    config = tmp_path / "demo.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    assert main(["--out", str(out), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"demo config {config}" in err and "unknown config key 'model.embed_dimension'" in err
    assert not out.exists()  # nothing ran
    config.write_text(open(DEFAULT_CONFIG).read().replace("caption_regions:        #", "caption_regionz:        #"))
    assert main(["--out", str(out), "--config", str(config)]) == 2
    assert "unknown sections ['caption_regionz']" in capsys.readouterr().err


def test_demo_config_is_a_recipe_whose_runs_share_one_feature_space():
    """The demo's recipe part resolves per run like a dataset recipe; tools read it from one written file."""
    from karpalign.config import load_config

    cfg = load_demo_config(DEFAULT_CONFIG)
    align, caption, regions = cfg.runs["align"], cfg.runs["caption"], cfg.runs["caption_regions"]
    assert (align.train.task, caption.train.task, regions.train.task) == ("align", "caption", "caption")
    assert (caption.train.on, regions.train.on) == ("images", "regions")
    assert align.train.optimizer == "adam" and caption.train.optimizer == regions.train.optimizer == "rmsprop"
    assert regions.data.max_words == 12 and caption.data.max_words == 20 and regions.decode.max_length == 10
    assert align.extract == caption.extract and align.extract.proposer == "boxes" and align.extract.regions == 4
    quick = load_demo_config(DEFAULT_CONFIG, quick=True)
    assert quick.runs["align"].train.steps == 40 and quick.runs["caption_regions"].train.steps == 20
    assert quick.runs["align"].train.val_max_images == 20 and quick.runs["caption"].decode.beam_size == 3
    with tempfile.TemporaryDirectory() as tmp:
        path = cfg.write_recipe(tmp, "d/dataset.json", "r/records", "r/regions")
        for name, run in cfg.runs.items():
            sets = [f"train.task={run.train.task}", f"train.on={run.train.on}"]
            written = load_config(path, sets)
            assert written.data.records_dir == "r/records" and written.data.dataset == "d/dataset.json"
            written.data = run.data = None
            assert written == run, name
