"""Builds the serving module from training runs and writes it as a versioned SavedModel.

Layout (what TF Serving's file-system source watches)::

    BASE/NAME/VERSION/saved_model.pb
                      variables/...
                      assets/vocab.txt, assets/config.yaml
                      assets.extra/tf_serving_warmup_requests

A version is written into a hidden sibling folder ``BASE/NAME/.tmp-VERSION-...`` (TF Serving ignores names that
are not integers) and renamed to ``VERSION`` only when complete, so a server never loads a half-written version.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import uuid

import numpy as np
import yaml

from karpalign.config import DecodeConfig, to_dict
from karpalign.data import features as F
from karpalign.data.text import Vocabulary
from karpalign.decoding.generate import JIT_COMPILE
from karpalign.export.export_module import ExportModule
from karpalign.logs import dropped_messages
from karpalign.training.run_dir import RunDir

log = logging.getLogger(__name__)

IN_GRAPH_PROPOSERS = ("grid", "learned", "detector")  # proposers the serving graph can run (karpalign.vision.proposers)


def next_version(model_dir: str) -> int:
    """1 + the largest integer version folder in ``model_dir`` (1 when there is none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(name) for name in os.listdir(model_dir)
                if name.isdigit() and os.path.isdir(os.path.join(model_dir, name))]
    return max(versions, default=0) + 1


# ---- reading the training runs ------------------------------------------------------------------------------


def _in_graph_proposer(manifest: F.Manifest, proposer: str | None, regions: int | None):
    """(proposer, note) for serving_default: the records' own proposer (from the manifest), or ``proposer``.

    The proposer is built (a learned run or a detector is loaded) with ``regions`` boxes besides the full image,
    default the records' k. Serving with a proposer other than the records' needs ``proposer`` (given explicitly)
    and is written into the note (kept in the config asset; ``serving_default`` reports both names). A proposer
    that cannot run in the graph (``segments``, ``boxes``) is refused, naming the ones that can.
    """
    from karpalign.vision.proposers import IN_GRAPH_HINT, IN_GRAPH_KINDS, in_graph_proposer, spec_from_name

    if regions is not None and (isinstance(regions, bool) or not isinstance(regions, int) or regions < 0):
        raise ValueError(f"regions must be an int >= 0 (boxes besides the full image), got {regions!r}")
    records = manifest.proposer
    where = manifest.path or "records manifest"
    k = regions if regions is not None else records.k
    if records.kind in IN_GRAPH_KINDS:
        try:
            records_spec, _, score, iou = spec_from_name(records.name)
        except ValueError:
            records_spec, score, iou = records.spec, 0.3, 0.5
    else:
        records_spec, score, iou = None, 0.3, 0.5
    if proposer is None:
        if records_spec is None:
            raise ValueError(f"{where}: the records were made with the {records.name!r} proposer, which cannot run "
                             f"inside the serving graph; pass --proposer with one that can ({IN_GRAPH_HINT}); "
                             "the served regions then differ from the ones the models were trained on")
        return in_graph_proposer(records_spec, k, score, iou), ""
    same_kind = proposer.split(":", 1)[0].split("|", 1)[0] == records.kind
    built = in_graph_proposer(proposer, k, *((score, iou) if same_kind else (0.3, 0.5)))
    note = ""
    if built.name != records.name:
        note = (f"serving_default proposes with {built.name!r} (asked for with --proposer), the records were made "
                f"with {records.name!r}: served regions differ from the ones the models were trained on")
        log.warning("%s: %s", where, note)
    return built, note


def _image_path(manifest: F.Manifest, feature_dim: int, crop_size: int | None):
    """(backbone, crop size) for serving_default, built from the records manifest."""
    from karpalign.vision.backbones import get_backbone

    where = manifest.path or "records manifest"
    spec = manifest.cnn_spec or manifest.cnn
    if not spec:
        raise ValueError(f"{where}: field 'cnn_spec' missing: serving_default needs the backbone that "
                         "extracted the features (pass --records-dir of the karpalign-extract output)")
    try:
        backbone = get_backbone(spec)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(f"{where}: cnn_spec {spec!r} cannot be loaded: {exc}") from exc
    if backbone.feature_dim != feature_dim:
        raise ValueError(f"{where}: backbone {spec!r} gives {backbone.feature_dim}-d features, but the "
                         f"manifest says feature_dim={feature_dim}")
    size = int(crop_size or manifest.crop_size or backbone.input_size[0])
    if backbone.fixed_size and (size, size) != tuple(backbone.input_size):
        raise ValueError(f"{where}: backbone {spec!r} only accepts {backbone.input_size} inputs, "
                         f"crop size is {size}")
    return backbone, size


def _check_same_vocab(align_vocab: str, caption_vocab: str) -> Vocabulary:
    a, c = Vocabulary.load(align_vocab), Vocabulary.load(caption_vocab)
    if a.words != c.words:
        first = next((i for i, (x, y) in enumerate(zip(a.words, c.words)) if x != y), min(len(a), len(c)))
        raise ValueError(f"{align_vocab} and {caption_vocab} differ (sizes {len(a)} / {len(c)}, first difference "
                         f"at id {first}); the align and caption runs must share one vocabulary")
    return a


def build_export_module(align_dir: str, caption_dir: str, records_dir: str | None = None, *,
                        decode: DecodeConfig | None = None, proposer: str | None = None, regions: int | None = None,
                        crop_size: int | None = None, with_images: bool = True,
                        config_dir: str | None = None, jit_compile: bool = JIT_COMPILE) -> ExportModule:
    """Loads both runs, checks they fit together and builds the :class:`ExportModule`.

    Args:
        align_dir / caption_dir: output folders of ``karpalign-train --task align`` / ``--task caption``.
        records_dir: records folder whose manifest names the backbone (``cnn_spec``) and ``crop_size``; default
            the manifest copy in ``align_dir``.
        decode: beam settings; default the caption run's ``decode`` config.
        proposer / regions / crop_size: the in-graph region proposal; default the records' own proposer and k
            (from the manifest). A different proposer must be asked for here and is recorded in the config asset
            and in serving_default's ``proposer`` / ``records_proposer`` outputs; ``segments`` and ``boxes``
            records need one (they cannot run in the graph).
        with_images: False exports without ``serving_default`` (no backbone needed).
        config_dir: where to write the resolved config asset (default: a new temporary folder).
        jit_compile: XLA-compile the caption signatures' beam search (see :class:`ExportModule`).
    """
    align_run, caption_run = RunDir(align_dir, "align").check(), RunDir(caption_dir, "caption").check()
    align_cfg, caption_cfg = align_run.load_config(), caption_run.load_config()
    alignment, generator = align_run.load_alignment(), caption_run.load_generator()[0]
    vocab_path = align_run.require(F.VOCAB)
    _check_same_vocab(vocab_path, caption_run.require(F.VOCAB))
    manifest = F.read_manifest(records_dir) if records_dir else align_run.load_manifest()
    feature_dim = manifest.feature_dim
    region_dim = alignment.feature_dim
    if region_dim != feature_dim:
        raise ValueError(f"{align_dir}: the alignment model takes {region_dim}-d regions, {manifest.path} has "
                         f"feature_dim={feature_dim}")
    if generator.feature_dim != feature_dim:
        raise ValueError(f"{caption_dir}: the generator takes {generator.feature_dim}-d images, {manifest.path} "
                         f"has feature_dim={feature_dim}")
    decode = decode or caption_cfg.decode
    backbone = boxes = size = built = None
    note = ""
    if with_images:
        built, note = _in_graph_proposer(manifest, proposer, regions)
        backbone, size = _image_path(manifest, feature_dim, crop_size)
        from karpalign.vision.proposers import GridProposer

        if isinstance(built, GridProposer):  # constant boxes (1 + K, 4), full image first
            boxes, built = built.propose(), None

    resolved = {"align_run": os.path.abspath(align_dir), "caption_run": os.path.abspath(caption_dir),
                "manifest": manifest.to_json(), "decode": dataclasses.asdict(decode),
                "backbone": backbone.name if backbone else None, "crop_size": size,
                "proposer": (built.name if built is not None else f"grid|k={len(boxes) - 1}") if with_images else None,
                "proposer_explicit": proposer is not None,
                "records_proposer": manifest.proposer.name, "proposer_note": note or None,
                "boxes": np.asarray(boxes).tolist() if boxes is not None else None,
                "max_words": align_cfg.data.max_words,
                "align_config": to_dict(align_cfg), "caption_config": to_dict(caption_cfg)}
    config_dir = config_dir or tempfile.mkdtemp(prefix="karpalign-export-")
    config_path = os.path.join(config_dir, "config.yaml")
    with open(config_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)
    return ExportModule(alignment, generator, vocab_path, decode=decode, max_words=align_cfg.data.max_words,
                        feature_dim=feature_dim, backbone=backbone, boxes=boxes, crop_size=size,
                        config_path=config_path, jit_compile=jit_compile, proposer=built,
                        records_proposer=manifest.proposer.name)


# ---- writing ------------------------------------------------------------------------------------------------


def save_for_serving(module, directory: str, signatures: dict) -> None:
    """``tf.saved_model.save`` that TF Serving's loader can restore: every variable a signature reads is saved.

    TF Serving (and ``saved_model_cli run``) loads a SavedModel into a session and restores variables with the
    graph's saver, which knows only the variables that are nodes of the object graph. A Keras 3 variable is a
    wrapper around a ``tf.Variable``; saving the wrapper writes a *copy* of that ``tf.Variable``, while the
    traced signatures read the original, which is then never restored (``FailedPreconditionError: Could not
    find variable ...``). ``tf.saved_model.load`` hides this by rebinding the functions through the object graph.

    So the ``tf.Variable`` objects the signatures capture are tracked on ``module`` as ``serving_variables``
    before saving: then the saver restores exactly what the graph reads, in a session as in TF2. Tables,
    assets and other resources are saved as usual (an untracked one makes ``tf.saved_model.save`` fail).

    Args:
        module: the ``tf.Module`` to save.
        directory: the SavedModel folder to write.
        signatures: {signature name: ``tf.function`` with an input signature, or concrete function}.
    """
    import tensorflow as tf
    from absl import logging as absl_logging  # TensorFlow's dependency; imported so "absl" is absl's logger

    concrete = {name: fn.get_concrete_function() if hasattr(fn, "get_concrete_function") else fn
                for name, fn in signatures.items()}
    captured, seen = [], set()
    for fn in concrete.values():
        for variable in fn.variables:  # the tf.Variables the traced graph reads
            if id(variable) not in seen:
                seen.add(id(variable))
                captured.append(variable)
    module.serving_variables = captured
    with dropped_messages((absl_logging.get_absl_logger(), logging.getLogger("tensorflow")),
                          (_CAPTURE_RENAMING_NOTE,)):
        tf.saved_model.save(module, directory, signatures=concrete)


# TensorFlow's INFO note (on the "absl" logger, which TF's Python modules log through) for every signature whose
# graph has captured inputs (variable handles, table handles, loop inputs read inside tf.while_loop / tf.scan)
# named by TensorFlow ("resource", "input_12") where the saved function uses unique names. Every serving
# signature reads variables in loops (beam search, the BRNN, the MRF), so it would print a page of these notes
# on each export; the names are internal, never the signature's input or output aliases, so the note says
# nothing actionable.
_CAPTURE_RENAMING_NOTE = "contains input name(s)"


def warmup_requests(module: ExportModule) -> list[tuple[str, dict]]:
    """One small generated JPEG for serving_default (if present) and one caption_features request."""
    import tensorflow as tf

    requests = []
    if module.cnn is not None:
        yy, xx = np.mgrid[0:48, 0:64]
        pixels = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)  # (48, 64, 3)
        jpeg = tf.io.encode_jpeg(pixels).numpy()
        requests.append(("serving_default", {"images": np.array([jpeg], dtype=object)}))
    n_regions = module.num_regions if module.cnn is not None else 1
    requests.append(("caption_features",
                     {"region_features": np.zeros((1, n_regions, module.feature_dim), np.float32),
                      "region_mask": np.ones((1, n_regions), np.float32)}))
    return requests


def write_saved_model(module: ExportModule, export_base: str, model_name: str = "karpalign",
                      version: int | None = None, warmup: bool = True) -> str:
    """Saves ``module`` to ``export_base/model_name/version`` atomically; returns that folder.

    ``version`` defaults to the next free integer. An existing version is never overwritten.
    """
    from karpalign.serving.warmup import write_warmup_requests

    if not model_name or os.sep in model_name or model_name.startswith("."):
        raise ValueError(f"model name {model_name!r} must be a plain folder name")
    model_dir = os.path.join(export_base, model_name)
    os.makedirs(model_dir, exist_ok=True)
    if version is None:
        version = next_version(model_dir)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an integer >= 1, got {version!r}")
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} already exists; versions are never overwritten (pick another --version)")
    tmp = os.path.join(model_dir, f".tmp-{version}-{uuid.uuid4().hex[:8]}")
    try:
        save_for_serving(module, tmp, module.signatures())
        if warmup:
            write_warmup_requests(tmp, warmup_requests(module), model_name)
        if os.path.exists(final):
            raise FileExistsError(f"{final} appeared while exporting; not overwriting it")
        os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def export(align_dir: str, caption_dir: str, export_base: str, *, records_dir: str | None = None,
           model_name: str = "karpalign", version: int | None = None, decode: DecodeConfig | None = None,
           proposer: str | None = None, regions: int | None = None, crop_size: int | None = None,
           warmup: bool = True, jit_compile: bool = JIT_COMPILE) -> str:
    """Builds the module from the runs and writes ``export_base/model_name/version``; returns that folder."""
    with tempfile.TemporaryDirectory(prefix="karpalign-export-") as config_dir:
        module = build_export_module(align_dir, caption_dir, records_dir, decode=decode, proposer=proposer,
                                     regions=regions, crop_size=crop_size, config_dir=config_dir,
                                     jit_compile=jit_compile)
        return write_saved_model(module, export_base, model_name, version, warmup=warmup)
