"""Vision: image decoding, CNN backbones (built-in EfficientNet-Lite0, Keras files, TF Hub), region proposers.

Modules (imported on demand, so ``import karpalign.vision.images`` does not pull in TensorFlow):

- ``images``           ``decode_image(bytes) -> uint8 (H, W, 3)``, ``ImageDecodeError``
- ``torch_pickle``     ``load_torch_state_dict(path)``: legacy torch ``.pth`` -> numpy, without torch
- ``efficientnet_lite`` ``efficientnet_lite0(...)`` Keras model with converted ImageNet weights
- ``backbones``        ``Backbone``, ``get_backbone(spec)``
- ``proposers``        ``BoxesProposer``, ``GridProposer``, ``DetectorProposer``, ``crop_regions``,
                       ``region_features``
"""
