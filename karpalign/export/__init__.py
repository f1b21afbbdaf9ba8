"""SavedModel export: the serving module (named signatures, in-graph tokenizer and beam search) and its writer.

- ``export_module``  ``ExportModule`` (tf.Module): serving_default, caption_features, caption_examples,
                     embed_images, embed_sentences, score, align
- ``saved_model``    ``build_export_module(align_dir, caption_dir, ...)``,
                     ``write_saved_model(module, base, ...)``, ``export(...)``, ``next_version(model_dir)``
"""
