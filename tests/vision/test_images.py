"""decode_image: every format/mode we promise, and a clear ImageDecodeError for every bad file."""

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from karpalign.vision.images import ImageDecodeError, decode_image


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _pattern(h=24, w=32) -> np.ndarray:
    """Flat colour blocks (JPEG keeps them): red left half, blue right half, green bottom rows."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (200, 30, 30)
    arr[:, w // 2:] = (30, 30, 200)
    arr[h - 8:] = (30, 200, 30)
    return arr


def _check(out, shape):
    assert out.dtype == np.uint8 and out.shape == shape and out.flags["C_CONTIGUOUS"]


def test_png_is_lossless_rgb():
    arr = _pattern()
    out = decode_image(_encode(Image.fromarray(arr), "PNG"))
    _check(out, (24, 32, 3))
    np.testing.assert_array_equal(out, arr)


def test_jpeg_decodes_close_to_the_original():
    arr = _pattern()
    out = decode_image(_encode(Image.fromarray(arr), "JPEG", quality=95))
    _check(out, (24, 32, 3))
    assert np.abs(out.astype(int) - arr).mean() < 6


def test_grayscale_and_bilevel_become_three_equal_channels():
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (5, 1))  # (5, 32)
    out = decode_image(_encode(Image.fromarray(grey), "PNG"))
    _check(out, (5, 32, 3))
    np.testing.assert_array_equal(out[..., 0], grey)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    bilevel = Image.fromarray(grey > 100).convert("1")
    assert set(np.unique(decode_image(_encode(bilevel, "PNG")))) <= {0, 255}


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535]], np.uint16)
    out = decode_image(_encode(Image.fromarray(values), "PNG"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255])


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.fromarray(_pattern()).convert("CMYK")
    out = decode_image(_encode(cmyk, "JPEG", quality=95))
    _check(out, (24, 32, 3))
    assert out[2, 2, 0] > 150 and out[2, 2, 2] < 90  # still red on the left


def test_palette_image_with_and_without_transparency():
    pal = Image.fromarray(_pattern()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    out = decode_image(_encode(pal, "PNG"))
    _check(out, (24, 32, 3))
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))
    see_through = pal.copy()
    see_through.info["transparency"] = int(np.asarray(pal)[0, 0])  # the red's palette index
    out = decode_image(_encode(see_through, "PNG", transparency=int(np.asarray(pal)[0, 0])))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])  # transparent -> white
    assert out[0, -1, 2] > 150  # the opaque blue stays blue


def test_alpha_is_composited_on_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (0, 0, 0)
    rgba[:, :2, 3] = 0  # transparent black -> white
    rgba[:, 2:, 3] = 128  # half-transparent black -> mid grey
    out = decode_image(_encode(Image.fromarray(rgba), "PNG"))
    _check(out, (4, 4, 3))
    np.testing.assert_array_equal(out[:, :2], 255)
    assert np.all(np.abs(out[:, 2:].astype(int) - 127) <= 1)
    la = Image.fromarray(rgba[..., [0, 3]])
    np.testing.assert_array_equal(decode_image(_encode(la, "PNG"))[:, 0], 255)


def test_gif_gives_the_first_frame():
    first = Image.fromarray(np.full((6, 6, 3), (255, 0, 0), np.uint8))
    second = Image.fromarray(np.full((6, 6, 3), (0, 0, 255), np.uint8))
    data = _encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_image(data)
    _check(out, (6, 6, 3))
    assert out[..., 0].min() > 200 and out[..., 2].max() < 50


def test_exif_orientation_is_applied():
    arr = _pattern(h=20, w=40)  # landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    out = decode_image(_encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes()))
    _check(out, (40, 20, 3))  # displayed as portrait
    # Clockwise rotation puts the stored left (red) column on top.
    assert out[2, 10, 0] > 150 and out[-2, 10, 2] > 150


def test_source_and_stage_are_reported():
    with pytest.raises(ImageDecodeError) as info:
        decode_image(b"", source="gs://bucket/empty.jpg")
    err = info.value
    assert (err.source, err.stage) == ("gs://bucket/empty.jpg", "decode")
    assert "zero-byte" in err.reason and "gs://bucket/empty.jpg" in str(err)
    copy = pickle.loads(pickle.dumps(err))  # Beam moves exceptions between processes
    assert (copy.source, copy.stage, copy.reason) == (err.source, err.stage, err.reason)


def test_truncated_jpeg():
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)  # data >> headers
    data = _encode(Image.fromarray(noise), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated") as info:
        decode_image(data[: len(data) // 2], source="half.jpg")
    assert info.value.stage == "decode" and info.value.source == "half.jpg"


def test_corrupt_png_data():
    data = bytearray(_encode(Image.fromarray(_pattern()), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 4: idat + 40] = b"\x00" * 36  # garbage compressed stream
    with pytest.raises(ImageDecodeError, match="corrupt|truncated") as info:
        decode_image(bytes(data), source="broken.png")
    assert info.value.stage == "decode"


def test_unrecognised_and_unsupported_formats():
    with pytest.raises(ImageDecodeError, match="unrecognised") as info:
        decode_image(b"%PDF-1.4 not an image at all", source="doc.pdf")
    assert info.value.stage == "decode"
    ppm = _encode(Image.fromarray(_pattern()), "PPM")  # Pillow reads it, but we do not accept it
    with pytest.raises(ImageDecodeError, match="unsupported image format PPM"):
        decode_image(ppm, source="x.ppm")
    with pytest.raises(TypeError, match="needs bytes"):
        decode_image("photo.jpg")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds (almost) no data: the classic decompression bomb."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_from_the_header():
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_png_header_only(30_000, 30_000), source="bomb.png")  # 900M pixels, ~100 bytes of file
    assert info.value.stage == "bomb" and info.value.source == "bomb.png"
    with pytest.raises(ImageDecodeError, match="exceeds max_pixels=1000") as info:
        decode_image(_png_header_only(100, 20), max_pixels=1000)
    assert info.value.stage == "bomb"
    assert decode_image(_encode(Image.fromarray(_pattern()), "PNG"), max_pixels=24 * 32).shape == (24, 32, 3)


def test_bmp_and_webp_decode():
    arr = _pattern()
    np.testing.assert_array_equal(decode_image(_encode(Image.fromarray(arr), "BMP")), arr)
    np.testing.assert_array_equal(decode_image(_encode(Image.fromarray(arr), "WEBP", lossless=True)), arr)
