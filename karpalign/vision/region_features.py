"""The one region-feature path: encoded image bytes + boxes -> region features, in TensorFlow ops only.

Both the Beam extraction job (:mod:`karpalign.beam.transforms`) and the serving graph
(:class:`karpalign.export.export_module.ExportModule`) call these functions, so training and serving can never
see different features (DESIGN.md, "Region features")::

    bytes --decode_image_tf--> uint8 (H, W, 3) --crop_regions_tf--> float32 (R, S, S, 3) in 0..255
          --map_pixels--> network input --cnn_features_tf--> float32 (R, D)

:func:`region_features_tf` is the whole chain for a batch of encoded images and one set of boxes (the serving
graph with a grid), :func:`image_region_features_tf` the same with every image's own boxes (a proposer in the
graph: learned or a detector, :mod:`karpalign.vision.proposers`); the job runs
the same stages in its own steps (decode, propose, crop, CNN in a background thread) through
:func:`decode_image_array`, :func:`karpalign.vision.proposers.crop_regions` and
:class:`karpalign.vision.backbones.Backbone`, which are thin wrappers of the functions here.

**Decoding** (:func:`decode_image_tf`) is made of core TensorFlow ops only (no ``tf.py_function``), so it runs in
the stock TF Serving binary. It gives what :func:`karpalign.vision.images.decode_image` (the Pillow reference)
gives, pixel for pixel:

- JPEG with libjpeg's accurate integer DCT (``dct_method="INTEGER_ACCURATE"``, Pillow's ISLOW; the default fast
  DCT differs by up to ~15 grey levels); grey JPEGs become three equal channels.
- EXIF orientation (tag 0x0112 of IFD0, both byte orders, orientations 1-8) from a JPEG's APP1 ``Exif``
  segment (among the APPn segments that start the file, where the EXIF standard puts it), a PNG's ``eXIf``
  chunk (before the image data) or a WebP's ``EXIF`` chunk, applied with flips and ``rot90`` as Pillow's
  ``ImageOps.exif_transpose`` does.
- Alpha (RGBA / grey+alpha PNG, palette or colour-key ``tRNS`` transparency, WebP alpha) composited on white with
  Pillow's ``alpha_composite`` integer arithmetic, bit for bit. A GIF's transparent colour becomes white too:
  its palette entry is rewritten to white before decoding.
- 16-bit PNGs are scaled to 8 bits as ``rint(v / 257)``; palette images are expanded; only the first frame of an
  animated GIF is used.

Images that TensorFlow cannot decode the same way are refused, never decoded differently: the serving graph
fails with INVALID_ARGUMENT and the Beam job writes a dead letter, both with the reason from
:func:`image_problem_tf` (e.g. ``"CMYK JPEG is not supported: convert to RGB"`` -- libjpeg's CMYK conversion in
TensorFlow truncates where Pillow rounds, so about half the pixels would be one level off).

**Features**: ``tf.image.crop_and_resize`` (bilinear) of every box at ``crop_size``, the backbone's linear pixel
mapping ``x * scale + offset`` with float32 constants (:func:`pixel_mapping`), the CNN in near-equal chunks of at
most :data:`CNN_CHUNK` crops, global average pooling of a 4-D output (:func:`pooled_output`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from karpalign.vision.images import (DEFAULT_MAX_PIXELS, REFUSED_BMP_COMPRESSED, REFUSED_CMYK_JPEG,
                                     REFUSED_EMPTY, REFUSED_GIF_FRAME, REFUSED_TIFF, REFUSED_UNKNOWN,
                                     REFUSED_WEBP_ANIMATED, ImageDecodeError)

CNN_CHUNK = 32  # crops per backbone call: bounds memory, and is faster on CPU than one huge batch

# Format codes of _inspect (the branch index of the pixel decoder).
_UNKNOWN, _JPEG, _PNG, _GIF, _BMP, _WEBP, _TIFF = range(7)
_PAD = 16  # zero bytes appended to the file so header reads past its end stay in bounds


# ---- byte reading ---------------------------------------------------------------------------------------------


class _Bytes:
    """The encoded file as a uint8 vector with bounds-safe little/big-endian reads (int32 results)."""

    def __init__(self, data):
        raw = tf.io.decode_raw(data, tf.uint8)  # (n,)
        self.n = tf.shape(raw)[0]
        self.b = tf.concat([raw, tf.zeros([_PAD], tf.uint8)], axis=0)

    def u8(self, i):
        return tf.cast(tf.gather(self.b, tf.clip_by_value(i, 0, self.n + _PAD - 1)), tf.int32)

    def u16(self, i, little):
        a, b = self.u8(i), self.u8(i + 1)
        return tf.where(little, a + b * 256, a * 256 + b)

    def u32(self, i, little):
        """Values >= 2**31 come out negative; every caller treats a negative offset as invalid."""
        b0, b1, b2, b3 = (self.u8(i + k) for k in range(4))
        little_value = b0 + b1 * 256 + b2 * 65536 + tf.bitwise.left_shift(b3, 24)
        big_value = b3 + b2 * 256 + b1 * 65536 + tf.bitwise.left_shift(b0, 24)
        return tf.where(little, little_value, big_value)

    def equals(self, i, text: bytes):
        """Whether the file holds ``text`` at offset ``i`` (False past the end)."""
        got = self.u8(i + tf.range(len(text)))
        want = tf.constant(list(text), tf.int32)
        return tf.reduce_all(tf.equal(got, want)) & (i >= 0) & (i + len(text) <= self.n)


def _exif_orientation(r: _Bytes, start):
    """EXIF data at ``start`` (TIFF header, optionally behind "Exif\\0\\0"; -1: none) -> orientation 1..8."""
    start = tf.where(r.equals(start, b"Exif\x00\x00"), start + 6, start)
    order = r.u16(start, False)
    little = tf.equal(order, 0x4949)  # "II"
    valid = (start >= 0) & (little | tf.equal(order, 0x4D4D)) & tf.equal(r.u16(start + 2, little), 42)
    ifd = start + r.u32(start + 4, little)
    count = tf.minimum(r.u16(ifd, little), 1024)
    valid &= (ifd > start) & (count > 0) & (ifd + 2 + 12 * count <= r.n)

    def read():
        entries = ifd + 2 + 12 * tf.range(count)  # (count,) the 12-byte IFD entries
        tags, types = r.u16(entries, little), r.u16(entries + 2, little)
        values = tf.where(tf.equal(types, 3), r.u16(entries + 8, little), r.u32(entries + 8, little))  # SHORT/LONG
        hit = tf.equal(tags, 0x0112) & (tf.equal(types, 3) | tf.equal(types, 4))
        first = tf.argmax(tf.cast(hit, tf.int32), output_type=tf.int32)
        return tf.where(tf.reduce_any(hit), tf.gather(values, first), 1)

    value = tf.cond(valid, read, lambda: tf.constant(1))
    return tf.where((value >= 1) & (value <= 8), value, 1)


# ---- per-format headers -------------------------------------------------------------------------------------


def _jpeg_exif_start(r: _Bytes):
    """Offset of the APP1 "Exif" payload among the APPn/COM segments that open a JPEG, or -1."""

    def cond(pos, found, steps):
        marker = r.u8(pos + 1)
        is_app = ((marker >= 0xE0) & (marker <= 0xEF)) | tf.equal(marker, 0xFE)
        return (found < 0) & (pos + 4 <= r.n) & tf.equal(r.u8(pos), 0xFF) & is_app & (steps < 64)

    def body(pos, found, steps):
        length = r.u16(pos + 2, False)
        exif = tf.equal(r.u8(pos + 1), 0xE1) & (length >= 8) & r.equals(pos + 4, b"Exif\x00\x00")
        return pos + 2 + length, tf.where(exif, pos + 4, -1), steps + 1

    _, found, _ = tf.while_loop(cond, body, (tf.constant(2), tf.constant(-1), tf.constant(0)))
    return found


def _png_chunks(r: _Bytes):
    """Walks the chunks before IDAT -> (has tRNS, offset of the eXIf payload or -1)."""

    def cond(pos, trns, exif, steps):
        return (pos + 8 <= r.n) & ~r.equals(pos + 4, b"IDAT") & (steps < 1024)

    def body(pos, trns, exif, steps):
        length = r.u32(pos, False)
        trns |= r.equals(pos + 4, b"tRNS")
        exif = tf.where(r.equals(pos + 4, b"eXIf") & (exif < 0), pos + 8, exif)
        step = tf.where(length >= 0, 12 + length, r.n)  # a negative length ends the walk
        return pos + step, trns, exif, steps + 1

    _, trns, exif, _ = tf.while_loop(cond, body, (tf.constant(8), tf.constant(False), tf.constant(-1), tf.constant(0)))
    return trns, exif


def _webp_exif_start(r: _Bytes):
    """Offset of a (VP8X) WebP's EXIF chunk payload, or -1."""

    def cond(pos, found, steps):
        return (found < 0) & (pos + 8 <= r.n) & (steps < 1024)

    def body(pos, found, steps):
        size = r.u32(pos + 4, True)
        found = tf.where(r.equals(pos, b"EXIF"), pos + 8, -1)
        step = tf.where(size >= 0, 8 + size + size % 2, r.n)  # chunks are padded to even sizes
        return pos + step, found, steps + 1

    _, found, _ = tf.while_loop(cond, body, (tf.constant(12), tf.constant(-1), tf.constant(0)))
    return found


def _gif_first_frame(r: _Bytes):
    """-> (first frame covers the canvas, offset of its colour table's transparent entry or -1, offset of the
    flags byte of the graphic control extension that makes it transparent or -1)."""
    packed = r.u8(10)
    global_table = tf.equal(tf.bitwise.bitwise_and(packed, 0x80), 0x80)
    global_entries = tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(packed, 7))
    first_block = 13 + tf.where(global_table, 3 * global_entries, 0)

    def skip_sub_blocks(q):  # q: first sub-block size byte -> offset after the terminator
        q, _ = tf.while_loop(lambda q, s: (q < r.n) & (r.u8(q) > 0) & (s < 1 << 20),
                             lambda q, s: (q + r.u8(q) + 1, s + 1), (q, tf.constant(0)))
        return q + 1

    def cond(pos, descriptor, gce, steps):
        return (descriptor < 0) & (pos < r.n) & (steps < 1 << 16)

    def body(pos, descriptor, gce, steps):
        kind, label = r.u8(pos), r.u8(pos + 1)
        extension = tf.equal(kind, 0x21)
        gce = tf.where(extension & tf.equal(label, 0xF9), pos, gce)
        descriptor = tf.where(tf.equal(kind, 0x2C), pos, tf.where(extension, -1, r.n))  # other bytes: stop
        after = tf.cond(extension, lambda: skip_sub_blocks(pos + 2), lambda: pos)
        return after, descriptor, gce, steps + 1

    _, d, gce, _ = tf.while_loop(cond, body, (first_block, tf.constant(-1), tf.constant(-1), tf.constant(0)))
    found = (d >= 0) & (d < r.n)
    covers = (found & tf.equal(r.u16(d + 1, True), 0) & tf.equal(r.u16(d + 3, True), 0)
              & tf.equal(r.u16(d + 5, True), r.u16(6, True)) & tf.equal(r.u16(d + 7, True), r.u16(8, True)))
    transparent = (gce >= 0) & tf.equal(tf.bitwise.bitwise_and(r.u8(gce + 3), 1), 1)
    index = r.u8(gce + 6)
    local = tf.bitwise.bitwise_and(r.u8(d + 9), 0x80) > 0
    local_entries = tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(r.u8(d + 9), 7))
    table = tf.where(local, d + 10, tf.where(global_table, 13, -1))
    entries = tf.where(local, local_entries, global_entries)
    patch = transparent & (table >= 0) & (index < entries)
    return covers, tf.where(patch, table + 3 * index, -1), tf.where(patch, gce + 3, -1)


def _inspect(data):
    """Reads the header -> dict of format code, problem ("" when decodable), orientation, PNG/WebP alpha,
    PNG 16-bit, GIF transparency patch offsets. Only cheap header reads; no pixels are decoded."""
    r = _Bytes(data)
    starts = {
        _JPEG: r.equals(0, b"\xff\xd8\xff"),
        _PNG: r.equals(0, b"\x89PNG\r\n\x1a\n"),
        _GIF: r.equals(0, b"GIF87a") | r.equals(0, b"GIF89a"),
        _BMP: r.equals(0, b"BM"),
        _WEBP: r.equals(0, b"RIFF") & r.equals(8, b"WEBP"),
        _TIFF: r.equals(0, b"II*\x00") | r.equals(0, b"MM\x00*"),
    }
    fmt = tf.constant(_UNKNOWN)
    for code, match in starts.items():
        fmt = tf.where(match & tf.equal(fmt, _UNKNOWN), code, fmt)

    empty = {"problem": tf.constant(""), "orientation": tf.constant(1), "alpha": tf.constant(False),
             "deep": tf.constant(False),
             "gif_entry": tf.constant(-1), "gif_flags": tf.constant(-1)}

    def unknown():
        return {**empty, "problem": tf.where(tf.equal(r.n, 0), REFUSED_EMPTY, REFUSED_UNKNOWN)}

    def jpeg():
        components = tf.io.extract_jpeg_shape(data)[2]
        problem = tf.where(tf.equal(components, 4), REFUSED_CMYK_JPEG, "")
        return {**empty, "problem": problem, "orientation": _exif_orientation(r, _jpeg_exif_start(r))}

    def png():
        trns, exif = _png_chunks(r)
        colour_type = r.u8(25)
        alpha = trns | tf.equal(colour_type, 4) | tf.equal(colour_type, 6)
        return {**empty, "orientation": _exif_orientation(r, exif), "alpha": alpha, "deep": tf.equal(r.u8(24), 16)}

    def gif():
        covers, entry, flags = _gif_first_frame(r)
        return {**empty, "problem": tf.where(covers, "", REFUSED_GIF_FRAME), "gif_entry": entry, "gif_flags": flags}

    def bmp():
        bits, compression = r.u16(28, True), r.u32(30, True)
        problem = tf.where(~(tf.equal(bits, 24) | tf.equal(bits, 32)),
                           tf.strings.join(["BMP with ", tf.strings.as_string(bits),
                                            " bits per pixel is not supported: convert to PNG"]),
                           tf.where(tf.equal(compression, 0), "", REFUSED_BMP_COMPRESSED))
        return {**empty, "problem": problem}

    def webp():
        kind = tf.strings.substr(data, 12, 4)
        extended = tf.equal(kind, "VP8X")
        flags = r.u8(20)
        lossless_alpha = tf.equal(kind, "VP8L") & (tf.bitwise.bitwise_and(r.u8(24), 0x10) > 0)
        alpha = lossless_alpha | (extended & (tf.bitwise.bitwise_and(flags, 0x10) > 0))
        animated = extended & (tf.bitwise.bitwise_and(flags, 0x02) > 0)
        has_exif = extended & (tf.bitwise.bitwise_and(flags, 0x08) > 0)
        orientation = tf.cond(has_exif, lambda: _exif_orientation(r, _webp_exif_start(r)), lambda: tf.constant(1))
        return {**empty, "problem": tf.where(animated, REFUSED_WEBP_ANIMATED, ""), "orientation": orientation,
                "alpha": alpha}

    def tiff():
        return {**empty, "problem": tf.constant(REFUSED_TIFF)}

    branches = [unknown, jpeg, png, gif, bmp, webp, tiff]
    info = tf.switch_case(fmt, branches)
    return {"format": fmt, **info}


# ---- pixels -----------------------------------------------------------------------------------------------------


def composite_on_white(rgba):
    """uint8 (H, W, 4) -> uint8 (H, W, 3): alpha over white, Pillow's ``alpha_composite`` integer arithmetic
    (7 extra bits, rounded division by 255) -- bit-identical to ``Image.alpha_composite(white, img)``."""
    x = tf.cast(rgba, tf.int32)
    colour, alpha = x[..., :3], x[..., 3:]
    v = colour * alpha + 255 * (255 - alpha)  # (H, W, 3) 255 * the composite value
    t = 128 * (v + 128)
    t = tf.bitwise.right_shift(tf.bitwise.right_shift(t, 8) + t, 8)
    return tf.cast(tf.bitwise.right_shift(t, 7), tf.uint8)


def _sixteen_to_eight(pixels):
    """uint16 -> uint8 as rint(v / 257) (0..65535 onto 0..255; never a tie, so the rounding mode is moot)."""
    return tf.cast(tf.round(tf.cast(pixels, tf.float32) / 257.0), tf.uint8)


def orient(image, orientation):
    """Applies an EXIF orientation (1..8) to (H, W, C), as Pillow's ``ImageOps.exif_transpose``."""
    branches = [
        lambda: image,  # 1: as stored
        lambda: tf.image.flip_left_right(image),  # 2: mirrored
        lambda: tf.image.rot90(image, 2),  # 3: upside down
        lambda: tf.image.flip_up_down(image),  # 4
        lambda: tf.transpose(image, [1, 0, 2]),  # 5: transposed
        lambda: tf.image.rot90(image, 3),  # 6: rotate 90 clockwise to display
        lambda: tf.image.rot90(tf.transpose(image, [1, 0, 2]), 2),  # 7: transversed
        lambda: tf.image.rot90(image, 1),  # 8: rotate 90 counter-clockwise to display
    ]
    return tf.switch_case(tf.clip_by_value(orientation, 1, 8) - 1, branches)


def _single_byte(value):
    """int32 scalar 0..255 -> a one-byte string."""
    return tf.gather(tf.constant([bytes([i]) for i in range(256)]), value)


def _patch_gif(data, entry, flags):
    """The GIF bytes with the transparent palette entry made white and the transparency flag cleared."""

    def patched():
        r = _Bytes(data)
        white, flag_byte = tf.constant(b"\xff\xff\xff"), _single_byte(tf.bitwise.bitwise_and(r.u8(flags), 0xFE))
        entry_first = entry < flags  # a global colour table precedes the extension; a local one follows it
        first, second = tf.minimum(entry, flags), tf.maximum(entry, flags)
        first_new, first_len = tf.where(entry_first, white, flag_byte), tf.where(entry_first, 3, 1)
        second_new, second_len = tf.where(entry_first, flag_byte, white), tf.where(entry_first, 1, 3)
        return tf.strings.join([
            tf.strings.substr(data, 0, first), first_new,
            tf.strings.substr(data, first + first_len, second - first - first_len), second_new,
            tf.strings.substr(data, second + second_len, r.n - second - second_len)])

    return tf.cond((entry >= 0) & (flags >= 0), patched, lambda: data)


def _decode_pixels(data, info):
    """Pixels of a decodable image (``info["problem"] == ""``) -> uint8 (H, W, 3), oriented, alpha on white."""

    def jpeg():
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

    def png():
        def decode(channels, deep):
            def fn():
                if deep:
                    pixels = _sixteen_to_eight(tf.io.decode_png(data, channels=channels, dtype=tf.uint16))
                else:
                    pixels = tf.io.decode_png(data, channels=channels)
                return composite_on_white(pixels) if channels == 4 else pixels
            return fn

        alpha, deep = info["alpha"], info["deep"]
        return tf.cond(alpha, lambda: tf.cond(deep, decode(4, True), decode(4, False)),
                       lambda: tf.cond(deep, decode(3, True), decode(3, False)))

    def gif():
        patched = _patch_gif(data, info["gif_entry"], info["gif_flags"])
        frame = tf.io.decode_image(patched, channels=3, expand_animations=False)
        return tf.ensure_shape(frame, [None, None, 3])

    def bmp():
        return tf.io.decode_bmp(data, channels=3)

    def webp():
        def rgba():
            return composite_on_white(tf.ensure_shape(
                tf.io.decode_image(data, channels=4, expand_animations=False), [None, None, 4]))

        def rgb():
            return tf.ensure_shape(tf.io.decode_image(data, channels=3, expand_animations=False), [None, None, 3])

        return tf.cond(info["alpha"], rgba, rgb)

    def refused():
        return tf.zeros([0, 0, 3], tf.uint8)

    pixels = tf.switch_case(info["format"], [refused, jpeg, png, gif, bmp, webp, refused])
    return tf.ensure_shape(orient(pixels, info["orientation"]), [None, None, 3])


def image_problem_tf(data):
    """Encoded image (scalar string) -> why :func:`decode_image_tf` refuses it, or "" when it decodes it."""
    return _inspect(data)["problem"]


def decode_image_tf(data):
    """Encoded image (scalar string) -> uint8 (H, W, 3): EXIF orientation applied, alpha composited on white,
    first frame, RGB; pixel-identical to :func:`karpalign.vision.images.decode_image` (Pillow).

    Raises ``tf.errors.InvalidArgumentError`` (INVALID_ARGUMENT in TF Serving) for an image it refuses, with
    the reason of :func:`image_problem_tf` as the message (e.g. "CMYK JPEG is not supported: convert to RGB"),
    and for corrupt or truncated data (the decoder's own message). Core TensorFlow ops only.
    """
    info = _inspect(data)
    refused = tf.debugging.Assert(tf.equal(info["problem"], ""), [info["problem"]], name="refused_image")
    with tf.control_dependencies([refused]):
        return _decode_pixels(tf.identity(data), info)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _decode_or_refuse(data):
    """Eager entry point (one traced graph): -> (problem, pixels); pixels (0, 0, 3) when refused."""
    info = _inspect(data)
    pixels = tf.cond(tf.equal(info["problem"], ""), lambda: _decode_pixels(data, info),
                     lambda: tf.zeros([0, 0, 3], tf.uint8))
    return info["problem"], pixels


def decode_image_array(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "") -> np.ndarray:
    """Encoded bytes -> uint8 numpy (H, W, 3) through :func:`decode_image_tf`, for the extraction job.

    Pillow checks the input first (:func:`karpalign.vision.images.check_image_bytes`: zero bytes, unrecognised
    or unsupported format, decompression bombs from the header). Raises
    :class:`karpalign.vision.images.ImageDecodeError`: stage "bomb" over ``max_pixels``, else "decode" with the
    reason the serving graph gives for a refused image, or Pillow's diagnosis of a corrupt or truncated file.
    """
    from karpalign.vision.images import check_image_bytes, diagnose

    data = check_image_bytes(data, max_pixels=max_pixels, source=source)
    try:
        problem, pixels = _decode_or_refuse(tf.constant(data))
    except tf.errors.OpError as exc:  # the decoder failed: ask Pillow why (truncated, corrupt)
        raise ImageDecodeError(source, diagnose(data, exc.message)) from None
    problem = problem.numpy().decode("utf-8")
    if problem:
        raise ImageDecodeError(source, problem)
    return np.ascontiguousarray(pixels.numpy())


# ---- crops, pixel mapping, CNN ---------------------------------------------------------------------------------


def crop_regions_tf(image, boxes, crop_size: int):
    """uint8 (or any real) image (H, W, 3), boxes (R, 4) normalised -> float32 (R, S, S, 3) in 0..255.

    ONE batched ``tf.image.crop_and_resize`` (bilinear; it reads uint8 directly, as exact as a float copy).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    return tf.image.crop_and_resize(
        tf.convert_to_tensor(image)[None],  # (1, H, W, 3)
        boxes,  # (R, 4)
        tf.zeros([tf.shape(boxes)[0]], tf.int32),  # (R,) every box is in image 0
        crop_size=(int(crop_size), int(crop_size)),
        method="bilinear")  # (R, S, S, 3)


def pixel_mapping(value_range) -> tuple[np.float32, np.float32]:
    """(lo, hi) -> float32 (scale, offset) that map pixel values 0..255 linearly onto lo..hi."""
    lo, hi = value_range
    return np.float32((hi - lo) / 255.0), np.float32(lo)


def map_pixels(x, scale, offset):
    """``x * scale + offset`` in float32 (numpy arrays or tensors alike; the same two float32 operations)."""
    if isinstance(x, (tf.Tensor, tf.Variable)):
        return tf.cast(x, tf.float32) * np.float32(scale) + np.float32(offset)
    return np.asarray(x, np.float32) * np.float32(scale) + np.float32(offset)


def pick_output(outputs: dict, name: str):
    """The feature tensor of a model that returns a dict."""
    for key in ("default", "feature_vector", "features", "pooled_output"):
        if key in outputs:
            return outputs[key]
    if len(outputs) == 1:
        return next(iter(outputs.values()))
    raise ValueError(f"backbone {name}: model returns several outputs {sorted(outputs)}; cannot tell "
                     "which is the feature vector (name it 'default' or 'feature_vector')")


def pooled_output(out, name: str):
    """A network's output -> float32 (N, D): picks the feature tensor of a dict, global-average-pools 4-D."""
    if isinstance(out, dict):
        out = pick_output(out, name)
    out = tf.convert_to_tensor(out)
    if out.shape.rank == 4:
        out = tf.reduce_mean(out, axis=[1, 2])  # (N, h, w, D) -> (N, D)
    if out.shape.rank != 2:
        raise ValueError(f"backbone {name}: model output has shape {out.shape}; need (N, D) or 4-D")
    return tf.cast(out, tf.float32)


def chunk_bounds(n, chunk: int = CNN_CHUNK):
    """int32 (C + 1,) bounds of C = max(1, ceil(n / chunk)) near-equal chunks: 70 -> 0, 23, 47, 70."""
    n = tf.convert_to_tensor(n, tf.int32)
    count = tf.maximum((n + chunk - 1) // chunk, 1)
    i = tf.range(count + 1)
    return (2 * i * n + count) // (2 * count)  # round(i * n / count), ties up; integers only


def cnn_features_tf(network_fn, x, name: str, feature_dim: int | None = None, chunk: int = CNN_CHUNK):
    """Network input (N, h, w, 3) -> float32 (N, D): the network on near-equal chunks of <= ``chunk`` images
    (:func:`chunk_bounds`; N = 5 is one call of 5, N = 70 calls of 23/24/23), each pooled by
    :func:`pooled_output`. ``network_fn`` maps a float batch to (N, D), (N, h, w, D) or a dict."""
    x = tf.convert_to_tensor(x, tf.float32)
    bounds = chunk_bounds(tf.shape(x)[0], chunk)
    count = tf.shape(bounds)[0] - 1
    parts = tf.TensorArray(tf.float32, size=count, infer_shape=False, element_shape=tf.TensorShape([None, feature_dim]))

    def body(i, parts):
        return i + 1, parts.write(i, pooled_output(network_fn(x[bounds[i]:bounds[i + 1]]), name))

    _, parts = tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), parts), parallel_iterations=1)
    return tf.ensure_shape(parts.concat(), [None, feature_dim])  # (N, D)


def region_features_tf(images, boxes, crop_size: int, network_fn, pixel_scale, pixel_offset, feature_dim: int,
                       name: str):
    """Encoded images (B,) string, boxes (R, 4) normalised -> float32 region features (B, R, D).

    Every image is decoded (:func:`decode_image_tf`) and cropped at every box; the B * R crops go through the
    pixel mapping and the CNN together (:func:`cnn_features_tf`).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    n_boxes, size = int(boxes.shape[0]), int(crop_size)

    def crop_one(data):
        return crop_regions_tf(decode_image_tf(data), boxes, size)  # (R, S, S, 3)

    # Images differ in size, so decode and crop one at a time; the crops all have one size.
    crops = tf.map_fn(crop_one, images, fn_output_signature=tf.TensorSpec([n_boxes, size, size, 3], tf.float32))
    x = map_pixels(tf.reshape(crops, [-1, size, size, 3]), pixel_scale, pixel_offset)  # (B*R, S, S, 3)
    features = cnn_features_tf(network_fn, x, name, feature_dim)  # (B*R, D)
    return tf.reshape(features, [-1, n_boxes, feature_dim])  # (B, R, D)


def image_region_features_tf(images, boxes, region_mask, crop_size: int, network_fn, pixel_scale, pixel_offset,
                             feature_dim: int, name: str):
    """Encoded images (B,) string, per-image boxes (B, R, 4) normalised and their mask (B, R) -> float32 region
    features (B, R, D), zero where the mask is 0.

    For proposers that run in the graph and give every image its own boxes (a learned proposer, a detector).
    Every image is decoded (:func:`decode_image_tf`) and cropped at its boxes; only the crops of real regions
    go through the pixel mapping and the CNN (:func:`cnn_features_tf`), so padding costs no network time.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    n_boxes, size = int(boxes.shape[1]), int(crop_size)

    def crop_one(args):
        data, image_boxes = args
        return crop_regions_tf(decode_image_tf(data), image_boxes, size)  # (R, S, S, 3)

    crops = tf.map_fn(crop_one, (images, boxes),
                      fn_output_signature=tf.TensorSpec([n_boxes, size, size, 3], tf.float32))  # (B, R, S, S, 3)
    flat = tf.reshape(crops, [-1, size, size, 3])  # (B*R, S, S, 3)
    real = tf.where(tf.reshape(region_mask, [-1]) > 0)[:, 0]  # (N,) indices of real regions
    x = map_pixels(tf.gather(flat, real), pixel_scale, pixel_offset)  # (N, S, S, 3)
    features = cnn_features_tf(network_fn, x, name, feature_dim)  # (N, D)
    total = tf.shape(flat, out_type=tf.int64)[0]
    out = tf.scatter_nd(real[:, None], features, tf.stack([total, tf.cast(feature_dim, tf.int64)]))  # (B*R, D)
    return tf.reshape(out, [-1, n_boxes, feature_dim])  # (B, R, D)
