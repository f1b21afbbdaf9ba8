"""Serving karpalign SavedModels over TF Serving's gRPC protocol.

`server` is a development server that speaks the same PredictionService / ModelService protocol as
TensorFlow Serving (so the same client works against both), `client` is a small retrying client with
clear errors, and `warmup` writes the `assets.extra/tf_serving_warmup_requests` file TF Serving replays
when it loads a model. The real deployment files (docker command, model and batching configs) live in
the top-level `export/` folder.
"""
