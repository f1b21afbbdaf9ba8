"""A tiny captioning SavedModel with the real export's `serving_default` contract.

It needs no training and loads in about a second, so the serving stack (development server, client,
warmup, TF Serving deployment, load benchmark) can be exercised without a trained karpalign model.
Its "caption" describes the decoded image: "image 32x24 v1" (width x height, export version).

    serving_default: images string (B,) -> captions string (B, 1), scores float32 (B, 1),
                     token_ids int32 (B, 1, 3) = [START, width, height]
    embed_images:    images string (B,) -> embeddings float32 (B, 2) = (width, height) / max side

Images are decoded by :func:`karpalign.vision.region_features.decode_image_tf`, the decoder of the real export
and the extraction job (EXIF orientation, alpha on white, JPEG with the accurate DCT), so the toy exercises the
same decode ops as the real model and refuses the same images (INVALID_ARGUMENT naming the format).
"""

from __future__ import annotations

import os

import tensorflow as tf

from karpalign.data.text import START_ID
from karpalign.export.saved_model import save_for_serving
from karpalign.vision.region_features import decode_image_tf

_IMAGES = tf.TensorSpec([None], tf.string, name="images")


class ToyCaptioner(tf.Module):
    """Decodes each image and reports its size; `version` is baked into the captions."""

    def __init__(self, version: int):
        super().__init__(name="toy_captioner")
        self.version = int(version)

    def _sizes(self, images):
        def one(image_bytes):
            pixels = decode_image_tf(image_bytes)  # (H, W, 3) uint8
            shape = tf.shape(pixels)
            return tf.stack([shape[1], shape[0]])  # (2,) width, height

        return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec([2], tf.int32))  # (B, 2)

    @tf.function(input_signature=[_IMAGES])
    def caption(self, images):
        sizes = self._sizes(images)  # (B, 2)
        widths, heights = sizes[:, 0], sizes[:, 1]  # (B,)
        captions = tf.strings.join(["image ", tf.strings.as_string(widths), "x",
                                    tf.strings.as_string(heights), f" v{self.version}"])  # (B,)
        area = tf.cast(widths * heights, tf.float32)  # (B,)
        scores = -tf.math.log1p(area)  # (B,)
        token_ids = tf.stack([tf.fill(tf.shape(widths), START_ID), widths, heights], axis=-1)  # (B, 3)
        return {"captions": captions[:, None],  # (B, 1)
                "scores": scores[:, None],  # (B, 1)
                "token_ids": token_ids[:, None, :]}  # (B, 1, 3)

    @tf.function(input_signature=[_IMAGES])
    def embed_images(self, images):
        sizes = tf.cast(self._sizes(images), tf.float32)  # (B, 2)
        return {"embeddings": sizes / tf.reduce_max(sizes, axis=-1, keepdims=True)}  # (B, 2)


def export_toy_model(base_dir: str, version: int = 1) -> str:
    """Writes the toy model to `<base_dir>/<version>/` (TF Serving layout) and returns that folder."""
    export_dir = os.path.join(base_dir, str(int(version)))
    if os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        raise FileExistsError(f"{export_dir}: a SavedModel already exists there")
    module = ToyCaptioner(version)
    save_for_serving(module, export_dir, {"serving_default": module.caption, "embed_images": module.embed_images})
    return export_dir
