"""The training tasks: alignment (BRNN + ranking loss) and captioning (a generator on images or on region snippets;
``model.generator`` picks the paper's mRNN or the region-attention updown generator)."""

from __future__ import annotations

import os
import weakref

import numpy as np
import tensorflow as tf

from karpalign.config import Config
from karpalign.data import features as F
from karpalign.data import pipeline as P
from karpalign.data.text import Vocabulary
from karpalign.layers.brnn_encoder import BRNNEncoder
from karpalign.layers.region_embedding import RegionEmbedding
from karpalign.losses import bidirectional_loss, fragment_loss
from karpalign.models.alignment_model import AlignmentModel
from karpalign.models.generators import build_generator, check_generator_name, teacher_forcing_inputs
from karpalign.models.mrnn_decoder import log_frequency_bias
from karpalign.models.scores import region_word_dots
from karpalign.training.loop import Task
from karpalign.training.run_dir import RunDir


def _gather(x):
    """All-gathers a per-replica tensor along the batch axis (identity without distribution).

    Built from an all-reduce of zero-padded blocks (each replica fills its own rows), which every strategy
    supports in graph mode and differentiates (all_gather is not available under multi-worker collectives).
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    n, me = ctx.num_replicas_in_sync, tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    local = tf.shape(x)[0]
    rest = tf.shape(x)[1:]
    before = tf.zeros(tf.concat([[me * local], rest], 0), x.dtype)
    after = tf.zeros(tf.concat([[(n - 1 - me) * local], rest], 0), x.dtype)
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([before, x, after], 0))


def _replica_offset(local_batch):
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return 0
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32) * local_batch


class _RecordsTask(Task):
    """Shared by the tasks: manifest, vocabulary and dataset settings of a records folder."""

    records_dir_key = "records_dir"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.records_dir = getattr(cfg.data, self.records_dir_key)
        if not self.records_dir:
            raise ValueError(f"data.{self.records_dir_key} is not set: point it at the output of "
                             f"{'karpalign-extract' if self.records_dir_key == 'records_dir' else 'karpalign-align'}")
        self.manifest = F.read_manifest(self.records_dir)
        self.vocab_path = os.path.join(self.records_dir, F.VOCAB)
        self.vocab = Vocabulary.load(self.vocab_path)
        self.feature_dim = self.manifest.feature_dim
        self.num_regions = self.manifest.num_regions

    def _data_kwargs(self):
        return dict(max_words=self.cfg.data.max_words, global_batch_size=self.cfg.train.batch_size,
                    seed=self.cfg.train.seed, image_shuffle_buffer=self.cfg.train.shuffle_buffer)

    def save_model(self, model, out_dir):
        """The model file of this task, the vocabulary and a copy of the records manifest (see RunDir)."""
        run = RunDir(out_dir, self.name)
        run.save_model(model)
        run.save_records_side_files(self.vocab, self.manifest)


def embed_split(model: AlignmentModel, records_dir: str, split: str, vocab_table, *, max_words: int,
                max_images: int | None = None, batch_size: int = 64):
    """Embeds a split's images and sentences.

    Returns dict: ``v`` (N, R, H), ``v_mask`` (N, R), ``s`` (M, T, H), ``s_mask`` (M, T), ``image_of_sentence``
    (M,), ``image_ids`` (N,), ``tokens`` (list of M token lists), ``boxes`` (N, R, 4), ``raw`` (M,).
    """
    embed_images, embed_sentences = _embedders(model, max_words)
    out = {k: [] for k in ("v", "v_mask", "s", "s_mask", "image_of_sentence", "image_ids", "tokens", "boxes",
                           "raw")}
    n = 0
    for batch in P.image_dataset(records_dir, split, batch_size=batch_size, max_images=max_images):
        feats, mask = batch["region_features"], batch["region_mask"]
        out["v"].append(embed_images(feats, mask).numpy())
        out["v_mask"].append(mask.numpy())
        out["boxes"].append(batch["boxes"].numpy())
        out["image_ids"].extend(x.decode() for x in batch["image_id"].numpy())
        tokens = batch["tokens"]
        ids, tmask = P.token_ids(tokens.values, vocab_table, max_words)
        out["s"].append(embed_sentences(ids, tmask).numpy())
        out["s_mask"].append(tmask.numpy())
        out["image_of_sentence"].append(tokens.value_rowids().numpy() + n)
        out["tokens"].extend([[t.decode() for t in sent][:max_words] for sent in tokens.values.to_list()])
        out["raw"].extend(x.decode() for x in batch["sentences_raw"].values.numpy())
        n += int(feats.shape[0])
    if n == 0:
        raise ValueError(f"split {split!r} in {records_dir} has no images")
    for k in ("v", "v_mask", "s", "s_mask", "image_of_sentence", "boxes"):
        out[k] = np.concatenate(out[k])
    return out


# model -> {max_words: (embed_images, embed_sentences)}: one trace per model and sentence length, never per call
# (validation embeds the val split every eval_every steps); the functions hold the model weakly.
_EMBEDDERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _embedders(model: AlignmentModel, max_words: int):
    """``tf.function``s embedding regions (B, R, D) + mask and token ids (N, T) + mask, batch dims None."""
    functions = _EMBEDDERS.setdefault(model, {})
    if max_words not in functions:
        ref = weakref.ref(model)
        feature_dim = model.feature_dim

        def embed_images(feats, mask):
            return ref().embed_images(feats, mask, training=False)  # (B, R, H)

        def embed_sentences(ids, mask):
            return ref().embed_sentences(ids, mask, training=False)  # (N, T, H)

        functions[max_words] = (
            tf.function(embed_images, input_signature=[tf.TensorSpec([None, None, feature_dim], tf.float32),
                                                       tf.TensorSpec([None, None], tf.float32)]),
            tf.function(embed_sentences, input_signature=[tf.TensorSpec([None, max_words], tf.int32),
                                                          tf.TensorSpec([None, max_words], tf.float32)]))
    return functions[max_words]


class AlignTask(_RecordsTask):
    """Alignment model trained with the bidirectional ranking loss; validated by retrieval R@1+5+10."""

    name = "align"

    def build_model(self):
        m = self.cfg.model
        word_vectors = None
        if self.cfg.data.word_vectors:
            from karpalign.data.word_vectors import load_pretrained

            word_vectors, report = load_pretrained(self.cfg.data.word_vectors, self.vocab)
            print(f"word vectors {self.cfg.data.word_vectors}: {report}")
        word_dim = word_vectors.shape[1] if word_vectors is not None else m.word_dim
        model = AlignmentModel(
            RegionEmbedding(m.embed_dim, dropout=m.dropout, name="region_embedding"),
            BRNNEncoder(len(self.vocab), word_dim=word_dim, hidden_dim=m.brnn_hidden, embed_dim=m.embed_dim,
                        dropout=m.dropout, word_vectors=word_vectors, freeze_word_vectors=m.freeze_word_vectors,
                        name="sentence_encoder"),
            score=m.score, name="alignment_model")
        T = self.cfg.data.max_words
        model({"region_features": tf.zeros([1, self.num_regions, self.feature_dim]),
               "region_mask": tf.ones([1, self.num_regions]), "token_ids": tf.zeros([1, T], tf.int32),
               "token_mask": tf.ones([1, T])})
        return model

    def dataset(self, input_context):
        return P.pair_dataset(self.records_dir, "train", P.vocab_table(self.records_dir),
                              input_context=input_context, **self._data_kwargs())

    def loss(self, model, batch, global_batch_size, training=True):
        v, s = model(batch, training=training)  # (B, R, H), (B, T, H)
        v_mask, s_mask, keys = batch["region_mask"], batch["token_mask"], batch["image_key"]
        v_all, vm_all, s_all, sm_all, keys_all = (_gather(x) for x in (v, v_mask, s, s_mask, keys))
        local = tf.shape(v)[0]
        own = _replica_offset(local) + tf.range(local)
        m = self.cfg.model
        dots = None
        if m.fragment_weight:
            # local images × all sentences: the replicas' blocks partition the global batch's fragment pairs
            dots = region_word_dots(v, s_all)  # (B_local, B_global, R, T)
        i2s = model.score_matrix(v, v_mask, s_all, sm_all, dots=dots)  # (B_local, B_global), dots computed once
        if tf.distribute.get_strategy().num_replicas_in_sync == 1:
            s2i = tf.transpose(i2s)  # one replica: local == global, the same matrix read by columns
        else:
            s2i = tf.transpose(model.score_matrix(v_all, vm_all, s, s_mask))  # (B_local, B_global)
        total = bidirectional_loss(tf.cast(i2s, tf.float32), tf.cast(s2i, tf.float32), own, keys, keys_all,
                                   margin=m.margin, kind=m.loss)
        if dots is not None:
            total += m.fragment_weight * fragment_loss(tf.cast(dots, tf.float32), v_mask, sm_all, keys, keys_all,
                                                       mil=m.fragment_mil)
        return total / global_batch_size

    def validate(self, model):
        from karpalign.evaluation.retrieval import retrieval_metrics, score_matrix

        emb = embed_split(model, self.records_dir, "val", P.vocab_table(self.records_dir),
                          max_words=self.cfg.data.max_words, max_images=self.cfg.train.val_max_images)
        scores = score_matrix(emb["v"], emb["v_mask"], emb["s"], emb["s_mask"], score=model.score)
        r = retrieval_metrics(scores, emb["image_of_sentence"])
        return {"score": r["rsum"], **{f"{d}_R@{k}": r[d][f"R@{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)}}


class CaptionTask(_RecordsTask):
    """A generator (``model.generator``: 'mrnn' or 'updown') trained with per-word cross-entropy on full images
    or on region snippets. The mRNN reads region 0 of each example; the updown generator every region, with
    the region mask, so its batches carry ``region_features`` (B, R, D) and ``region_mask`` (B, R) too."""

    name = "caption"

    def __init__(self, cfg: Config):
        if cfg.train.on not in ("images", "regions"):
            raise ValueError(f"train.on must be 'images' or 'regions', got {cfg.train.on!r}")
        check_generator_name(cfg.model.generator)
        self.records_dir_key = "records_dir" if cfg.train.on == "images" else "region_records_dir"
        super().__init__(cfg)
        self.with_regions = cfg.model.generator != "mrnn"

    def build_model(self):
        m = self.cfg.model
        return build_generator(m.generator, len(self.vocab), self.feature_dim, hidden_dim=m.gen_hidden,
                               word_dim=m.gen_word_dim, cell=m.gen_cell, attention_dim=m.gen_attention_dim,
                               dropout=m.dropout, output_bias=log_frequency_bias(self.vocab.counts, len(self.vocab)),
                               num_regions=self.num_regions, name="generator")

    def _caption_dataset(self, split: str, **kwargs):
        """Caption batches of a split (see :func:`karpalign.data.pipeline.caption_dataset`), with the regions
        and their mask when the generator attends over them."""
        if not self.with_regions:
            return P.caption_dataset(self.records_dir, split, P.vocab_table(self.records_dir), **kwargs)
        pairs = P.pair_dataset(self.records_dir, split, P.vocab_table(self.records_dir), **kwargs)
        return pairs.map(_caption_batch_with_regions, num_parallel_calls=P.AUTOTUNE)

    def dataset(self, input_context):
        return self._caption_dataset("train", input_context=input_context, **self._data_kwargs())

    @staticmethod
    def token_losses(model, batch, training):
        logits = model(teacher_forcing_inputs(model, batch), training=training)  # (B, T, V)
        xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=batch["targets"],
                                                              logits=tf.cast(logits, tf.float32))
        return xent * batch["target_mask"]  # (B, T)

    def loss(self, model, batch, global_batch_size, training=True):
        # Sum of word losses per sentence, averaged over the global batch of sentences.
        return tf.reduce_sum(self.token_losses(model, batch, training)) / global_batch_size

    def _validation_step(self, model):
        """Per-word losses of a validation batch, one ``tf.function`` per model (traced once, not per eval)."""
        if getattr(self, "_val_model", None) is not model:
            self._val_model = model
            self._val_step = tf.function(lambda b: self.token_losses(model, b, False), reduce_retracing=True)
        return self._val_step

    def validate(self, model):
        # Every sentence of the first val_max_images images (however many sentences each image has).
        ds = self._caption_dataset("val", shuffle=False, repeat=False, max_images=self.cfg.train.val_max_images,
                                   **{**self._data_kwargs(), "global_batch_size": 64})
        step = self._validation_step(model)
        total, words = 0.0, 0.0
        for batch in ds:
            total += float(tf.reduce_sum(step(batch)))
            words += float(tf.reduce_sum(batch["target_mask"]))
        if words == 0:
            raise ValueError(f"no validation sentences in {self.records_dir} (split 'val')")
        nll = total / words
        return {"score": -nll, "word_nll": nll, "perplexity": float(np.exp(nll))}


def _caption_batch_with_regions(pairs):
    """:func:`karpalign.data.pipeline.to_caption_batch` plus every region and the mask (for updown)."""
    return {**P.to_caption_batch(pairs), "region_features": pairs["region_features"],  # (B, R, D)
            "region_mask": pairs["region_mask"]}  # (B, R)


from karpalign.training.propose import ProposeTask  # noqa: E402  (the learned region proposer's task)

TASKS = {"align": AlignTask, "caption": CaptionTask, "propose": ProposeTask}
