"""Cheap image checks: read just enough of the encoded bytes to know the format and size.

The server rejects non-images and oversized images before they reach the model: decoding a 20000 x 20000
PNG inside the serving graph would allocate over a gigabyte. Pillow's `Image.open` parses only the file
header (pixel data is read lazily), so the check costs microseconds per image.

What the graphs can decode is decided by :func:`karpalign.vision.region_features.decode_image_tf`; an image it
refuses from its header (a CMYK JPEG) is refused here with the same reason, before the model runs.
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from karpalign.vision.images import REFUSED_CMYK_JPEG

# The formats the exported graphs' decoder (karpalign.vision.region_features.decode_image_tf) reads.
DEFAULT_IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000  # 25 megapixels, e.g. 6000 x 4000


def image_header(data: bytes, formats=DEFAULT_IMAGE_FORMATS) -> tuple[str, int, int]:
    """Returns (format, width, height) of encoded image bytes by parsing only the header.

    Raises ValueError with a short reason when the bytes are not an image in one of `formats`.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"expected encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("empty bytes")
    try:
        with Image.open(io.BytesIO(data), formats=list(formats)) as image:
            width, height = image.size
            fmt, mode = image.format, image.mode
    except Image.DecompressionBombError as e:
        raise ValueError(f"image is too large for Pillow to open ({e})") from e
    except UnidentifiedImageError as e:
        raise ValueError(f"not an image in a supported format ({', '.join(formats)}); "
                         f"starts with {bytes(data[:8])!r}") from e
    except (OSError, SyntaxError) as e:  # Pillow raises these for corrupt headers
        raise ValueError(f"corrupt image header ({e})") from e
    if fmt == "JPEG" and mode == "CMYK":
        raise ValueError(REFUSED_CMYK_JPEG)
    return fmt, int(width), int(height)


def check_image(data: bytes, max_pixels: int, formats=DEFAULT_IMAGE_FORMATS) -> tuple[str, int, int]:
    """Like image_header, and also raises ValueError when width * height exceeds `max_pixels`."""
    fmt, width, height = image_header(data, formats)
    if width * height > max_pixels:
        raise ValueError(f"{fmt} image is {width}x{height} = {width * height} pixels, above the limit of "
                         f"{max_pixels} pixels")
    return fmt, width, height
