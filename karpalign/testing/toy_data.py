"""Small learnable data in karpalign's formats, for tests and examples (re-exported by ``karpalign.testing``).

Each image holds 1-3 objects (a colour and a shape); its region features are a fixed random code of the
object's colour plus one of its shape (plus noise), region 0 being the mean of the objects. A Karpathy
``dataset.json`` next to the shards holds the boxes and the phrase links (image files do not exist); region r is
box r - 1, so the manifest names the ground-truth ``boxes`` proposer. Each sentence
names the objects ("a red circle and a blue star"), so an alignment model can learn which words go to which
regions and a generator can learn to describe the image. Each image's ``objects`` (colour and shape) are listed in
the dataset.json as the scenes list theirs, for the grounded caption metric.
"""

from __future__ import annotations

import json
import os

import numpy as np

from karpalign.data import features as F
from karpalign.data.text import Vocabulary

# Small model settings that learn the toy task in a few seconds (used by tests and examples).
SMALL_MODEL = ["model.embed_dim=32", "model.word_dim=16", "model.brnn_hidden=32", "model.gen_hidden=32",
               "model.gen_word_dim=16", "model.dropout=0.0", "data.max_words=12", "train.batch_size=20",
               "train.optimizer=adam", "train.learning_rate=0.003", "train.log_every=5"]

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "star", "cross"]


def make_toy_records(out_dir: str, *, num_train: int = 160, num_val: int = 40, num_test: int = 40,
                     feature_dim: int = 16, num_regions: int = 4, shards: int = 2, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    codes = {w: rng.normal(size=feature_dim).astype("f4") for w in COLOURS + SHAPES}
    counts = {}
    token_lists = []
    images = []
    for split, n in (("train", num_train), ("val", num_val), ("test", num_test)):
        examples = []
        for i in range(n):
            k = int(rng.integers(1, num_regions))
            objs = [(COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]) for _ in range(k)]
            feats = [codes[c] + codes[s] + 0.1 * rng.normal(size=feature_dim) for c, s in objs]
            feats = np.stack([np.mean(feats, 0)] + feats).astype("f4")
            boxes = np.array([[0, 0, 1, 1]] + [[0.1 * j, 0.1 * j, 0.1 * j + 0.3, 0.1 * j + 0.3]
                                               for j in range(k)], "f4")
            sents, entries = [], []
            for _ in range(2):
                order = rng.permutation(k)
                tokens, phrases = [], []
                for j, o in enumerate(order):
                    tokens += ["and"] if j else []
                    phrases.append({"start": len(tokens), "end": len(tokens) + 3, "boxes": [int(o)]})
                    tokens += ["a", objs[o][0], objs[o][1]]
                sents.append((" ".join(tokens), tokens))
                entries.append({"raw": " ".join(tokens), "tokens": tokens, "phrases": phrases})
                if split == "train":
                    token_lists.append(tokens)
            image_id = str(len(images))
            images.append({"filename": f"{image_id}.jpg", "imgid": len(images), "split": split,
                           "boxes": boxes[1:].tolist(), "sentences": entries,
                           "objects": [{"colour": c, "shape": s} for c, s in objs]})
            examples.append(F.encode_example(image_id, split, f"/toy/{image_id}.jpg", feats, boxes, sents))
        counts[split] = F.write_shards(examples, out_dir, split, num_shards=shards)
    with open(os.path.join(out_dir, "dataset.json"), "w", encoding="utf-8") as f:
        json.dump({"dataset": "toy", "images": images}, f)
    vocab = Vocabulary.build(token_lists, min_count=1)
    vocab.save(os.path.join(out_dir, F.VOCAB))
    F.Manifest(feature_dim=feature_dim, num_regions=num_regions, counts=counts,
               proposer=F.ProposerInfo(kind="boxes", k=num_regions - 1), cnn="toy-codes",
               vocab_size=len(vocab), input_records=sum(counts.values()), written=sum(counts.values()),
               failed=0).write(out_dir)
    return out_dir


def untrained_runs(root: str, records_dir: str, feature_dim: int, max_words: int, generator: str = "mrnn") -> dict:
    """Untrained tiny alignment and caption run folders, written the way karpalign-train writes them.

    ``generator`` is the caption run's ``model.generator`` ('mrnn' or 'updown'). The generator gets sharper
    logits than the default init (no log-frequency bias, output kernel × 6) so that untrained beams differ
    between images. Returns {"align": dir, "caption": dir}.
    """
    from karpalign.config import load_config, save_config
    from karpalign.models.generators import build_generator
    from karpalign.training.tasks import AlignTask, CaptionTask

    sets = [f"data.records_dir={records_dir}", "model.embed_dim=32", "model.word_dim=16", "model.brnn_hidden=32",
            "model.gen_hidden=32", "model.gen_word_dim=16", "model.gen_attention_dim=16", "model.dropout=0",
            f"data.max_words={max_words}", f"model.generator={generator}"]
    dirs = {}
    for task, cls in (("align", AlignTask), ("caption", CaptionTask)):
        cfg = load_config(None, sets + [f"train.task={task}"])
        run = cls(cfg)
        if task == "align":
            model = run.build_model()
        else:
            model = build_generator(generator, len(run.vocab), feature_dim, hidden_dim=32, word_dim=16,
                                    attention_dim=16, num_regions=run.num_regions, name="generator")
            model.output_proj.kernel.assign(model.output_proj.kernel * 6.0)
        out = os.path.join(root, task)
        os.makedirs(out)
        save_config(cfg, out)
        run.save_model(model, out)
        dirs[task] = out
    return dirs
