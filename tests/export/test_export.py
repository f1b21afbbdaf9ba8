"""SavedModel export: layout, named signatures, portability (plain TensorFlow), parity with the eager paths.

One module-scoped export is shared by every test: a tiny Keras CNN backbone (two strided convs, 16-d), toy
records extracted "with" it (manifest: cnn_spec, crop_size 32, grid proposer), untrained tiny heads (embed 32,
hidden 32) and beam 3 / max length 6 / top-2 set on the command line.
"""

import io
import os
import pickle
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from PIL import Image, ImageDraw

from karpalign.alignment.mrf import viterbi_align
from karpalign.cli.export import main as export_main
from karpalign.data import features as F
from karpalign.data.text import END_ID, PAD_ID, START_ID, Vocabulary, python_tokenize
from karpalign.decoding.beam_search import beam_search
from karpalign.vision.region_features import decode_image_tf
from karpalign.export.saved_model import next_version, write_saved_model
from karpalign.serving.warmup import read_warmup_requests
from karpalign.testing import make_toy_records, untrained_runs
from karpalign.vision.backbones import get_backbone
from karpalign.vision.images import decode_image
from karpalign.vision.proposers import GridProposer, region_features

D, CROP, K_GRID, MAX_WORDS = 16, 32, 3, 8
BEAM, MAX_LEN, TOP_K = 3, 6, 2
SIGNATURES = {
    "serving_default": ["boxes", "captions", "proposer", "records_proposer", "region_features", "scores",
                        "token_ids"],
    "caption_features": ["captions", "scores", "token_ids"],
    "caption_examples": ["captions", "scores", "token_ids"],
    "embed_images": ["region_vectors"],
    "embed_sentences": ["tokens", "word_mask", "word_vectors"],
    "score": ["scores"],
    "align": ["assignment", "region_word_scores", "tokens"],
}
RUNNER = os.path.join(os.path.dirname(__file__), "_portable_runner.py")


def _tiny_backbone(path):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(D, 3, strides=2, activation="relu")(x)
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(path)


def _runs(root, records):
    return untrained_runs(root, records, D, MAX_WORDS)


def _png(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _picture(h, w, seed):
    """A smooth gradient with two filled shapes (JPEG-friendly, and different per seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], -1).astype(np.uint8)
    img = Image.fromarray(base)
    draw = ImageDraw.Draw(img)
    for _ in range(2):
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        draw.ellipse([x0, y0, x0 + w // 3, y0 + h // 3], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return np.asarray(img)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("export"))
    backbone_path = os.path.join(root, "backbone.keras")
    _tiny_backbone(backbone_path)
    records = make_toy_records(os.path.join(root, "records"), feature_dim=D, num_regions=4, num_train=20,
                               num_val=4, num_test=4, shards=1)
    manifest = F.read_manifest(records)
    manifest.cnn_spec, manifest.crop_size = f"keras:{backbone_path}|size={CROP},{CROP}|range=-1,1", CROP
    manifest.proposer = F.ProposerInfo(kind="grid", k=K_GRID)
    manifest.write(records)
    runs = _runs(root, records)
    base = os.path.join(root, "models")
    rc = export_main(["--align-dir", runs["align"], "--caption-dir", runs["caption"], "--records-dir", records,
                      "--export-base", base, "--beam-size", str(BEAM), "--max-length", str(MAX_LEN),
                      "--top-k", str(TOP_K)])
    assert rc == 0
    keras.config.disable_interactive_logging()
    return {
        "root": root, "base": base, "dir": os.path.join(base, "karpalign", "1"), "runs": runs,
        "records": records, "manifest": manifest,
        "alignment": keras.saving.load_model(os.path.join(runs["align"], "alignment.keras"), compile=False),
        "generator": keras.saving.load_model(os.path.join(runs["caption"], "generator.keras"), compile=False),
        "vocab": Vocabulary.load(os.path.join(runs["align"], "vocab.txt")),
        "backbone": get_backbone(manifest.cnn_spec),
    }


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(3, 4, D)).astype(np.float32)  # (B, R, D)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], np.float32)  # (B, R)
    pictures = [_picture(40, 50, 0), _picture(30, 20, 1), _picture(64, 64, 2)]
    images = np.array([_png(pictures[0]), _jpeg(pictures[1]), _png(pictures[2])], dtype=object)
    sentences = np.array([b"A red circle, and a BLUE star!", b"", b"zebra-red  square"], dtype=object)
    examples = np.array([F.encode_example(f"e{i}", "test", "", feats[i, :int(mask[i].sum())],
                                          np.tile([[0, 0, 1, 1]], (int(mask[i].sum()), 1)), [])
                         for i in range(3)], dtype=object)
    return {"feats": feats, "mask": mask, "images": images, "sentences": sentences, "examples": examples}


@pytest.fixture(scope="module")
def portable(exported, inputs, tmp_path_factory):
    """Every signature (and the warmup requests) run on a MOVED copy of the export by a TF-only subprocess."""
    work = tmp_path_factory.mktemp("portable")
    moved = os.path.join(work, "elsewhere", "7")
    shutil.copytree(exported["dir"], moved)
    f, m, s = inputs["feats"], inputs["mask"], inputs["sentences"]
    calls = {
        "serving_default": ("serving_default", {"images": inputs["images"]}),
        "caption_features": ("caption_features", {"region_features": f, "region_mask": m}),
        "caption_examples": ("caption_examples", {"examples": inputs["examples"]}),
        "embed_images": ("embed_images", {"region_features": f, "region_mask": m}),
        "embed_sentences": ("embed_sentences", {"sentences": s}),
        "score": ("score", {"region_features": f, "region_mask": m, "sentences": s[:2]}),
        "align": ("align", {"region_features": f, "region_mask": m, "sentences": s,
                            "beta": np.float32(0.5)}),
    }
    for i, request in enumerate(read_warmup_requests(moved)):
        calls[f"warmup_{i}"] = (request.model_spec.signature_name,
                                {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
    with open(work / "in.pkl", "wb") as fh:
        pickle.dump(calls, fh)
    # The run folders' vocabulary must not be needed: the export carries it as an asset.
    vocab = os.path.join(exported["runs"]["align"], "vocab.txt")
    os.rename(vocab, vocab + ".hidden")
    try:
        proc = subprocess.run([sys.executable, RUNNER, moved, str(work / "in.pkl"), str(work / "out.pkl")],
                              capture_output=True, text=True, timeout=600, cwd=str(work))
    finally:
        os.rename(vocab + ".hidden", vocab)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(work / "out.pkl", "rb") as fh:
        return pickle.load(fh)


# ---- eager references ---------------------------------------------------------------------------------------


def _eager_captions(exported, image_vec):
    generator, vocab = exported["generator"], exported["vocab"]
    image_vec = tf.constant(image_vec)
    result = beam_search(generator.step, generator.initial_state(image_vec), int(image_vec.shape[0]),
                         beam_size=BEAM, max_length=MAX_LEN, start_id=START_ID, end_id=END_ID, top_k=TOP_K)
    captions = [[" ".join(vocab.decode(ids)) for ids in row] for row in result.ids.numpy()]
    return captions, result.scores.numpy(), result.ids.numpy()


def _eager_tokens(exported, sentences):
    vocab = exported["vocab"]
    tokens = [python_tokenize(s.decode())[:MAX_WORDS] for s in sentences]
    ids = np.zeros((len(tokens), MAX_WORDS), np.int32)
    for i, toks in enumerate(tokens):
        ids[i, :len(toks)] = vocab.encode(toks)
    return tokens, ids, (ids != PAD_ID).astype(np.float32)


def _pillow_features(exported, images):
    """Reference features: the Pillow reference decoder (decode_image), grid boxes, region_features. The job and
    the graph decode with the TensorFlow decoder, which must give these pixels."""
    boxes = GridProposer(K_GRID).propose()
    return np.stack([region_features(exported["backbone"], decode_image(data), boxes, CROP) for data in images])


def _assert_captions(out, captions, scores, ids, tol=1e-5):
    assert [[c.decode() for c in row] for row in out["captions"]] == captions
    np.testing.assert_allclose(out["scores"], scores, atol=tol, rtol=0)
    np.testing.assert_array_equal(out["token_ids"], ids)


# ---- layout, assets, warmup ---------------------------------------------------------------------------------


def test_layout_assets_and_warmup(exported):
    model_dir = os.path.join(exported["base"], "karpalign")
    assert sorted(os.listdir(model_dir)) == ["1"]  # no temporary folder left behind
    version = exported["dir"]
    assert os.path.isfile(os.path.join(version, "saved_model.pb"))
    assert sorted(os.listdir(os.path.join(version, "assets"))) == ["config.yaml", "vocab.txt"]
    with open(os.path.join(version, "assets", "vocab.txt"), encoding="utf-8") as fh:
        assert [line.split("\t")[0] for line in fh.read().splitlines()] == exported["vocab"].words
    with open(os.path.join(version, "assets", "config.yaml"), encoding="utf-8") as fh:
        resolved = yaml.safe_load(fh)
    assert resolved["decode"] == {"beam_size": BEAM, "max_length": MAX_LEN, "alpha": 0.0, "top_k": TOP_K,
                                  "min_length": 1}
    assert resolved["backbone"] == exported["backbone"].name and resolved["crop_size"] == CROP
    assert resolved["proposer"] == f"grid|k={K_GRID}" and len(resolved["boxes"]) == K_GRID + 1
    requests = read_warmup_requests(version)
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "caption_features"]
    assert all(r.model_spec.name == "karpalign" for r in requests)


def test_next_version_and_existing_versions_are_never_overwritten(exported, tmp_path):
    assert next_version(str(tmp_path / "missing")) == 1
    for name in ("1", "3", "10", ".tmp-11-x", "notes"):
        (tmp_path / name).mkdir()
    assert next_version(str(tmp_path)) == 11
    rc = export_main(["--align-dir", exported["runs"]["align"], "--caption-dir", exported["runs"]["caption"],
                      "--records-dir", exported["records"], "--export-base", exported["base"], "--version", "1"])
    assert rc == 2
    with pytest.raises(ValueError, match="integer >= 1"):
        write_saved_model(object(), str(tmp_path), "m", version=0)


# ---- portability ----------------------------------------------------------------------------------------------


def test_signatures_have_named_outputs_in_plain_tensorflow(portable):
    assert portable["signatures"] == SIGNATURES
    assert "karpalign" not in portable["modules"] and "tensorflow_text" not in portable["modules"]


def _assert_same_outputs(got, want, where):
    assert sorted(got) == sorted(want), where
    for key, value in want.items():
        value = np.asarray(value)  # a scalar string output arrives as bytes
        if value.dtype == object or value.dtype.kind == "S":
            assert np.asarray(got[key]).tolist() == value.tolist(), f"{where}: {key}"
        elif np.issubdtype(value.dtype, np.floating):
            np.testing.assert_allclose(got[key], value, atol=1e-5, rtol=0, err_msg=f"{where}: {key}")
        else:
            np.testing.assert_array_equal(got[key], value, err_msg=f"{where}: {key}")


def test_every_signature_and_warmup_runs_in_a_session_as_tf_serving_loads_it(portable):
    """TF Serving's path (session + the graph's saver) gives the TF2 object path's outputs, for every signature
    and every warmup request; the bug was 'Could not find variable generator/w_hi/bias' here."""
    session, objects = portable["session_outputs"], portable["outputs"]
    assert {name for name in session if not name.startswith("warmup_")} == set(SIGNATURES)
    assert sum(name.startswith("warmup_") for name in session) == 2
    for call, want in objects.items():
        assert "error" not in session[call], f"{call}: {session[call].get('error')}"
        _assert_same_outputs(session[call], want, call)


def test_saved_model_cli_run_two_signatures(exported, inputs, portable, tmp_path):
    """`saved_model_cli run` (session + saver, as TF Serving) on caption_features and embed_sentences."""
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    np.save(tmp_path / "rf.npy", inputs["feats"])
    np.save(tmp_path / "rm.npy", inputs["mask"])
    np.save(tmp_path / "s.npy", inputs["sentences"], allow_pickle=True)
    runs = {"caption_features": f"region_features={tmp_path / 'rf.npy'};region_mask={tmp_path / 'rm.npy'}",
            "embed_sentences": f"sentences={tmp_path / 's.npy'}"}
    for signature, arguments in runs.items():
        out = tmp_path / signature
        proc = subprocess.run([cli, "run", "--dir", exported["dir"], "--tag_set", "serve", "--signature_def",
                               signature, "--inputs", arguments, "--outdir", str(out)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = {name[:-4]: np.load(out / name, allow_pickle=True) for name in os.listdir(out)}
        _assert_same_outputs(got, portable["outputs"][signature], f"saved_model_cli run {signature}")


def test_graph_uses_only_core_ops_and_no_py_function(portable):
    ops = set(portable["op_types"])
    print("op types:", sorted(ops))
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    assert portable["unregistered"] == []  # every op is known to a process that never imported tensorflow_text
    # The pieces we rely on really are in the graph.
    assert {"DecodeImage", "DecodeJpeg", "CropAndResize", "While", "LookupTableFindV2", "StaticRegexReplace",
            "StringSplitV2", "ParseExampleV2", "InitializeTableFromTextFileV2"} <= ops, sorted(ops)


def test_warmup_requests_run(portable):
    assert portable["outputs"]["warmup_0"]["captions"].shape == (1, TOP_K)
    assert portable["outputs"]["warmup_1"]["captions"].shape == (1, TOP_K)


def test_caption_signatures_match_eager_beam_search(exported, inputs, portable):
    captions, scores, ids = _eager_captions(exported, inputs["feats"][:, 0])
    assert len({c for row in captions for c in row}) > 1  # the check below is not vacuous
    assert all(caption for row in captions for caption in row)  # min_length 1: no empty caption, in any slot
    _assert_captions(portable["outputs"]["caption_features"], captions, scores, ids)
    # caption_examples parses the same features from tf.Examples (each with its own number of regions).
    _assert_captions(portable["outputs"]["caption_examples"], captions, scores, ids)


def test_serving_default_matches_extraction_path(exported, inputs, portable):
    """Image bytes in the graph must give the features (and captions) the extraction job gives."""
    out = portable["outputs"]["serving_default"]
    expected = _pillow_features(exported, inputs["images"])  # (B, R, D)
    np.testing.assert_allclose(out["region_features"], expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out["boxes"], GridProposer(K_GRID).propose())
    captions, scores, ids = _eager_captions(exported, expected[:, 0])
    _assert_captions(out, captions, scores, ids)


def test_jpeg_decoding_matches_pillow():
    """The bug the parity test caught: tf.io.decode_image uses the fast DCT; the graph must not."""
    data = _jpeg(_picture(67, 101, 3))
    pillow = decode_image(data).astype(int)
    assert np.abs(tf.io.decode_image(data, channels=3).numpy().astype(int) - pillow).max() > 0
    np.testing.assert_array_equal(decode_image_tf(tf.constant(data)).numpy(), pillow)
    png = _png(_picture(20, 30, 4))
    np.testing.assert_array_equal(decode_image_tf(tf.constant(png)).numpy(), decode_image(png))


# ---- one region-feature path: the extraction job and serving_default agree on every image format ------------


def _format_images():
    """The issue's formats, built with Pillow: name -> (bytes, extension)."""
    picture = _picture(36, 52, 5)  # not square: a wrong rotation changes the shape and every crop
    img = Image.fromarray(picture)

    def save(image, fmt, **kwargs):
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kwargs)
        return buf.getvalue()

    def exif(orientation):
        tags = Image.Exif()
        tags[0x0112] = orientation
        return tags.tobytes()

    rgba = np.dstack([picture, np.tile(np.linspace(0, 255, 52).astype(np.uint8), (36, 1))])  # alpha 0 -> 255
    frames = [Image.fromarray(255 - picture).convert("P"), Image.fromarray(picture[::-1].copy()).convert("P")]
    return {
        "plain_jpeg": (save(img, "JPEG", quality=90), "jpg"),
        "exif3_jpeg": (save(img, "JPEG", quality=90, exif=exif(3)), "jpg"),
        "exif6_jpeg": (save(img, "JPEG", quality=90, exif=exif(6)), "jpg"),
        "exif8_jpeg": (save(img, "JPEG", quality=90, exif=exif(8)), "jpg"),
        "alpha_png": (save(Image.fromarray(rgba), "PNG"), "png"),
        "grey_jpeg": (save(img.convert("L"), "JPEG", quality=90), "jpg"),
        "grey_png": (save(img.convert("L"), "PNG"), "png"),
        "cmyk_jpeg": (save(img.convert("CMYK"), "JPEG", quality=90), "jpg"),
        "palette_png": (save(img.convert("P"), "PNG"), "png"),
        "animated_gif": (save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0),
                         "gif"),
    }


REFUSED_FORMATS = {"cmyk_jpeg": "CMYK JPEG is not supported: convert to RGB"}


@pytest.fixture(scope="module")
def format_parity(exported, tmp_path_factory):
    """The formats through the real extraction job (DirectRunner) and through serving_default of the export,
    both the TF2 way and the way TF Serving runs it (session + saver)."""
    import json

    from karpalign.beam.job import extract_config, run_extract

    root = tmp_path_factory.mktemp("formats")
    images = _format_images()
    with open(root / "captions.jsonl", "w") as fh:
        for name, (data, ext) in images.items():
            (root / f"{name}.{ext}").write_bytes(data)
            fh.write(json.dumps({"image": f"{name}.{ext}", "caption": f"a picture stored as {name}",
                                 "split": "train"}) + "\n")
    out = root / "records"
    result = run_extract(extract_config(
        str(root / "captions.jsonl"), str(out), cnn=exported["manifest"].cnn_spec, crop_size=CROP,
        proposer="grid", regions=K_GRID, min_word_count=1, shards_per_split=1, batch_size=4,
        max_failure_fraction=1.0, progress_every=0), ["--runner=DirectRunner"])
    parsed = tf.data.TFRecordDataset(sorted(str(p) for p in out.glob("train-*.tfrecord.gz")), compression_type="GZIP")
    examples = F.parse_examples(tf.constant(list(parsed.as_numpy_iterator())), D, K_GRID + 1)
    job = {i.decode(): (f, b) for i, f, b in zip(examples["image_id"].numpy(), examples["region_features"].numpy(),
                                                 examples["boxes"].numpy())}
    dead = {json.loads(line)["image_id"]: json.loads(line) for line in open(out / "dead_letters.jsonl")}

    serving = {}
    loaded = tf.saved_model.load(exported["dir"]).signatures["serving_default"]
    for name, (data, _) in images.items():
        try:
            serving[name] = loaded(images=tf.constant([data]))["region_features"].numpy()[0]  # (R, D)
        except tf.errors.InvalidArgumentError as exc:
            serving[name] = exc
    session = {}
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], exported["dir"])
        signature = meta_graph.signature_def["serving_default"]
        for name, (data, _) in images.items():
            try:
                session[name] = sess.run(signature.outputs["region_features"].name,
                                         {signature.inputs["images"].name: np.array([data], dtype=object)})[0]
            except tf.errors.InvalidArgumentError as exc:
                session[name] = exc
    return {"images": images, "job": job, "dead": dead, "serving": serving, "session": session,
            "manifest": result.manifest}


@pytest.mark.parametrize("name", [n for n in _format_images() if n not in REFUSED_FORMATS])
def test_extraction_job_and_serving_default_give_the_same_features(exported, format_parity, name):
    job_features, job_boxes = format_parity["job"][name]
    np.testing.assert_allclose(job_boxes, GridProposer(K_GRID).propose())
    assert np.abs(job_features).max() > 0 and job_features.std(axis=0).max() > 0  # not a blank image
    for path in ("serving", "session"):
        served = format_parity[path][name]
        assert not isinstance(served, Exception), f"{path} refused {name}: {served}"
        diff = float(np.abs(served - job_features).max())
        print(f"{name}: max |job - {path}| = {diff:.2e}")
        assert diff <= 1e-4, (name, path, diff)
    # And both are the Pillow reference decode's features (orientation applied, alpha on white, first frame).
    reference = _pillow_features(exported, [format_parity["images"][name][0]])[0]
    assert np.abs(reference - job_features).max() <= 1e-4


def test_orientation_and_alpha_change_the_features(exported, format_parity):
    """The parity above is not vacuous: rotations and the alpha composite really reach the features."""
    job = format_parity["job"]
    for rotated in ("exif3_jpeg", "exif6_jpeg", "exif8_jpeg"):
        assert np.abs(job[rotated][0] - job["plain_jpeg"][0]).max() > 1e-3, rotated
    alpha_png = Image.open(io.BytesIO(format_parity["images"]["alpha_png"][0]))
    dropped = _pillow_features(exported, [_png(np.asarray(alpha_png.convert("RGB")))])[0]  # alpha ignored
    assert np.abs(job["alpha_png"][0] - dropped).max() > 1e-3


@pytest.mark.parametrize("name", sorted(REFUSED_FORMATS))
def test_refused_format_is_invalid_argument_in_serving_and_a_dead_letter_in_the_job(format_parity, name):
    reason = REFUSED_FORMATS[name]
    assert name not in format_parity["job"]
    letter = format_parity["dead"][name]
    assert (letter["stage"], letter["reason"]) == ("decode", reason)
    for path in ("serving", "session"):
        error = format_parity[path][name]
        assert isinstance(error, tf.errors.InvalidArgumentError), (path, error)
        assert error.error_code == tf.errors.INVALID_ARGUMENT and reason in error.message, (path, error.message)
    manifest = format_parity["manifest"]
    assert manifest.failed == len(REFUSED_FORMATS) and manifest.failures_by_stage == {"decode": 1}
    assert manifest.written == len(_format_images()) - len(REFUSED_FORMATS)


def test_serving_default_catches_a_preprocessing_mismatch(exported, inputs, portable):
    """Extraction without the backbone's pixel mapping (raw 0..255) is visibly different: the parity test
    above would fail on such a bug."""
    boxes = GridProposer(K_GRID).propose()
    crops = [tf.image.crop_and_resize(tf.cast(decode_image(d)[None], tf.float32), boxes, tf.zeros([len(boxes)],
             tf.int32), (CROP, CROP)).numpy() for d in inputs["images"]]
    unnormalised = np.stack([exported["backbone"](c) for c in crops])
    assert np.abs(portable["outputs"]["serving_default"]["region_features"] - unnormalised).max() > 1e-2


def test_embed_score_align_match_eager(exported, inputs, portable):
    model, out = exported["alignment"], portable["outputs"]
    feats, mask = inputs["feats"], inputs["mask"]
    tokens, ids, tmask = _eager_tokens(exported, inputs["sentences"])
    v = model.embed_images(feats, mask).numpy()  # (B, R, H)
    s = model.embed_sentences(ids, tmask).numpy()  # (B, T, H)
    np.testing.assert_allclose(out["embed_images"]["region_vectors"], v, atol=1e-5)
    np.testing.assert_allclose(out["embed_sentences"]["word_vectors"], s, atol=1e-5)
    np.testing.assert_array_equal(out["embed_sentences"]["word_mask"], tmask)
    padded = [[t.encode() for t in toks] + [b""] * (MAX_WORDS - len(toks)) for toks in tokens]
    assert out["embed_sentences"]["tokens"].tolist() == padded
    assert tokens[0] == ["a", "red", "circle", "and", "a", "blue", "star"] and tokens[2][0] == "zebra"
    scores = model.score_matrix(v, mask, s[:2], tmask[:2]).numpy()  # (3, 2)
    np.testing.assert_allclose(out["score"]["scores"], scores, atol=1e-5)
    dots = np.einsum("brh,bth->btr", v, s)  # (B, T, R)
    np.testing.assert_allclose(out["align"]["region_word_scores"], dots, atol=1e-5)
    assert out["align"]["tokens"].tolist() == padded
    for i, toks in enumerate(tokens):
        n, r = len(toks), int(mask[i].sum())
        got = out["align"]["assignment"][i]
        assert (got[n:] == -1).all()
        if n:
            np.testing.assert_array_equal(got[:n], viterbi_align(dots[i, :n, :r], 0.5))


def test_saved_model_cli_lists_signatures_and_named_outputs(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, "show", "--all", "--dir", exported["dir"]], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name, outputs in SIGNATURES.items():
        assert f"signature_def['{name}']" in proc.stdout
        for output in outputs:
            assert f"outputs['{output}']" in proc.stdout
    assert "output_0" not in proc.stdout


def test_tfsm_layer_calls_caption_features(exported, inputs):
    layer = keras.layers.TFSMLayer(exported["dir"], call_endpoint="caption_features")
    out = layer({"region_features": inputs["feats"], "region_mask": inputs["mask"]})
    captions, scores, ids = _eager_captions(exported, inputs["feats"][:, 0])
    _assert_captions({k: v.numpy() for k, v in out.items()}, captions, scores, ids)


# ---- command-line errors ----------------------------------------------------------------------------------------


def test_cli_refuses_bad_runs(exported, tmp_path, capsys):
    runs, base = exported["runs"], str(tmp_path / "models")
    common = ["--records-dir", exported["records"], "--export-base", base]
    assert export_main(["--align-dir", str(tmp_path / "nope"), "--caption-dir", runs["caption"]] + common) == 2
    assert "align run folder does not exist" in capsys.readouterr().err

    other = str(tmp_path / "caption")
    shutil.copytree(runs["caption"], other)
    vocab = Vocabulary.load(os.path.join(other, "vocab.txt"))
    Vocabulary(vocab.words[:4] + vocab.words[5:] + vocab.words[4:5]).save(os.path.join(other, "vocab.txt"))
    assert export_main(["--align-dir", runs["align"], "--caption-dir", other] + common) == 2
    assert "must share one vocabulary" in capsys.readouterr().err

    assert export_main(["--align-dir", runs["align"], "--caption-dir", runs["caption"], "--proposer",
                        "segments"] + common) == 2
    assert "cannot run inside the serving graph; use one of: grid, learned:" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(base, "karpalign", "1"))
