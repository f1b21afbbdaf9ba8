"""A real karpalign export behind the development server: JPEG bytes in, the SavedModel's own captions out.

Built once per module: a few synthetic scenes extracted by karpalign-extract with a tiny Keras CNN (so the
records manifest names a loadable backbone and the grid proposer), untrained tiny alignment and caption runs,
karpalign-export (beam 3, max length 6, top 2), and a development server on the export base.
"""

import os

import grpc
import numpy as np
import pytest
import tensorflow as tf

from karpalign.cli import caption as caption_cli
from karpalign.cli.export import main as export_main
from karpalign.cli.extract import main as extract_main
from karpalign.data.records import read_karpathy_json
from karpalign.serving import client as serving_client
from karpalign.serving.client import CaptionClient
from karpalign.serving.server import ServerConfig, start_server
from karpalign.testing import untrained_runs

CROP, FEATURE_DIM, MODEL = 32, 12, "karpalign"
BEAM, MAX_LEN, TOP_K = 3, 6, 2


def _tiny_backbone(path):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(FEATURE_DIM, 3, strides=2, activation="relu")(x)
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)).save(path)


def _untrained_runs(root, records):
    return untrained_runs(root, records, FEATURE_DIM, 10)


@pytest.fixture(scope="module")
def real_export(tmp_path_factory):
    from karpalign.datasets.generate import generate_scenes

    root = str(tmp_path_factory.mktemp("real_export"))
    summary = generate_scenes(os.path.join(root, "scenes"), 8, seed=5, image_size=96, workers=1)
    backbone = os.path.join(root, "tiny.keras")
    _tiny_backbone(backbone)
    records = os.path.join(root, "records")
    assert extract_main(["--dataset", summary["dataset_json"], "--out", records, "--cnn",
                         f"keras:{backbone}|size={CROP},{CROP}", "--proposer", "grid", "--regions", "3",
                         "--min-word-count", "1", "--shards-per-split", "1", "--quiet", "--progress-every", "0"]) == 0
    runs = _untrained_runs(root, records)
    base = os.path.join(root, "models")
    assert export_main(["--align-dir", runs["align"], "--caption-dir", runs["caption"], "--records-dir", records,
                        "--export-base", base, "--model-name", MODEL, "--beam-size", str(BEAM), "--max-length",
                        str(MAX_LEN), "--top-k", str(TOP_K)]) == 0
    jpegs = [r.path for r in read_karpathy_json(summary["dataset_json"])][:2]
    assert all(p.endswith(".jpg") for p in jpegs)
    return {"base": base, "dir": os.path.join(base, MODEL, "1"), "jpegs": jpegs}


@pytest.fixture(scope="module")
def server(real_export):
    running = start_server(ServerConfig(model_base_path=real_export["base"], model_name=MODEL, port=0,
                                        poll_seconds=30.0, workers=2))
    assert sorted(running.repository.versions()) == [1]  # loaded, warmup requests replayed
    yield running
    running.stop(grace=1.0)


@pytest.fixture(scope="module")
def in_process(real_export):
    """serving_default called in this process on the same bytes: the reference the server must reproduce."""
    blobs = [open(p, "rb").read() for p in real_export["jpegs"]]
    signature = tf.saved_model.load(real_export["dir"]).signatures["serving_default"]
    out = signature(images=tf.constant(blobs))
    captions = [[c.decode() for c in row] for row in out["captions"].numpy()]
    return {"captions": captions, "scores": out["scores"].numpy()}


def test_client_captions_equal_the_saved_model(server, real_export, in_process):
    with CaptionClient(server.address, MODEL, timeout=60.0) as client:
        results = client.caption_files(real_export["jpegs"])
    assert [[text for text, _ in row] for row in results] == in_process["captions"]
    np.testing.assert_allclose([[score for _, score in row] for row in results], in_process["scores"], rtol=1e-6)
    assert all(len(row) == TOP_K for row in results)
    # The answer depends on the picture (untrained beams may share words, their scores do not): not vacuous.
    assert np.abs(in_process["scores"][0] - in_process["scores"][1]).max() > 1e-3


def test_caption_cli_prints_the_saved_model_captions(server, real_export, in_process, capsys):
    code = caption_cli.main(["--server", server.address, "--model", MODEL, "--top-k", str(TOP_K),
                             "--batch-size", "1", *real_export["jpegs"]])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 2
    for line, path, captions, scores in zip(lines, real_export["jpegs"], in_process["captions"],
                                            in_process["scores"]):
        fields = line.split("\t")
        assert fields[0] == path
        assert fields[1::2] == captions
        np.testing.assert_allclose([float(s) for s in fields[2::2]], scores, atol=1e-4)


def test_a_real_photo_gets_a_non_empty_caption(server):
    """scikit-image's astronaut (a real photo, not a scene) over gRPC: the best caption has words (the bug was
    '' because <end> won the first step)."""
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=90)
    with CaptionClient(server.address, MODEL, timeout=60.0) as client:
        captions = client.caption([buffer.getvalue()])[0]
    assert len(captions) == TOP_K and all(text.strip() for text, _ in captions), captions


def test_bad_images_get_invalid_argument_and_the_server_keeps_serving(server, real_export, in_process):
    good = open(real_export["jpegs"][0], "rb").read()
    with CaptionClient(server.address, MODEL, timeout=60.0, retries=0) as client:
        with pytest.raises(serving_client.InvalidRequestError) as info:
            client.caption([b"these are notes, not a picture"])
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "element 0" in str(info.value)
        # A JPEG whose header is fine but whose data is cut: rejected by the decode op inside the model.
        with pytest.raises(serving_client.InvalidRequestError) as info:
            client.caption([good, good[: len(good) // 3]])
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [c for c, _ in client.caption([good])[0]] == in_process["captions"][0]
        assert client.status() == {1: "AVAILABLE"}
