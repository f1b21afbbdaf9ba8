"""The one region-feature path: the TensorFlow decoder gives Pillow's pixels (orientation, alpha, palettes, frames),
refuses what it cannot decode the same way with a reason naming the format, and the feature stages are shared."""

import io
import re
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from karpalign.vision import images as pillow_images
from karpalign.vision.images import ImageDecodeError, decode_image
from karpalign.vision.region_features import (chunk_bounds, cnn_features_tf, composite_on_white, decode_image_array,
                                              decode_image_tf, image_problem_tf, map_pixels, pixel_mapping,
                                              region_features_tf)

_decode_graph = tf.function(decode_image_tf, input_signature=[tf.TensorSpec([], tf.string)])
_problem_graph = tf.function(image_problem_tf, input_signature=[tf.TensorSpec([], tf.string)])


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _photo(h=20, w=36, seed=0) -> np.ndarray:
    """Smooth colours plus noise: every orientation and every channel is told apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // w, yy * 255 // h, (xx * yy) % 256], -1)
    return np.clip(base + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _big_endian_exif(orientation: int) -> bytes:
    """A Motorola-order ("MM") TIFF header with one IFD0 entry: Orientation, SHORT, 1 value."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0\0\0\0"
    return b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd


def _palette(arr, colors=8):
    return Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=colors)


def _cases():
    arr = _photo()
    rgba = np.random.default_rng(1).integers(0, 256, (20, 36, 4), dtype=np.uint8)
    pal = _palette(arr)
    key = int(np.asarray(pal)[0, 0])
    deep = np.random.default_rng(2).integers(0, 65536, (20, 36)).astype(np.uint16)
    cases = {
        "jpeg": _encode(Image.fromarray(arr), "JPEG", quality=90),
        "progressive jpeg": _encode(Image.fromarray(arr), "JPEG", quality=90, progressive=True),
        "grey jpeg": _encode(Image.fromarray(arr[..., 0]), "JPEG"),
        "png": _encode(Image.fromarray(arr), "PNG"),
        "grey png": _encode(Image.fromarray(arr[..., 0]), "PNG"),
        "bilevel png": _encode(Image.fromarray(arr[..., 0] > 100).convert("1"), "PNG"),
        "16-bit grey png": _encode(Image.fromarray(deep), "PNG"),
        "palette png": _encode(pal, "PNG"),
        "palette png with transparency": _encode(pal, "PNG", transparency=key),
        "grey png with colour key": _encode(Image.fromarray(arr[..., 0]), "PNG", transparency=int(arr[0, 0, 0])),
        "rgb png with colour key": _encode(Image.fromarray(arr), "PNG", transparency=tuple(map(int, arr[0, 0]))),
        "grey+alpha png": _encode(Image.fromarray(rgba[..., :2].copy(), "LA"), "PNG"),
        "rgba png": _encode(Image.fromarray(rgba), "PNG"),
        "animated gif": _encode(Image.fromarray(arr), "GIF", save_all=True, duration=100, loop=0,
                                append_images=[Image.fromarray(255 - arr)]),
        "gif with transparency": _encode(pal, "GIF", transparency=key),
        "bmp": _encode(Image.fromarray(arr), "BMP"),
        "32-bit bmp": _encode(Image.fromarray(rgba), "BMP"),
        "lossy webp": _encode(Image.fromarray(arr), "WEBP", quality=80),
        "lossless webp with alpha": _encode(Image.fromarray(rgba), "WEBP", lossless=True),
        "lossy webp with alpha": _encode(Image.fromarray(rgba), "WEBP", quality=80),
        "big-endian exif jpeg (6)": _encode(Image.fromarray(arr), "JPEG", exif=_big_endian_exif(6)),
    }
    for orientation in range(1, 9):
        cases[f"exif jpeg ({orientation})"] = _encode(Image.fromarray(arr), "JPEG", exif=_exif(orientation))
        cases[f"exif png ({orientation})"] = _encode(Image.fromarray(arr), "PNG", exif=_exif(orientation))
        cases[f"exif webp ({orientation})"] = _encode(Image.fromarray(arr), "WEBP", lossless=True,
                                                      exif=_exif(orientation))
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_tensorflow_decoder_gives_pillows_pixels(name):
    data = CASES[name]
    want = decode_image(data)  # the Pillow reference: orientation, alpha on white, first frame, RGB
    got = decode_image_array(data)
    assert got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"]
    assert got.shape == want.shape, name
    np.testing.assert_array_equal(got, want, err_msg=name)
    np.testing.assert_array_equal(_decode_graph(tf.constant(data)).numpy(), want, err_msg=name)
    assert _problem_graph(tf.constant(data)).numpy() == b""


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_orientation_is_really_applied(orientation):
    stored = _photo(h=20, w=36)
    data = _encode(Image.fromarray(stored), "JPEG", quality=95, exif=_exif(orientation))
    got = decode_image_array(data)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(got, upright)
    as_stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    if orientation == 3:
        assert got.shape == (20, 36, 3)
        np.testing.assert_array_equal(got, as_stored[::-1, ::-1])
    else:
        assert got.shape == (36, 20, 3)  # transposed: portrait as displayed
        turned = np.rot90(as_stored, 3 if orientation == 6 else 1)  # 6: clockwise, 8: counter-clockwise
        np.testing.assert_array_equal(got, turned)


def test_alpha_compositing_is_pillows_arithmetic_for_every_value_pair():
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))  # (256, 256) each
    rgba = np.stack([colour, 255 - colour, colour // 2, alpha], -1).astype(np.uint8)  # (256, 256, 4)
    white = Image.new("RGBA", (256, 256), (255, 255, 255, 255))
    want = np.asarray(Image.alpha_composite(white, Image.fromarray(rgba)).convert("RGB"))
    np.testing.assert_array_equal(composite_on_white(tf.constant(rgba)).numpy(), want)


def _refused():
    arr = _photo()
    rgba = np.random.default_rng(3).integers(0, 256, (20, 36, 4), dtype=np.uint8)
    frames = [Image.fromarray(arr), Image.fromarray(255 - arr)]
    gif = bytearray(_encode(_palette(arr), "GIF"))
    descriptor = gif.index(b"\x2c\x00\x00\x00\x00")  # image descriptor at (0, 0): move the frame to (1, 0)
    gif[descriptor + 1] = 1
    return {
        "cmyk jpeg": (_encode(Image.fromarray(arr).convert("CMYK"), "JPEG"), pillow_images.REFUSED_CMYK_JPEG),
        "tiff": (_encode(Image.fromarray(arr), "TIFF"), pillow_images.REFUSED_TIFF),
        "palette bmp": (_encode(_palette(arr), "BMP"), "BMP with 8 bits per pixel is not supported: convert to PNG"),
        "gif frame off the canvas": (bytes(gif), pillow_images.REFUSED_GIF_FRAME),
        "animated webp": (_encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
                          pillow_images.REFUSED_WEBP_ANIMATED),
        "not an image": (b"these are caption notes, not an image\n" * 4, pillow_images.REFUSED_UNKNOWN),
        "empty": (b"", pillow_images.REFUSED_EMPTY),
        "rgba webp": (_encode(Image.fromarray(rgba), "WEBP", lossless=True), ""),  # control: accepted
    }


REFUSED = _refused()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_images_fail_in_the_graph_with_the_reason(name):
    data, reason = REFUSED[name]
    assert _problem_graph(tf.constant(data)).numpy().decode() == reason
    if not reason:
        assert _decode_graph(tf.constant(data)).shape == (20, 36, 3)
        return
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(reason)):
        _decode_graph(tf.constant(data))
    with pytest.raises(ImageDecodeError) as info:  # the extraction job's decoder: the same reason
        decode_image_array(data, source=f"{name}.bin")
    assert info.value.stage == "decode" and info.value.source == f"{name}.bin"
    if name not in ("not an image", "gif frame off the canvas", "animated webp", "palette bmp"):
        assert info.value.reason == reason  # refused by Pillow's header check, with the decoder's words
    else:
        assert info.value.reason in (reason, "unsupported or unrecognised image format"), info.value.reason


def test_cmyk_is_refused_because_tensorflow_rounds_differently():
    """Why CMYK is refused instead of decoded: TensorFlow's CMYK -> RGB is one level off on many pixels."""
    cmyk = Image.fromarray(np.random.default_rng(4).integers(0, 256, (16, 16, 4), dtype=np.uint8), "CMYK")
    data = _encode(cmyk, "JPEG", quality=95)
    tf_rgb = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy().astype(int)
    assert np.abs(tf_rgb - decode_image(data)).max() >= 1


def test_truncated_corrupt_and_bombs_are_dead_letter_errors():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG"):
        data = _encode(Image.fromarray(noise), fmt)
        with pytest.raises(ImageDecodeError, match="truncated") as info:
            decode_image_array(data[: len(data) // 2], source="half")
        assert info.value.stage == "decode"
        with pytest.raises(tf.errors.InvalidArgumentError):
            _decode_graph(tf.constant(data[: len(data) // 2]))
    with pytest.raises(ImageDecodeError, match="exceeds max_pixels=1000") as info:
        decode_image_array(_encode(Image.fromarray(noise), "PNG"), max_pixels=1000)
    assert info.value.stage == "bomb"
    with pytest.raises(TypeError, match="need bytes"):
        decode_image_array("photo.jpg")


def test_decoder_graph_is_core_ops_only():
    graph = _decode_graph.get_concrete_function().graph.as_graph_def()
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    assert {"DecodeJpeg", "DecodePng", "DecodeBmp", "DecodeImage", "ExtractJpegShape", "Assert"} <= ops, sorted(ops)


def test_chunks_are_near_equal_and_cover_every_crop():
    assert chunk_bounds(0).numpy().tolist() == [0, 0]
    assert chunk_bounds(5).numpy().tolist() == [0, 5]
    assert chunk_bounds(32).numpy().tolist() == [0, 32]
    assert chunk_bounds(70).numpy().tolist() == [0, 23, 47, 70]
    sizes = np.diff(chunk_bounds(170).numpy())
    assert sizes.sum() == 170 and sizes.max() <= 32 and sizes.max() - sizes.min() <= 1

    seen = []

    def network(x):  # (n, h, w, 3) -> a 4-D map, which is pooled
        seen.append(x.shape)
        return x * 2.0

    x = np.random.default_rng(0).normal(size=(70, 4, 4, 3)).astype(np.float32)
    out = tf.function(lambda x: cnn_features_tf(network, x, "double", 3))(tf.constant(x)).numpy()
    np.testing.assert_allclose(out, (x * 2).mean(axis=(1, 2)), rtol=1e-6)


def test_pixel_mapping_is_the_same_in_numpy_and_tensorflow():
    scale, offset = pixel_mapping((-1.0, 1.0))
    assert scale.dtype == np.float32 and offset == np.float32(-1.0)
    pixels = np.arange(256, dtype=np.float32).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    np.testing.assert_array_equal(map_pixels(tf.constant(pixels), scale, offset).numpy(),
                                  map_pixels(pixels, scale, offset))


def test_region_features_tf_decodes_crops_maps_and_pools():
    arr = _photo(24, 32)
    data = _encode(Image.fromarray(arr), "PNG")
    boxes = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5]], np.float32)
    mean_colour = lambda x: tf.reduce_mean(x, axis=[1, 2])  # noqa: E731 -- (n, 3)
    out = region_features_tf(tf.constant([data, data]), boxes, 8, mean_colour, *pixel_mapping((0.0, 1.0)), 3,
                             "mean").numpy()
    crops = tf.image.crop_and_resize(arr[None].astype(np.float32), boxes, [0, 0], (8, 8)).numpy()
    want = (crops * np.float32(1 / 255)).mean(axis=(1, 2))
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[0], want, rtol=1e-5)
    np.testing.assert_array_equal(out[0], out[1])


def test_serving_header_check_refuses_cmyk_with_the_graphs_reason():
    from karpalign.serving.images import check_image

    cmyk = _encode(Image.fromarray(_photo()).convert("CMYK"), "JPEG")
    with pytest.raises(ValueError, match=re.escape(pillow_images.REFUSED_CMYK_JPEG)):
        check_image(cmyk, max_pixels=10_000)
    assert check_image(CASES["jpeg"], max_pixels=10_000) == ("JPEG", 36, 20)
