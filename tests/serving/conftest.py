"""Shared fixtures: the toy SavedModel exported once per session and one running development server."""

import io

import pytest
from PIL import Image

from karpalign.serving.server import ServerConfig, start_server
from karpalign.testing import export_toy_model

MAX_IMAGE_PIXELS = 64 * 64  # small, so the oversized-image test needs no big image
MAX_REQUEST_BYTES = 256 * 1024


def encode_image(width: int, height: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def image_bytes():
    """encode_image(width, height, fmt="PNG") -> encoded bytes."""
    return encode_image


@pytest.fixture(scope="session")
def toy_base(tmp_path_factory):
    """<base>/toy/1/ holding the toy model, version 1."""
    base = tmp_path_factory.mktemp("models")
    export_toy_model(str(base / "toy"), version=1)
    return base


@pytest.fixture(scope="session")
def toy_server(toy_base):
    config = ServerConfig(model_base_path=str(toy_base), model_name="toy", port=0, poll_seconds=1.0,
                          max_image_pixels=MAX_IMAGE_PIXELS, max_request_bytes=MAX_REQUEST_BYTES, workers=4)
    running = start_server(config)
    yield running
    running.stop(grace=1.0)
