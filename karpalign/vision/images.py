"""Pillow's part of the image path: input checks, and the reference decoder the TensorFlow one is tested against.

The extraction job and the serving graph decode with ONE TensorFlow function,
:func:`karpalign.vision.region_features.decode_image_tf`; Pillow only checks their inputs here:

- :func:`check_image_bytes`: zero bytes, unrecognised or unsupported formats (:data:`DECODABLE_FORMATS`) and
  decompression bombs, refused from the header alone: the pixel count (width * height) is checked before a
  single pixel is decoded, so a 20-byte PNG that claims 100000 x 100000 pixels costs nothing.
- :func:`diagnose`: why the TensorFlow decoder failed on a file (truncated, corrupt), in Pillow's words.

:func:`decode_image` is the Pillow decoder that defines what a decoded image is: EXIF orientation applied,
first frame only (GIF/animated WebP/multi-page TIFF), 3 channels RGB, uint8. Transparent pixels are composited
on white (a transparent PNG logo on white, as a browser shows it), so a caption that says "a white background"
stays true. 16-bit images are scaled to 8 bits. The TensorFlow decoder gives the same pixels for everything it
accepts (tests/vision/test_region_features.py); Pillow also reads formats TensorFlow cannot decode the same way
(CMYK JPEG, TIFF), which the job and the serving graph refuse with the ``REFUSED_*`` reasons below.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000

# Photo formats we accept (Pillow format names). MPO is the multi-picture JPEG many cameras write.
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF")

# What the TensorFlow decoder (karpalign.vision.region_features) reads; MPO is a JPEG to it.
DECODABLE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")

# Why the TensorFlow decoder refuses an image: the serving graph's INVALID_ARGUMENT message and the extraction
# job's dead-letter reason (one text, so both say the same).
REFUSED_EMPTY = "zero-byte file"
REFUSED_UNKNOWN = "unrecognised image format (not JPEG, PNG, GIF, BMP or WEBP)"
REFUSED_CMYK_JPEG = "CMYK JPEG is not supported: convert to RGB"
REFUSED_TIFF = "TIFF is not supported: convert to JPEG or PNG"
REFUSED_BMP_COMPRESSED = "compressed BMP is not supported: convert to PNG"
REFUSED_GIF_FRAME = "GIF whose first frame does not cover the whole image is not supported: convert to PNG"
REFUSED_WEBP_ANIMATED = "animated WEBP is not supported: convert to GIF or PNG"

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageDecodeError(ValueError):
    """An image that cannot be used. ``stage`` is "decode" (unreadable) or "bomb" (too many pixels)."""

    def __init__(self, source: str, reason: str, stage: str = "decode"):
        if stage not in ("decode", "bomb"):
            raise ValueError(f"ImageDecodeError stage must be 'decode' or 'bomb', got {stage!r}")
        self.source = source
        self.reason = reason
        self.stage = stage
        super().__init__(f"{source or '<bytes>'}: cannot decode image ({stage}): {reason}")

    def __reduce__(self):
        # Beam ships exceptions between processes: pickle with the constructor's own arguments.
        return (type(self), (self.source, self.reason, self.stage))


def _open(data: bytes, source: str, max_pixels: int) -> Image.Image:
    """Parses the header only (Pillow decodes lazily) and applies the format and pixel-count checks."""
    # Pillow's own process-wide limit also applies: it warns above Image.MAX_IMAGE_PIXELS (89M by default) and
    # refuses above twice that, before our check runs. (No warnings.catch_warnings here: it is not thread-safe
    # and Beam runs several DoFn threads per process.)
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(source, f"decompression bomb refused by Pillow ({exc})", "bomb") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(source, "unsupported or unrecognised image format") from exc
    except Exception as exc:  # corrupt headers raise a variety of errors inside the plugins
        raise ImageDecodeError(source, f"corrupt image header ({type(exc).__name__}: {exc})") from exc
    if img.format not in SUPPORTED_FORMATS:
        raise ImageDecodeError(source, f"unsupported image format {img.format} (supported: "
                                       f"{', '.join(SUPPORTED_FORMATS)})")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(source, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageDecodeError(source, f"{width}x{height} = {width * height} pixels exceeds max_pixels="
                                       f"{max_pixels}", "bomb")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB. Alpha (explicit, or palette/grey transparency) is composited on white."""
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img)
        if img.mode != "I" or values.max(initial=0) > 255:
            values = values.astype(np.float64) / 257.0  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8))
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "") -> np.ndarray:
    """Decodes JPEG/PNG/GIF/BMP/WebP/TIFF bytes -> ``np.uint8`` array ``(H, W, 3)`` RGB.

    ``source`` (a path or record id) only labels errors. Raises :class:`ImageDecodeError` for empty,
    truncated, corrupt or unsupported data (stage "decode") and for images over ``max_pixels`` (stage
    "bomb"; checked on the header before decoding). Truncated files are errors unless the process has set
    Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES``, which we respect as a deliberate choice.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{source or '<bytes>'}: decode_image needs bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageDecodeError(source, "zero-byte file")
    img = _open(data, source, max_pixels)
    try:
        img.seek(0)  # first frame of animations and multi-page files
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
        array = np.asarray(rgb, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower() or isinstance(exc, EOFError):
            reason = f"truncated image data ({reason})"
        else:
            reason = f"corrupt image data ({type(exc).__name__}: {reason})"
        raise ImageDecodeError(source, reason) from exc
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageDecodeError(source, f"decoded to unexpected shape {array.shape}")
    return np.ascontiguousarray(array)



def check_image_bytes(data, *, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "") -> bytes:
    """Pillow's checks before the TensorFlow decoder sees ``data`` -> the bytes (as ``bytes``).

    Raises :class:`ImageDecodeError`: stage "decode" for zero bytes, unrecognised or corrupt headers and formats
    outside :data:`DECODABLE_FORMATS` (a CMYK JPEG is refused with :data:`REFUSED_CMYK_JPEG`, as the decoder
    itself would); stage "bomb" over ``max_pixels`` (header only, no pixels decoded).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{source or '<bytes>'}: image checks need bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageDecodeError(source, REFUSED_EMPTY)
    img = _open(data, source, max_pixels)
    if img.format == "TIFF":
        raise ImageDecodeError(source, REFUSED_TIFF)
    if img.format not in DECODABLE_FORMATS:
        raise ImageDecodeError(source, f"{img.format} is not supported: convert to JPEG or PNG")
    if img.format in ("JPEG", "MPO") and img.mode == "CMYK":
        raise ImageDecodeError(source, REFUSED_CMYK_JPEG)
    return data


def diagnose(data: bytes, decoder_message: str = "") -> str:
    """Why an image that passed :func:`check_image_bytes` failed to decode: Pillow's reason when Pillow fails
    too ("truncated image data (...)", "corrupt image data (...)"), else the decoder's first message line."""
    try:
        decode_image(data, max_pixels=2 ** 62)
    except ImageDecodeError as exc:
        return exc.reason
    except Exception as exc:  # Pillow's own limit or an unexpected plugin error: still a reason
        return f"corrupt image data ({type(exc).__name__}: {exc})"
    lines = [line.strip() for line in (decoder_message or "").splitlines() if line.strip()]
    first = lines[0] if lines else "the decoder failed"
    if first.startswith("{{function_node"):
        first = first.split("}}", 1)[-1].strip()
    return f"corrupt image data ({first})"
