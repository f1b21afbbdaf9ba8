"""DecodeImageFn: the serving graph's TensorFlow decoder; images it refuses become "decode" dead letters with the
reason serving_default gives (INVALID_ARGUMENT there), never a crashed job or different pixels."""

import io

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _encode(img, fmt, **kwargs):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _item(name, data):
    from karpalign.beam.elements import ImageItem

    return ImageItem(image_id=name, split="train", path=f"/data/{name}", sentences=["a b"], data=data)


def test_refused_and_rotated_images_in_the_decode_step():
    from karpalign.beam.elements import DeadLetter
    from karpalign.beam.transforms import DecodeImageFn
    from karpalign.vision.images import REFUSED_CMYK_JPEG, REFUSED_TIFF, decode_image

    arr = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _encode(Image.fromarray(arr), "JPEG", exif=exif.tobytes())
    items = [_item("cmyk.jpg", _encode(Image.fromarray(arr).convert("CMYK"), "JPEG")),
             _item("scan.tif", _encode(Image.fromarray(arr), "TIFF")),
             _item("palette.bmp", _encode(Image.fromarray(arr).convert("P"), "BMP")),
             _item("rotated.jpg", rotated)]
    fn = DecodeImageFn(max_pixels=10_000)
    out = [o for item in items for o in fn.process(item)]
    dead = {o.image_id: o for o in out if isinstance(o, DeadLetter)}
    good = [o for o in out if not isinstance(o, DeadLetter)]
    assert dead["cmyk.jpg"].stage == "decode" and dead["cmyk.jpg"].reason == REFUSED_CMYK_JPEG
    assert dead["scan.tif"].reason == REFUSED_TIFF
    assert dead["palette.bmp"].reason == "BMP with 8 bits per pixel is not supported: convert to PNG"
    assert [o.image_id for o in good] == ["rotated.jpg"] and good[0].data is None
    assert good[0].image.shape == (20, 12, 3)  # orientation 6 applied: displayed as portrait
    np.testing.assert_array_equal(good[0].image, decode_image(rotated))
