"""Vision: image decoding, CNN backbones (built-in EfficientNet-Lite0, Keras files, TF Hub), region proposers.

Modules (imported on demand, so ``import karpalign.vision.images`` does not pull in TensorFlow):

- ``images``           Pillow input checks (``check_image_bytes``), the Pillow reference ``decode_image(bytes)``,
                       ``ImageDecodeError``
- ``region_features``  the one region-feature path of the extraction job and the serving graph:
                       ``decode_image_tf`` (core TF ops), ``crop_regions_tf``, ``map_pixels``, ``cnn_features_tf``,
                       ``region_features_tf``; ``decode_image_array`` for numpy callers
- ``torch_pickle``     ``load_torch_state_dict(path)``: legacy torch ``.pth`` -> numpy, without torch
- ``efficientnet_lite`` ``efficientnet_lite0(...)`` Keras model with converted ImageNet weights
- ``backbones``        ``Backbone``, ``get_backbone(spec)``, ``get_feature_map_backbone(spec, stride)``
- ``boxes``            numpy box geometry: ``box_iou``, ``region_matches``, greedy ``nms``
- ``proposers``        ``BoxesProposer``, ``GridProposer``, ``SegmentsProposer``, ``DetectorProposer``,
                       ``LearnedRegionProposer``, ``get_proposer``, ``in_graph_proposer``, ``crop_regions``,
                       ``region_features``
- ``learned_proposer`` ``LearnedProposer`` (Keras): anchor-free objectness + box head over a frozen feature map,
                       its targets, loss and TF-op post-processing
"""
