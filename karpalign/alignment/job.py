"""Aligns every sentence of a split to its image's regions and writes region–snippet training data.

Streams image batches from the records: embed regions and words with the trained alignment model, unary
scores v_i·s_t for each image with its own sentences, Viterbi with smoothing β (in TF ops), snippets. Outputs:

- ``snippets-{split}.jsonl``: one line per sentence (image id, tokens, assignment, snippets with region boxes);
- ``{split}-*.tfrecord.gz`` in the one feature schema, one example per snippet: the region's *CNN* features
  as a single region, the snippet as the single sentence (what ``karpalign-train --task caption --on regions``
  reads), plus ``vocab.txt`` and ``manifest.json``;
- alignment accuracy against ground-truth phrase links when the records come with them (synthetic scenes).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import tensorflow as tf

from karpalign.alignment.accuracy import AlignmentAccuracy
from karpalign.alignment.mrf import snippets as make_snippets
from karpalign.alignment.mrf import tf_viterbi_align
from karpalign.data import features as F
from karpalign.data import pipeline as P
from karpalign.data.records import Record


def align_split(model, records_dir: str, split: str, out_dir: str, *, beta: float, max_words: int,
                ground_truth: dict[str, Record] | None = None, min_snippet_words: int = 1,
                skip_full_image: bool = True, batch_size: int = 64, max_images: int | None = None,
                progress: bool = True) -> dict:
    """Aligns one split; returns counts and (with ``ground_truth``) alignment accuracy."""
    manifest = F.read_manifest(records_dir)
    D, R = int(manifest["feature_dim"]), int(manifest["num_regions"])
    table = P.vocab_table(records_dir)
    os.makedirs(out_dir, exist_ok=True)

    @tf.function
    def assign(feats, rmask, which, ids, wmask):
        v = model.embed_images(feats, rmask, training=False)  # (B, R, H)
        s = model.embed_sentences(ids, wmask, training=False)  # (N, T, H)
        v_own = tf.gather(v, which)  # (N, R, H)
        unary = tf.einsum("nth,nrh->ntr", s, v_own)  # (N, T, R)
        return tf_viterbi_align(unary, wmask > 0, tf.gather(rmask, which) > 0, beta), unary

    acc = AlignmentAccuracy()
    examples, n_images, n_sent, n_snip = [], 0, 0, 0
    json_path = os.path.join(out_dir, f"snippets-{split}.jsonl")
    with open(json_path + ".tmp", "w", encoding="utf-8") as jf:
        for batch in P.image_dataset(records_dir, split, feature_dim=D, num_regions=R, batch_size=batch_size):
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
            if max_images is not None and n_images >= max_images:
                break
    os.replace(json_path + ".tmp", json_path)
    F.write_shards(examples, out_dir, split, num_shards=max(1, min(8, len(examples) // 5000 + 1)))
    result = {"split": split, "images": n_images, "sentences": n_sent, "snippets": n_snip, "beta": beta}
    if ground_truth:
        result["accuracy"] = acc.result()
    return result


def write_region_manifest(records_dir: str, out_dir: str, counts: dict, extra: dict) -> None:
    manifest = F.read_manifest(records_dir)
    shutil.copy(os.path.join(records_dir, F.VOCAB), os.path.join(out_dir, F.VOCAB))
    F.write_manifest(out_dir, {**{k: manifest[k] for k in ("feature_dim", "cnn", "proposer") if k in manifest},
                               "num_regions": 1, "counts": counts, "source_records": os.path.abspath(records_dir),
                               **extra})
