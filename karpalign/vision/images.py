"""Image bytes -> RGB uint8 array, with one clear error type for everything that can go wrong.

Every image file that enters the pipeline goes through :func:`decode_image`, so every decoded image has the
same form: EXIF orientation applied, first frame only (GIF/animated WebP/multi-page TIFF), 3 channels RGB,
uint8. Transparent pixels are composited on white (a transparent PNG logo on white, as a browser shows it),
so a caption that says "a white background" stays true. 16-bit images are scaled to 8 bits.

Decompression bombs are refused from the header alone: the pixel count (width * height) is checked before a
single pixel is decoded, so a 20-byte PNG that claims 100000 x 100000 pixels costs nothing.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000

# Photo formats we accept (Pillow format names). MPO is the multi-picture JPEG many cameras write.
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF")

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

