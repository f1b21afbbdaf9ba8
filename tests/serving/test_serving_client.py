"""Client behaviour that needs no model: retries and clear errors when the server is down, local files."""

import socket

import grpc
import pytest

from karpalign.serving import client as serving_client
from karpalign.serving.client import CaptionClient, read_image_files


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_down_raises_after_retries_with_backoff(monkeypatch):
    sleeps = []
    monkeypatch.setattr(serving_client.time, "sleep", sleeps.append)
    target = f"127.0.0.1:{_closed_port()}"
    with CaptionClient(target, "toy", timeout=5.0, retries=3, backoff=0.05) as c:
        with pytest.raises(serving_client.ServerUnavailableError) as info:
            c.caption([b"\x89PNG"])
    assert f"cannot reach server at {target}" in str(info.value)
    assert "4 attempts" in str(info.value)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert sleeps == pytest.approx([0.05, 0.1, 0.2])  # exponential backoff between the 4 attempts


def test_metadata_and_status_also_report_an_unreachable_server():
    with CaptionClient(f"127.0.0.1:{_closed_port()}", "toy", timeout=5.0, retries=0) as c:
        with pytest.raises(serving_client.ServerUnavailableError, match="cannot reach server"):
            c.metadata()
        with pytest.raises(serving_client.ServerUnavailableError, match="cannot reach server"):
            c.status()


def test_non_retryable_errors_are_not_retried(toy_server, monkeypatch, image_bytes):
    sleeps = []
    monkeypatch.setattr(serving_client.time, "sleep", sleeps.append)
    with CaptionClient(toy_server.address, "missing-model", retries=3) as c:
        with pytest.raises(serving_client.ModelNotFoundError):
            c.caption([image_bytes(2, 2)])
    assert sleeps == []


def test_read_image_files_refuses_missing_unreadable_and_empty(tmp_path):
    good = tmp_path / "a.png"
    good.write_bytes(b"\x89PNG data")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert read_image_files([good]) == [b"\x89PNG data"]
    with pytest.raises(serving_client.ImageFileError, match="nope.jpg: no such file"):
        read_image_files([good, tmp_path / "nope.jpg"])
    with pytest.raises(serving_client.ImageFileError, match="not a regular file"):
        read_image_files([tmp_path])
    with pytest.raises(serving_client.ImageFileError, match="empty.jpg: empty file"):
        read_image_files([empty])


def test_caption_files_refuses_a_missing_file_before_any_call(tmp_path, monkeypatch):
    c = CaptionClient(f"127.0.0.1:{_closed_port()}", "toy", retries=0)
    monkeypatch.setattr(c, "_call", lambda *a: pytest.fail("no call may be made for a missing file"))
    with pytest.raises(serving_client.ImageFileError, match="missing.png"):
        c.caption_files([tmp_path / "missing.png"])


def test_argument_checks():
    with pytest.raises(ValueError, match="timeout"):
        CaptionClient("localhost:1", "m", timeout=0)
    c = CaptionClient("localhost:1", "m")
    with pytest.raises(ValueError, match="at least one image"):
        c.caption([])
    with pytest.raises(TypeError, match="image 0 is str"):
        c.caption(["photo.jpg"])
    with pytest.raises(serving_client.InvalidRequestError, match="wrap it in a list"):
        c.predict({"images": b"single"})
