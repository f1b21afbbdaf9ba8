"""karpalign-caption and karpalign-serve entry points: output and exit codes."""

import argparse
import socket

import pytest

from karpalign.cli import caption, serve


@pytest.fixture()
def image_files(tmp_path, image_bytes):
    paths = []
    for name, (w, h) in {"a.png": (12, 8), "b.png": (5, 9)}.items():
        path = tmp_path / name
        path.write_bytes(image_bytes(w, h))
        paths.append(str(path))
    return paths


def test_caption_prints_one_line_per_image(toy_server, image_files, capsys):
    code = caption.main(["--server", toy_server.address, "--model", "toy", "--batch-size", "1", *image_files])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split("\t")[:2] for line in out] == [[image_files[0], "image 12x8 v1"],
                                                      [image_files[1], "image 5x9 v1"]]
    float(out[0].split("\t")[2])


def test_caption_missing_file_is_reported_and_the_good_one_still_captioned(toy_server, image_files, tmp_path,
                                                                          capsys):
    """One missing file no longer costs the others their captions (it used to abort the run): exit 1, the
    missing file named on stderr, the good file's caption line on stdout."""
    missing = str(tmp_path / "missing.jpg")
    code = caption.main(["--server", toy_server.address, "--model", "toy", image_files[0], missing])
    captured = capsys.readouterr()
    assert code == 1 and captured.out.startswith(image_files[0] + "\t") and missing not in captured.out
    assert f"{missing}: no such file" in captured.err


def test_caption_unknown_model_and_bad_image(toy_server, image_files, tmp_path, capsys):
    assert caption.main(["--server", toy_server.address, "--model", "nope", image_files[0]]) == 1
    assert "Servable not found" in capsys.readouterr().err
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    assert caption.main(["--server", toy_server.address, "--model", "toy", str(text_file)]) == 1
    assert "not an image" in capsys.readouterr().err


def test_caption_server_down(image_files, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = caption.main(["--server", f"127.0.0.1:{port}", "--model", "toy", "--retries", "0", image_files[0]])
    assert code == 1
    assert f"cannot reach server at 127.0.0.1:{port}" in capsys.readouterr().err


def test_caption_bad_arguments_exit_2(image_files):
    with pytest.raises(SystemExit) as info:
        caption.main(["--server", "no-port", "--model", "toy", image_files[0]])
    assert info.value.code == 2


def test_serve_reports_a_bad_base_path(tmp_path, capsys):
    assert serve.main(["--model-base-path", str(tmp_path / "nowhere"), "--port", "0"]) == 1
    assert "nowhere: not a directory" in capsys.readouterr().err


def test_serve_reports_a_port_in_use(toy_server, toy_base, capsys):
    code = serve.main(["--model-base-path", str(toy_base), "--model-name", "toy",
                       "--port", str(toy_server.port)])
    assert code == 1
    assert f"cannot bind gRPC server to 127.0.0.1:{toy_server.port}" in capsys.readouterr().err


def test_parse_size():
    assert serve.parse_size("16MiB") == 16 * 1024 * 1024
    assert serve.parse_size("4MB") == 4_000_000
    assert serve.parse_size("1024") == 1024
    for bad in ("lots", "0", "-3MB"):
        with pytest.raises(argparse.ArgumentTypeError):
            serve.parse_size(bad)
