"""Aligns every sentence of a split to its image's regions and writes region–snippet training data.

Streams image batches from the records: embed regions and words with the trained alignment model, unary
scores v_i·s_t for each image with its own sentences, Viterbi with smoothing β (in TF ops), snippets. Outputs:

- ``snippets-{split}.jsonl``: one line per sentence (image id, tokens, assignment, snippets with region boxes);
- ``{split}-*.tfrecord.gz`` in the one feature schema, one example per snippet: the region's *CNN* features
  as a single region, the snippet as the single sentence (what ``karpalign-train --task caption --on regions``
  reads), plus ``vocab.txt`` and ``manifest.json``;
- alignment accuracy against ground-truth phrase links when the records come with them (synthetic scenes).

:func:`write_alignment_pictures` draws the first sentence of the first N images of a split onto the image
(read from the record's ``image/path``) as PNGs in the style of the paper's figures, plus an ``index.html``
showing them; images whose file is missing or unreadable are skipped and counted.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import weakref

import numpy as np
import tensorflow as tf

from karpalign.alignment.accuracy import AlignmentAccuracy
from karpalign.alignment.mrf import snippets as make_snippets
from karpalign.alignment.mrf import tf_viterbi_align
from karpalign.alignment.pictures import draw_alignment, write_alignment_html
from karpalign.data import features as F
from karpalign.data import pipeline as P
from karpalign.data.records import Record


PICTURES_DIR = "pictures"
PICTURES_PAGE = "index.html"


def _assigner(model, beta: float):
    """(features (B, R, D), region mask (B, R), image of each sentence (N,), ids (N, T), word mask (N, T)) ->
    (Viterbi region per word (N, T), unary scores (N, T, R)) for each sentence's own image, with ``beta``.

    Batch sizes vary (last batch, sentences per image) and every split, beta of the search and the pictures
    ask for an assigner, so the graph is one ``tf.function`` per model (and input dtypes / D) with ``None``
    batch dims and beta as an input: traced once per command, never per batch, split or beta.
    """
    beta = tf.constant(beta, tf.float32)

    def assign(feats, rmask, which, ids, wmask):
        return _assign_function(model, feats, rmask, which, ids, wmask)(feats, rmask, which, ids, wmask, beta)

    return assign


# model -> {input signature: tf.function}; the functions hold the model weakly, so an entry goes with its model.
_ASSIGN_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _assign_function(model, feats, rmask, which, ids, wmask):
    signature = (tf.TensorSpec([None, None, feats.shape[-1]], feats.dtype, name="region_features"),
                 tf.TensorSpec([None, None], rmask.dtype, name="region_mask"),
                 tf.TensorSpec([None], which.dtype, name="image_of_sentence"),
                 tf.TensorSpec([None, None], ids.dtype, name="token_ids"),
                 tf.TensorSpec([None, None], wmask.dtype, name="word_mask"),
                 tf.TensorSpec([], tf.float32, name="beta"))
    functions = _ASSIGN_FUNCTIONS.setdefault(model, {})
    if signature not in functions:
        model_ref = weakref.ref(model)

        def viterbi_assign(feats, rmask, which, ids, wmask, beta):
            m = model_ref()
            v = m.embed_images(feats, rmask, training=False)  # (B, R, H)
            s = m.embed_sentences(ids, wmask, training=False)  # (N, T, H)
            v_own = tf.gather(v, which)  # (N, R, H)
            unary = tf.einsum("nth,nrh->ntr", s, v_own)  # (N, T, R)
            return tf_viterbi_align(unary, wmask > 0, tf.gather(rmask, which) > 0, beta), unary

        functions[signature] = tf.function(viterbi_assign, input_signature=signature)
    return functions[signature]


def align_split(model, records_dir: str, split: str, out_dir: str, *, beta: float, max_words: int,
                ground_truth: dict[str, Record] | None = None, min_snippet_words: int = 1,
                skip_full_image: bool = True, batch_size: int = 64, max_images: int | None = None,
                progress: bool = True) -> dict:
    """Aligns one split; returns counts and (with ``ground_truth``) alignment accuracy."""
    table = P.vocab_table(records_dir)
    os.makedirs(out_dir, exist_ok=True)

    assign = _assigner(model, beta)
    acc = AlignmentAccuracy()
    examples, n_images, n_sent, n_snip = [], 0, 0, 0
    json_path = os.path.join(out_dir, f"snippets-{split}.jsonl")
    with open(json_path + ".tmp", "w", encoding="utf-8") as jf:
        for batch in P.image_dataset(records_dir, split, batch_size=batch_size, max_images=max_images):
            tokens = batch["tokens"]
            which = tokens.value_rowids()
            ids, wmask = P.token_ids(tokens.values, table, max_words)
            assignment, _ = assign(batch["region_features"], batch["region_mask"], which, ids, wmask)
            assignment = assignment.numpy()
            feats, boxes = batch["region_features"].numpy(), batch["boxes"].numpy()
            image_ids = [x.decode() for x in batch["image_id"].numpy()]
            sent_tokens = [[t.decode() for t in s][:max_words] for s in tokens.values.to_list()]
            per_image_sentence = np.zeros(len(image_ids), int)
            for n, (img, toks) in enumerate(zip(which.numpy(), sent_tokens)):
                a = assignment[n, :len(toks)]
                k = int(per_image_sentence[img])
                per_image_sentence[img] += 1
                snips = make_snippets(a, toks, min_length=min_snippet_words)
                kept = [sn for sn in snips if not (skip_full_image and sn.region == 0)]
                jf.write(json.dumps({"image_id": image_ids[img], "sentence": k, "tokens": toks,
                                     "assignment": a.tolist(),
                                     "snippets": [{"region": int(sn.region), "start": int(sn.start), "end": int(sn.end),
                                                   "text": sn.text, "box": boxes[img, sn.region].tolist()}
                                                  for sn in kept]}) + "\n")
                for j, sn in enumerate(kept):
                    examples.append(F.encode_example(
                        f"{image_ids[img]}/s{k}/r{sn.region}/{j}", split, batch["path"][img].numpy().decode(),
                        feats[img, sn.region][None], boxes[img, sn.region][None],
                        [(sn.text, toks[sn.start:sn.end])]))
                n_snip += len(kept)
                rec = ground_truth.get(image_ids[img]) if ground_truth else None
                if rec is not None and rec.boxes and k < len(rec.sentences):
                    phrases = [{"start": p.start, "end": p.end, "boxes": p.boxes} for p in rec.sentences[k].phrases
                               if p.end <= len(toks)]
                    nreg = int(batch["region_mask"][img].numpy().sum())
                    acc.update(a, phrases, boxes[img, :nreg], np.asarray(rec.boxes),
                               where=f"image {image_ids[img]} sentence {k}")
            n_images += len(image_ids)
            n_sent += len(sent_tokens)
            if progress:
                print(f"align {split}: {n_images} images, {n_sent} sentences, {n_snip} snippets",
                      file=sys.stderr)
    os.replace(json_path + ".tmp", json_path)
    F.write_shards(examples, out_dir, split, num_shards=max(1, min(8, len(examples) // 5000 + 1)))
    result = {"split": split, "images": n_images, "sentences": n_sent, "snippets": n_snip, "beta": beta}
    if ground_truth:
        result["accuracy"] = acc.result()
    return result


def write_region_manifest(records_dir: str, out_dir: str, counts: dict, extra: dict) -> None:
    manifest = F.read_manifest(records_dir)
    shutil.copy(os.path.join(records_dir, F.VOCAB), os.path.join(out_dir, F.VOCAB))
    F.Manifest(feature_dim=manifest.feature_dim, num_regions=1, counts=counts, proposer=manifest.proposer,
               cnn=manifest.cnn, vocab_size=manifest.vocab_size, source_records=os.path.abspath(records_dir),
               extra=dict(extra)).write(out_dir)


def _read_picture_image(path: str):
    """The RGB pixels (H, W, 3) uint8 of a record's image file, or (None, why) when it cannot be used.

    Paths may be local or any filesystem TensorFlow knows (gs://...). Missing and unreadable files are not
    errors here: records made without images (toy records, neuraltalk features) have no files to draw on.
    """
    from PIL import Image, UnidentifiedImageError

    if not path:
        return None, "missing", "the record has no image/path"
    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        return None, "missing", f"{path}: no such file"
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB")), None, None
    except (OSError, UnidentifiedImageError, tf.errors.OpError) as e:
        return None, "unreadable", f"{path}: {e}"


def _picture_name(n: int, image_id: str) -> str:
    """File name of the n-th picture: the index keeps the page order, the id says which image it is."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._")[:60] or "image"
    return f"{n:04d}_{safe}_s0.png"


def write_alignment_pictures(model, records_dir: str, split: str, out_dir: str, *, num_images: int, beta: float,
                             max_words: int, batch_size: int = 16) -> dict:
    """Draws the alignment of the first sentence of each of the first ``num_images`` images of ``split``.

    The words are aligned exactly as :func:`align_split` aligns them (same model, Viterbi with ``beta``,
    sentences cut to ``max_words``); each picture shows the image from the record's ``image/path`` with the
    boxes of the regions that received words, labelled with their snippets, and the sentence coloured by
    region (:func:`karpalign.alignment.pictures.draw_alignment`). Writes ``<out_dir>/pictures/NNNN_<id>_s0.png``
    and, when at least one picture was drawn, ``<out_dir>/pictures/index.html`` showing them.

    Images whose file is missing or unreadable, and images without sentences, are skipped and counted.

    Returns:
      dict with ``split``, ``requested``, ``images`` (looked at), ``pictures`` (drawn), ``missing_images``,
      ``unreadable_images``, ``no_sentence``, ``skipped_examples`` (up to 3 "path: reason" strings),
      ``dir`` and ``html`` (None when nothing was drawn).
    """
    if num_images < 1:
        raise ValueError(f"write_alignment_pictures: num_images must be at least 1, got {num_images}")
    table = P.vocab_table(records_dir)
    assign = _assigner(model, beta)
    pictures_dir = os.path.join(out_dir, PICTURES_DIR)
    os.makedirs(pictures_dir, exist_ok=True)

    items, skipped = [], []
    counts = {"missing": 0, "unreadable": 0, "no_sentence": 0}
    n_images = 0
    batches = P.image_dataset(records_dir, split, batch_size=min(batch_size, num_images), max_images=num_images)
    for batch in batches:
        take = int(batch["region_features"].shape[0])
        tokens = batch["tokens"][:take]  # (B, S, T) ragged
        has_sentence = (tokens.row_lengths() > 0).numpy()  # (B,)
        which = tf.where(has_sentence)[:, 0]  # (N,) images that have a first sentence
        first = tf.gather(tokens.values, tf.gather(tokens.row_starts(), which))  # (N, T) ragged
        assignment = np.zeros((0, max_words), np.int32)
        if len(which):
            ids, wmask = P.token_ids(first, table, max_words)
            assignment, _ = assign(batch["region_features"][:take], batch["region_mask"][:take],
                                   which, ids, wmask)
            assignment = assignment.numpy()  # (N, T)
        first_tokens = [[t.decode() for t in s][:max_words] for s in first.to_list()]
        sentence_of = {int(img): n for n, img in enumerate(which.numpy())}
        raws = batch["sentences_raw"][:take]
        for img in range(take):
            image_id = batch["image_id"][img].numpy().decode()
            path = batch["path"][img].numpy().decode()
            if img not in sentence_of:
                counts["no_sentence"] += 1
                continue
            pixels, problem, why = _read_picture_image(path)
            if pixels is None:
                counts[problem] += 1
                if len(skipped) < 3:
                    skipped.append(f"image {image_id}: {why}")
                continue
            n = sentence_of[img]
            toks = first_tokens[n]
            nreg = int(batch["region_mask"][img].numpy().sum())
            png = os.path.join(pictures_dir, _picture_name(n_images + img, image_id))
            raw = raws[img][0].numpy().decode()
            title = f"{split} image {image_id}: {raw}"
            a = assignment[n, :len(toks)]
            draw_alignment(pixels, batch["boxes"][img, :nreg].numpy(), toks, a, png, title=title)
            items.append({"png": png, "tokens": toks, "assignment": a.tolist(), "title": title})
        n_images += take
        if n_images >= num_images:
            break
    html_path = None
    if items:
        html_path = write_alignment_html(items, os.path.join(pictures_dir, PICTURES_PAGE),
                                         title=f"Word-region alignments: {split} split, beta {beta:g}")
    return {"split": split, "requested": num_images, "images": n_images, "pictures": len(items),
            "missing_images": counts["missing"], "unreadable_images": counts["unreadable"],
            "no_sentence": counts["no_sentence"], "skipped_examples": skipped, "dir": pictures_dir,
            "html": html_path}
