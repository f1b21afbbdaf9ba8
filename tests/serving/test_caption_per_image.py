"""Per-image results: one bad file (local or refused by the server) never costs the good ones their captions.

Uses the toy model server of conftest.py (pixel limit 64 x 64, request limit 256 KiB); the toy model decodes
with the real export's decoder, so a truncated JPEG passes the header checks and is refused inside the model.
"""

import io
import json
import socket

import grpc
import numpy as np
import pytest
from PIL import Image

from karpalign.cli import caption as caption_cli
from karpalign.serving import client as serving_client
from karpalign.serving.client import CaptionClient, CaptionResult


def _noisy_jpeg(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture()
def files(tmp_path, image_bytes):
    """{name: path} of good and bad files; the truncated JPEG's header is intact, its scan data cut."""
    jpeg = _noisy_jpeg(48, 40)
    contents = {
        "a.png": image_bytes(12, 8),
        "b.jpg": image_bytes(10, 6, "JPEG"),
        "c.gif": image_bytes(7, 3, "GIF"),
        "notes.txt": b"these are notes, not a picture",
        "big.png": image_bytes(100, 100),  # under the client's default limit, over the toy server's 64 x 64
        "cut.jpg": jpeg[: len(jpeg) // 2],
        "d.png": image_bytes(20, 4),
    }
    paths = {}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)
    paths["missing.jpg"] = str(tmp_path / "missing.jpg")
    return paths


GOOD = {"a.png": "image 12x8 v1", "b.jpg": "image 10x6 v1", "c.gif": "image 7x3 v1", "d.png": "image 20x4 v1"}
ORDER = ["a.png", "missing.jpg", "big.png", "b.jpg", "notes.txt", "cut.jpg", "c.gif", "d.png"]


def _count_predict_batches(monkeypatch, client) -> list[int]:
    """Records the batch size of every Predict request the client sends."""
    sizes = []
    original = client._call

    def counting(method, request, what):
        if what == "Predict":
            (proto,) = request.inputs.values()  # caption() sends one input
            sizes.append(proto.tensor_shape.dim[0].size)
        return original(method, request, what)

    monkeypatch.setattr(client, "_call", counting)
    return sizes


def _assert_mix(by_name: dict, errors_of):
    """Every good file has its caption, every bad one an error with its reason."""
    for name, caption in GOOD.items():
        assert by_name[name].captions[0][0] == caption, name
        assert by_name[name].error is None and by_name[name].ok
    assert errors_of("missing.jpg") == "no such file"
    assert errors_of("notes.txt").startswith("not an image in a supported format")
    assert "100x100 = 10000 pixels, above the limit of 4096 pixels" in errors_of("big.png")
    assert errors_of("big.png").startswith("the server refused it (INVALID_ARGUMENT)")
    assert "element" not in errors_of("big.png")  # the index within a retried batch would mislead
    assert "Invalid JPEG data" in errors_of("cut.jpg")


def test_caption_each_gives_every_file_a_result_and_splits_refused_batches(toy_server, files, monkeypatch):
    paths = [files[name] for name in ORDER]
    with CaptionClient(toy_server.address, "toy", retries=0) as client:
        sizes = _count_predict_batches(monkeypatch, client)
        results = client.caption_each(paths, batch_size=8)
    assert [r.path for r in results] == paths and [r.index for r in results] == list(range(len(paths)))
    by_name = dict(zip(ORDER, results))
    _assert_mix(by_name, lambda name: by_name[name].error)
    for name in ("missing.jpg", "notes.txt", "big.png", "cut.jpg"):
        assert by_name[name].captions is None and not by_name[name].ok
    # Missing and text files never reach the server. The batch of 6 is refused for big.png (element 1),
    # which is set aside; the remaining 5 are refused from inside the model (no element named) and halved
    # down to cut.jpg: [a, b] ok, [cut, c, d] -> [cut] refused, [c, d] ok.
    assert sizes == [6, 5, 2, 3, 1, 2]


def test_batches_stay_within_batch_size_and_results_keep_input_order(toy_server, files, monkeypatch):
    paths = [files[name] for name in ORDER]
    with CaptionClient(toy_server.address, "toy", retries=0) as client:
        sizes = _count_predict_batches(monkeypatch, client)
        streamed = list(client.iter_captions(paths, batch_size=2))
    assert [r.path for r in streamed] == paths
    by_name = dict(zip(ORDER, streamed))
    _assert_mix(by_name, lambda name: by_name[name].error)
    # Checked files in pairs: [a, big] -> big set aside, [a]; [b, cut] -> halved, [b], [cut]; [c, d].
    assert sizes == [2, 1, 2, 1, 1, 2]


def test_a_batch_with_one_bad_element_still_captions_the_others(toy_server, image_bytes, monkeypatch):
    jpeg = _noisy_jpeg(48, 40)
    good = [image_bytes(w, 5) for w in (3, 4, 5, 6, 7, 8, 9)]
    blobs = good[:5] + [jpeg[: len(jpeg) // 3]] + good[5:]
    with CaptionClient(toy_server.address, "toy", retries=0) as client:
        with pytest.raises(serving_client.InvalidRequestError):
            client.caption(blobs)  # the all-or-nothing call loses the whole batch
        sizes = _count_predict_batches(monkeypatch, client)
        results = client.caption_each(blobs, batch_size=8)
    assert [r.captions[0][0] if r.ok else None for r in results] == \
        [f"image {w}x5 v1" for w in (3, 4, 5, 6, 7)] + [None] + ["image 8x5 v1", "image 9x5 v1"]
    assert all(r.path is None for r in results) and results[5].name == "image 5"
    assert "Invalid JPEG data" in results[5].error
    # Bisection: 8 refused -> [0:4] ok, [4:8] refused -> [4:6] refused -> [4] ok, [5] refused; [6:8] ok.
    assert sizes == [8, 4, 4, 2, 1, 1, 2]


def test_local_checks_refuse_before_any_call(toy_server, image_bytes, monkeypatch, tmp_path):
    cmyk = io.BytesIO()
    Image.new("CMYK", (4, 4)).save(cmyk, "JPEG")
    with CaptionClient(toy_server.address, "toy", retries=0) as client:
        sizes = _count_predict_batches(monkeypatch, client)
        results = client.caption_each([image_bytes(100, 100), b"", cmyk.getvalue(), tmp_path],
                                      max_image_pixels=64 * 64)
    assert sizes == []
    assert [r.ok for r in results] == [False] * 4
    assert "above the limit of 4096 pixels" in results[0].error
    assert results[1].error == "empty bytes"
    assert "CMYK" in results[2].error
    assert results[3].path == str(tmp_path) and results[3].error == "not a regular file"
    with pytest.raises(TypeError, match="input 0 is int"):
        client.caption_each([3])
    with pytest.raises(TypeError, match="wrap a single one in a list"):
        client.caption_each(str(tmp_path))
    with pytest.raises(ValueError, match="batch_size"):
        client.caption_each([tmp_path], batch_size=0)


def test_a_request_over_the_message_limit_is_split_too(toy_server, image_bytes):
    padded = image_bytes(8, 8) + b"\0" * (300 * 1024)  # a valid PNG header, beyond the 256 KiB request limit
    with CaptionClient(toy_server.address, "toy", retries=0) as client:
        results = client.caption_each([image_bytes(6, 2), padded, image_bytes(2, 6)])
    assert [r.captions[0][0] if r.ok else None for r in results] == ["image 6x2 v1", None, "image 2x6 v1"]
    assert results[1].error.startswith("too large for the server (RESOURCE_EXHAUSTED)")


def test_errors_that_are_not_about_an_image_still_raise(toy_server, image_bytes, monkeypatch):
    blobs = [image_bytes(3, 3), image_bytes(4, 4)]
    with CaptionClient(toy_server.address, "missing-model", retries=0) as client:
        with pytest.raises(serving_client.ModelNotFoundError):
            client.caption_each(blobs)
    with CaptionClient(toy_server.address, "toy", retries=0) as client:
        sizes = _count_predict_batches(monkeypatch, client)
        with pytest.raises(serving_client.InvalidRequestError,
                           match="input size does not match signature") as info:
            client.caption_each(blobs, input_key="pixels")  # the whole request is wrong: no split
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sizes == [2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with CaptionClient(f"127.0.0.1:{port}", "toy", retries=0) as client:
        results = client.iter_captions([b"not an image", blobs[0]])
        assert next(results).error.startswith("not an image")  # local results come before any call
        with pytest.raises(serving_client.ServerUnavailableError):
            next(results)


def test_caption_result_to_dict():
    ok = CaptionResult(0, "a.png", [("a dog", -1.5), ("a cat", -2.0)])
    assert ok.to_dict() == {"path": "a.png", "captions": [{"text": "a dog", "score": -1.5},
                                                          {"text": "a cat", "score": -2.0}], "error": None}
    assert ok.to_dict(top_k=1)["captions"] == [{"text": "a dog", "score": -1.5}]
    assert CaptionResult(3, None, None, "empty bytes").to_dict() == \
        {"index": 3, "path": None, "captions": None, "error": "empty bytes"}


def test_cli_captions_the_good_files_and_names_each_bad_one(toy_server, files, capsys):
    paths = [files[name] for name in ORDER]
    code = caption_cli.main(["--server", toy_server.address, "--model", "toy", "--retries", "0",
                             "--batch-size", "3", *paths])
    captured = capsys.readouterr()
    assert code == 1
    out = [line.split("\t") for line in captured.out.splitlines()]
    assert [fields[:2] for fields in out] == [[files[name], GOOD[name]] for name in ORDER if name in GOOD]
    assert all(len(fields) == 3 for fields in out)
    float(out[0][2])
    errors = captured.err.splitlines()
    assert errors[-1] == "karpalign-caption: 4 of 8 images failed"
    by_name = {}
    for line in errors[:-1]:
        assert line.startswith("karpalign-caption: error: ")
        path, reason = line[len("karpalign-caption: error: "):].split(": ", 1)
        by_name[next(name for name, p in files.items() if p == path)] = reason
    assert sorted(by_name) == ["big.png", "cut.jpg", "missing.jpg", "notes.txt"]
    _assert_mix({name: CaptionResult(0, files[name], [(GOOD[name], 0.0)]) for name in GOOD}, by_name.get)


def test_cli_exits_0_when_every_file_is_captioned(toy_server, files, capsys):
    good = [files[name] for name in GOOD]
    assert caption_cli.main(["--server", toy_server.address, "--model", "toy", *good]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 4 and captured.err == ""


def test_cli_json_prints_one_object_per_image(toy_server, files, capsys):
    paths = [files[name] for name in ORDER]
    code = caption_cli.main(["--server", toy_server.address, "--model", "toy", "--retries", "0", "--json",
                             "--top-k", "2", *paths])
    captured = capsys.readouterr()
    assert code == 1
    objects = [json.loads(line) for line in captured.out.splitlines()]
    assert [obj["path"] for obj in objects] == paths
    by_name = dict(zip(ORDER, objects))
    for name, obj in by_name.items():
        assert set(obj) == {"path", "captions", "error"}
        if name in GOOD:
            assert obj["error"] is None and [c["text"] for c in obj["captions"]] == [GOOD[name]]
            assert isinstance(obj["captions"][0]["score"], float)
        else:
            assert obj["captions"] is None and obj["error"]
    assert by_name["missing.jpg"]["error"] == "no such file"
    assert "Invalid JPEG data" in by_name["cut.jpg"]["error"]
    assert "above the limit of 4096 pixels" in by_name["big.png"]["error"]
    assert captured.err == "karpalign-caption: 4 of 8 images failed\n"


def test_cli_local_pixel_limit(toy_server, files, capsys):
    code = caption_cli.main(["--server", toy_server.address, "--model", "toy", "--max-image-pixels", "50",
                             files["a.png"], files["c.gif"]])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.split("\t")[:2] == [files["c.gif"], "image 7x3 v1"]
    assert f"{files['a.png']}: PNG image is 12x8 = 96 pixels, above the limit of 50 pixels" in captured.err
