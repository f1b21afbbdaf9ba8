"""Attention maps of a region-attention generator: for a few test images, which region each generated word
attended to.

:func:`attention_maps` decodes the first images of a split with the run's own beam search
(:class:`karpalign.decoding.generate.CaptionGenerator`, the decode path of evaluation and export) and then runs the
generator teacher-forced on its own caption (:meth:`UpDownDecoder.attention`): that replays the decoding steps
exactly, and row t of the weights is the distribution over regions that produced word t. The report draws each
image with its regions and the words coloured by their most-attended region, and a table of the weights.

:func:`cached_attention_maps` keeps the result as ``eval-attention-<split>.json`` in the caption run (rebuilt when
the model file is newer), so rebuilding the report does not decode again.
"""

from __future__ import annotations

import json
import os

import numpy as np

from karpalign.data.text import END_ID, START_ID, UNK


def attention_maps(generator, vocab, records_dir: str, split: str = "test", n: int = 4, *, beam_size: int = 1,
                   max_length: int = 16) -> list[dict]:
    """For the first ``n`` images of ``split``: ``image_id``, ``path``, ``boxes`` (the valid regions, region 0
    the full image), ``words`` (the generated caption), ``attention`` (one list of region weights per word) and
    ``attended`` (each word's most-attended region)."""
    import tensorflow as tf

    from karpalign.data import pipeline as P
    from karpalign.decoding.generate import CaptionGenerator
    from karpalign.models.generators import reads_regions

    if not reads_regions(generator) or not hasattr(generator, "attention"):
        raise ValueError(f"{type(generator).__name__} does not attend over regions: attention maps need a "
                         "`model.generator: updown` caption run")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    images = []
    for batch in P.image_dataset(records_dir, split, batch_size=min(n, 32), max_images=n):
        for i in range(len(batch["image_id"])):
            keys = ("image_id", "path", "boxes", "region_features", "region_mask")
            images.append({k: batch[k][i].numpy() for k in keys})
    if not images:
        raise ValueError(f"split {split!r} in {records_dir} has no images")
    captioner = CaptionGenerator(generator, vocab, beam_size=beam_size, max_length=max_length, top_k=1)
    feats = np.stack([im["region_features"] for im in images])  # (N, R, D)
    mask = np.stack([im["region_mask"] for im in images])  # (N, R)
    result = captioner.decode_ids(feats, mask)
    out = []
    for im, ids, length, m in zip(images, result.ids[:, 0], result.lengths[:, 0], mask):
        words = [int(t) for t in ids[:int(length)]]  # the generated words, END included when it ended
        if words and words[-1] == END_ID:
            words = words[:-1]
        valid = int(m.sum())
        if words:
            tokens = tf.constant([[START_ID] + words[:-1]], tf.int32)  # (1, T): the inputs that produced the words
            _, alpha = generator.attention({"region_features": im["region_features"][None],
                                            "region_mask": m[None], "tokens": tokens}, training=False)
            weights = alpha.numpy()[0, :, :valid]  # (T, R_valid)
        else:
            weights = np.zeros((0, valid), np.float32)
        out.append({"image_id": im["image_id"].decode(), "path": im["path"].decode(),
                    "boxes": im["boxes"][:valid].tolist(),
                    "words": [vocab.words[t] if 0 <= t < len(vocab) else UNK for t in words],
                    "attention": np.round(weights, 4).tolist(),
                    "attended": [int(a) for a in np.argmax(weights, axis=1)] if len(weights) else []})
    return out


def attention_grounding(samples: list[dict], scene, iou_threshold: float = 0.5) -> dict:
    """How often a colour or shape word of a true colour–shape mention attended most to its object.

    ``samples`` are :func:`attention_maps` entries, ``scene`` the dataset's objects and boxes
    (:func:`karpalign.evaluation.grounding.read_scene_objects`). Each word's most-attended region is matched to
    the image's object boxes (IoU >= ``iou_threshold``); the word is *on its object* when that object has the
    mention's colour and shape. Returns ``words``, ``on_object`` and ``on_whole_image`` (shares of ``words``),
    ``images``.
    """
    from karpalign.evaluation.grounding import default_lexicon, parse_mentions
    from karpalign.vision.boxes import box_iou

    lexicon = default_lexicon()
    words = on_object = whole = images = 0
    for s in samples:
        objects, boxes = scene.objects.get(s["image_id"]), scene.boxes.get(s["image_id"])
        if objects is None or boxes is None or not s["words"]:
            continue
        images += 1
        pairs = {(o["colour"], o["shape"]) for o in objects}
        iou = box_iou(s["boxes"], boxes)  # (R, objects)
        kinds = {}
        for kind, _, start, end in lexicon.units(s["words"]):
            for t in range(start, end):
                kinds[t] = kind
        for m in parse_mentions(" ".join(s["words"]), lexicon):
            if m.pair not in pairs:
                continue
            for t in range(m.start, m.end):
                if kinds.get(t) not in ("colour", "shape"):
                    continue
                words += 1
                region = s["attended"][t]
                if region == 0:
                    whole += 1
                    continue
                best = int(np.argmax(iou[region]))
                obj = objects[best]
                on_object += iou[region, best] >= iou_threshold and (obj["colour"], obj["shape"]) == m.pair
    return {"words": words, "on_object": on_object / words if words else None,
            "on_whole_image": whole / words if words else None, "images": images}


def cached_attention_maps(caption_dir: str, records_dir: str, split: str = "test", n: int = 100, *,
                          beam_size: int = 1, max_length: int = 16) -> dict:
    """:func:`attention_maps` of a caption run, cached in ``<run>/eval-attention-<split>.json`` (recomputed when
    missing, older than the model or made with other settings). Returns ``{"settings", "samples", "grounding"}``:
    ``grounding`` is :func:`attention_grounding` against the records' dataset when it lists objects and boxes
    (the scenes), else None."""
    from karpalign.data import features as F
    from karpalign.evaluation.grounding import scene_objects_of_records
    from karpalign.training.run_dir import RunDir

    run = RunDir(caption_dir, "caption")
    path = run.eval_path("attention", split)
    settings = {"split": split, "n": n, "beam_size": beam_size, "max_length": max_length,
                "records_dir": os.path.abspath(records_dir)}
    if os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(run.check().model_path()):
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("settings") == settings:
            return cached
    generator, vocab = run.load_generator()
    samples = attention_maps(generator, vocab, records_dir, split, n, beam_size=beam_size, max_length=max_length)
    scene, _ = scene_objects_of_records(F.read_manifest(records_dir))
    grounding = attention_grounding(samples, scene) if scene is not None and scene.boxes else None
    data = {"settings": settings, "samples": samples, "grounding": grounding}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    return data
