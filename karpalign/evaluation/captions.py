"""Caption evaluation: coco-caption metrics, novelty against the training set, nearest-neighbour baseline, and
(for datasets that list their objects, the scenes) the grounded object metric of
:mod:`karpalign.evaluation.grounding`.

:func:`score_captions` gives the paper's generation metrics (BLEU-1..4, METEOR, CIDEr) plus ROUGE-L, computed
by ``pycocoevalcap`` (the Python 3 package of the coco-caption code) exactly as the COCO server does: both
references and candidates go through the Stanford PTB tokenizer, punctuation tokens are dropped, then each
scorer runs. Values are on coco-caption's scale (fractions; the paper's tables multiply by 100).

Two pieces of that toolkit are driven here rather than through their stock wrapper, for robustness:

* PTB tokenizer. ``PTBTokenizer.tokenize`` writes a temporary file into the installed package directory
  (which fails on a read-only site-packages) and pairs output lines with captions by ``zip``, so a caption
  containing a line break (``\\r``, form feed, U+2028 …) silently shifts every later caption onto the wrong
  image. We run the same jar with the same options over stdin, collapse all whitespace in each caption first,
  and check that exactly one output line comes back per caption.
* METEOR. ``Meteor`` keeps a ``java -jar meteor-1.5.jar`` subprocess alive and only kills it in ``__del__``,
  which also deadlocks if a scoring call failed while holding its lock. We close the process in a ``finally``,
  put a watchdog timer on it, and turn a dead or silent Java process into an error that shows its stderr.

SPICE needs Stanford CoreNLP models that pycocoevalcap downloads on first use; this project runs offline, so
SPICE is reported as ``None`` with an explanation in ``notes``.

Both Java tools need a Java runtime on PATH (``apt-get install default-jre-headless``); BLEU, ROUGE-L and
CIDEr themselves are pure Python, and so are :func:`novelty` and :func:`nearest_neighbour_captions`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from karpalign.data.text import python_tokenize

METRICS = ("BLEU", "METEOR", "ROUGE-L", "CIDEr")
JAVA_INSTALL_HINT = ("install a Java runtime, e.g. `sudo apt-get install default-jre-headless` on "
                     "Debian/Ubuntu (or run `make java`), and make sure `java` is on PATH")
SPICE_NOTE = ("SPICE not computed: pycocoevalcap's SPICE downloads Stanford CoreNLP models on first use, and "
              "karpalign evaluates offline")


# ----------------------------------------------------------------------------------------------------------
# Prerequisites
# ----------------------------------------------------------------------------------------------------------

def require_java() -> str:
    """Path of the ``java`` executable, or a RuntimeError that says how to install it."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("caption metrics need Java (the PTB tokenizer and METEOR of pycocoevalcap are "
                           f"Java programs), but `java` was not found on PATH: {JAVA_INSTALL_HINT}")
    return java


def _pycocoevalcap():
    """Imports the pycocoevalcap pieces, with an install hint if the optional dependency is missing."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError as e:
        raise RuntimeError(f"caption metrics need pycocoevalcap ({e}); install it with "
                           "`pip install pycocoevalcap==1.2` (a dependency of karpalign)") from None
    return Bleu, Cider, Meteor, Rouge, ptbtokenizer


# ----------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------

def _check_captions(references: Mapping[Hashable, Sequence[str]],
                    candidates: Mapping[Hashable, str]) -> tuple[list, list[str]]:
    """Ids to evaluate (the candidates' ids, in their order) and notes; raises on malformed input."""
    if not isinstance(references, Mapping) or not isinstance(candidates, Mapping):
        raise TypeError("references and candidates must be dicts keyed by image id "
                        f"(got {type(references).__name__} and {type(candidates).__name__})")
    if not candidates:
        raise ValueError("candidates is empty: nothing to evaluate")
    missing = [k for k in candidates if k not in references]
    if missing:
        raise ValueError(f"{len(missing)} candidate ids have no references, e.g. {missing[:5]}")
    for image_id, caption in candidates.items():
        if not isinstance(caption, str):
            raise TypeError(f"candidates[{image_id!r}] must be one caption string, "
                            f"got {type(caption).__name__}")
        refs = references[image_id]
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
            raise ValueError(f"references[{image_id!r}] must be a non-empty list of caption strings, "
                             f"got {refs!r}")
        for n, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise TypeError(f"references[{image_id!r}][{n}] must be a string, got {type(ref).__name__}")
    notes = []
    unused = len(references) - len(candidates)
    if unused > 0:
        notes.append(f"{unused} reference images have no candidate and were not evaluated")
    return list(candidates), notes


# ----------------------------------------------------------------------------------------------------------
# PTB tokenization and METEOR (Java)
# ----------------------------------------------------------------------------------------------------------

def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]],
                 timeout: float = 600.0) -> dict[Hashable, list[str]]:
    """coco-caption tokenization: Stanford PTBTokenizer (lowercased), punctuation tokens removed.

    Same jar, options and punctuation list as ``pycocoevalcap.tokenizer.ptbtokenizer``, fed over stdin with
    one caption per line (whitespace inside a caption collapsed, so line breaks cannot shift captions).
    """
    java = require_java()
    ptb = _pycocoevalcap()[4]
    jar_dir = os.path.dirname(os.path.abspath(ptb.__file__))
    jar = os.path.join(jar_dir, ptb.STANFORD_CORENLP_3_4_1_JAR)
    keys = [k for k, caps in captions.items() for _ in caps]
    lines = [" ".join(c.split()) for caps in captions.values() for c in caps]
    cmd = [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
           "-encoding", "UTF-8"]
    try:
        proc = subprocess.run(cmd, input="".join(line + "\n" for line in lines).encode("utf-8"),
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"PTB tokenizer ({jar}) did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"PTB tokenizer ({' '.join(cmd)}) failed with exit code {proc.returncode}: "
                           f"{proc.stderr.decode('utf-8', 'replace')[-2000:]}")
    out_lines = proc.stdout.decode("utf-8").split("\n")
    if len(out_lines) < len(lines) or any(x.strip() for x in out_lines[len(lines):]):
        raise RuntimeError(f"PTB tokenizer returned {len(out_lines)} lines for {len(lines)} captions; "
                           "captions and tokens would be misaligned")
    result: dict[Hashable, list[str]] = {k: [] for k in captions}
    for key, line in zip(keys, out_lines):
        result[key].append(" ".join(w for w in line.split(" ") if w and w not in ptb.PUNCTUATIONS))
    return result


def _close_meteor(meteor) -> None:
    """Ends the METEOR subprocess now (and leaves the wrapper's lock free so its __del__ cannot hang)."""
    if meteor.lock.locked():
        meteor.lock.release()  # a failed compute_score leaves it held
    proc = meteor.meteor_p
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _meteor(gts: dict, res: dict, timeout: float) -> tuple[float, list[float]]:
    """METEOR 1.5 via pycocoevalcap, with the subprocess closed afterwards and failures explained."""
    Meteor = _pycocoevalcap()[2]
    # '|||' separates fields in METEOR's stdio protocol; the wrapper strips it from hypotheses only.
    gts = {k: [r.replace("|||", " ") for r in refs] for k, refs in gts.items()}
    res = {k: [c.replace("|||", " ") for c in caps] for k, caps in res.items()}
    meteor = Meteor()
    timed_out = threading.Event()

    def kill_on_timeout():
        timed_out.set()
        meteor.meteor_p.kill()

    watchdog = threading.Timer(timeout, kill_on_timeout)
    watchdog.daemon = True
    watchdog.start()
    try:
        return meteor.compute_score(gts, res)
    except (ValueError, OSError) as e:  # EOF from a dead java gives float('') -> ValueError
        _close_meteor(meteor)
        stderr = meteor.meteor_p.stderr.read().decode("utf-8", "replace")[-2000:]
        reason = f"no answer within {timeout:.0f} s" if timed_out.is_set() else f"{type(e).__name__}: {e}"
        raise RuntimeError(f"METEOR (java -jar meteor-1.5.jar) failed ({reason}); "
                           f"java stderr: {stderr!r}") from None
    finally:
        watchdog.cancel()
        _close_meteor(meteor)
        meteor.meteor_p.stderr.close()


# ----------------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------------

def score_captions(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str],
                   metrics: Sequence[str] = METRICS, return_per_image: bool = False,
                   timeout: float = 900.0) -> dict:
    """coco-caption metrics of one candidate caption per image against that image's reference captions.

    Args:
        references: image id -> list of raw reference captions (at least one each).
        candidates: image id -> one raw generated caption. Every candidate id needs references; reference
            images without a candidate are skipped (and a note says how many).
        metrics: any of ``("BLEU", "METEOR", "ROUGE-L", "CIDEr")``; BLEU yields BLEU-1..4.
        return_per_image: also return ``"per_image"``: image id -> {metric: score}.
        timeout: seconds allowed for each Java step (PTB tokenizer, METEOR).

    Returns:
        ``{"BLEU-1": ..., "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE": None,
        "n_images": int, "notes": [str, ...]}`` (only the requested metrics), on coco-caption's scale.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown caption metrics {unknown}; choose from {METRICS}")
    ids, notes = _check_captions(references, candidates)
    require_java()
    Bleu, Cider, _, Rouge, _ = _pycocoevalcap()

    to_tokenize = {("ref", i): references[i] for i in ids} | {("cand", i): [candidates[i]] for i in ids}
    tokenized = ptb_tokenize(to_tokenize, timeout=timeout)
    gts = {i: tokenized[("ref", i)] for i in ids}  # id -> list of tokenized references
    res = {i: tokenized[("cand", i)] for i in ids}  # id -> [tokenized candidate]

    result: dict = {}
    per_image: dict[str, Sequence[float]] = {}
    if "BLEU" in metrics:
        bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            result[f"BLEU-{n + 1}"] = float(bleu[n])
            per_image[f"BLEU-{n + 1}"] = bleu_each[n]
    if "METEOR" in metrics:
        result["METEOR"], per_image["METEOR"] = _meteor(gts, res, timeout)
    if "ROUGE-L" in metrics:
        result["ROUGE-L"], per_image["ROUGE-L"] = Rouge().compute_score(gts, res)
    if "CIDEr" in metrics:
        result["CIDEr"], per_image["CIDEr"] = Cider().compute_score(gts, res)
        if len(ids) < 2:
            notes.append("CIDEr weighs n-grams by document frequency over the evaluated images; with a "
                         "single image every weight is 0, so CIDEr is 0")
    result = {k: float(v) for k, v in result.items()}
    result["SPICE"] = None
    notes.append(SPICE_NOTE)
    result["n_images"] = len(ids)
    result["notes"] = notes
    if return_per_image:
        result["per_image"] = {i: {m: float(per_image[m][n]) for m in per_image} for n, i in enumerate(ids)}
    return result


# ----------------------------------------------------------------------------------------------------------
# Novelty
# ----------------------------------------------------------------------------------------------------------

def _normalised(caption: str) -> str:
    return " ".join(python_tokenize(caption))


def novelty(generated: Sequence[str], training_captions: Iterable[str]) -> float:
    """Share (0..1) of generated sentences that occur verbatim among the training captions.

    Both sides are compared after :func:`karpalign.data.text.python_tokenize`, joined by single spaces, so
    case and punctuation do not matter. This is the paper's figure "60% of generated sentences (beam 7) can be
    found in the training set"; one minus it is the share of novel sentences.
    """
    generated = list(generated)
    if not generated:
        raise ValueError("generated is empty: novelty of no sentences is undefined")
    for n, caption in enumerate(generated):
        if not isinstance(caption, str):
            raise TypeError(f"generated[{n}] must be a string, got {type(caption).__name__}")
    seen = {_normalised(c) for c in training_captions}
    return sum(_normalised(c) in seen for c in generated) / len(generated)


# ----------------------------------------------------------------------------------------------------------
# Nearest-neighbour baseline
# ----------------------------------------------------------------------------------------------------------

def nearest_neighbours(train_feats, query_feats, metric: str = "cosine", chunk: int = 512) -> np.ndarray:
    """Index of the nearest training vector for each query -> (M,) int64.

    ``metric`` is ``"cosine"`` (largest cosine similarity) or ``"euclidean"`` (smallest L2 distance).
    Queries are processed in chunks of ``chunk`` rows to keep the (chunk, N) similarity block small.
    """
    train = np.asarray(train_feats, np.float32)
    query = np.asarray(query_feats, np.float32)
    if train.ndim != 2 or query.ndim != 2 or train.shape[1] != query.shape[1]:
        raise ValueError(f"train_feats (N, D) and query_feats (M, D) must be 2-D with the same D, got "
                         f"{train.shape} and {query.shape}")
    if train.shape[0] == 0:
        raise ValueError("train_feats is empty: no neighbour to pick")
    for name, x in (("train_feats", train), ("query_feats", query)):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contains NaN/inf at row {int(np.argwhere(~np.isfinite(x))[0, 0])}")
    if metric == "cosine":
        train = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)  # (N, D)
        query = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)  # (M, D)
        sq_norms = None
    elif metric == "euclidean":
        sq_norms = np.sum(train * train, axis=1)  # (N,)
    else:
        raise ValueError(f"unknown metric {metric!r}; choose 'cosine' or 'euclidean'")
    out = np.empty(query.shape[0], np.int64)
    for q0 in range(0, query.shape[0], chunk):
        sims = query[q0:q0 + chunk] @ train.T  # (c, N)
        if sq_norms is not None:
            sims = 2.0 * sims - sq_norms[None, :]  # -||q - t||² + ||q||², same argmax
        out[q0:q0 + len(sims)] = np.argmax(sims, axis=1)
    return out


def consensus_caption_index(captions: Sequence[str]) -> int:
    """Index of the caption that agrees most with the image's other captions.

    Each caption is scored by BLEU (pycocoevalcap's scorer, mean of BLEU-1..4) against the remaining ones, on
    our tokenizer's tokens; the highest wins, ties go to the earliest. One caption -> 0.
    """
    if len(captions) == 1:
        return 0
    Bleu = _pycocoevalcap()[0]
    tokens = [_normalised(c) for c in captions]
    gts = {n: tokens[:n] + tokens[n + 1:] for n in range(len(tokens))}
    res = {n: [tokens[n]] for n in range(len(tokens))}
    _, each = Bleu(4).compute_score(gts, res, verbose=0)  # 4 lists of per-caption scores
    return int(np.argmax(np.mean(np.asarray(each), axis=0)))


def nearest_neighbour_captions(train_feats, train_captions: Sequence[Sequence[str]], query_feats,
                               metric: str = "cosine", consensus: bool = True) -> list[str]:
    """The paper's nearest-neighbour baseline: caption each query with its nearest training image's caption.

    Args:
        train_feats: (N, D) CNN features of the training images.
        train_captions: N lists of raw captions, one list per training image.
        query_feats: (M, D) CNN features of the images to caption (not part of the training set).
        metric: ``"cosine"`` or ``"euclidean"`` (see :func:`nearest_neighbours`).
        consensus: which of the neighbour's captions to return. True: the consensus caption, the one with
            the highest BLEU against the neighbour's other captions (:func:`consensus_caption_index`), which
            avoids returning an idiosyncratic caption; False: simply the first.

    Returns:
        M raw captions.
    """
    if len(train_captions) != len(train_feats):
        raise ValueError(f"train_captions has {len(train_captions)} entries but train_feats has "
                         f"{len(train_feats)} rows")
    for n, caps in enumerate(train_captions):
        if isinstance(caps, str) or not caps or not all(isinstance(c, str) for c in caps):
            raise ValueError(f"train_captions[{n}] must be a non-empty list of caption strings, got {caps!r}")
    neighbours = nearest_neighbours(train_feats, query_feats, metric)
    chosen = {}
    for n in dict.fromkeys(neighbours.tolist()):  # each distinct neighbour once, in first-seen order
        chosen[n] = consensus_caption_index(train_captions[n]) if consensus else 0
    return [train_captions[n][chosen[n]] for n in neighbours.tolist()]


# ---- a generator's captions of a records split ----------------------------------------------------------

def read_split_images(records_dir: str, split: str, *, with_features: bool = True,
                      max_images: int | None = None, batch_size: int = 64, with_regions: bool = False) -> dict:
    """A split's images in file order: ``image_ids`` (N,), ``features`` (N, D) region 0 (or None), ``captions``
    (N lists of raw reference sentences); ``with_regions`` adds every region, ``region_features`` (N, R, D) and
    ``region_mask`` (N, R)."""
    import numpy as np

    from karpalign.data import pipeline as P

    out = {"image_ids": [], "features": [], "captions": [], "region_features": [], "region_mask": []}
    for batch in P.image_dataset(records_dir, split, batch_size=batch_size, max_images=max_images):
        out["image_ids"].extend(x.decode() for x in batch["image_id"].numpy())
        out["captions"].extend([s.decode() for s in caps] for caps in batch["sentences_raw"].to_list())
        if with_features:
            out["features"].append(batch["region_features"][:, 0].numpy())  # (b, D) full frame
        if with_regions:
            out["region_features"].append(batch["region_features"].numpy())  # (b, R, D)
            out["region_mask"].append(batch["region_mask"].numpy())  # (b, R)
    if not out["image_ids"]:
        raise ValueError(f"split {split!r} in {records_dir} has no images")
    for image_id, caps in zip(out["image_ids"], out["captions"]):
        if not caps:
            raise ValueError(f"image {image_id!r} of split {split!r} in {records_dir} has no reference sentences")
    out["features"] = np.concatenate(out["features"]).astype(np.float32) if with_features else None
    for key in ("region_features", "region_mask"):
        out[key] = np.concatenate(out[key]).astype(np.float32) if with_regions else None
    return out


def evaluate_captions(generator, vocab, records_dir: str, split: str = "test", *, beam_size: int = 7,
                      max_length: int = 20, alpha: float = 0.0, max_images: int | None = None,
                      baseline: str | None = None, samples: int = 20, batch_size: int = 64,
                      min_length: int = 1, dataset: str | None = None) -> dict:
    """Captions of a split, scored against the references; novelty; optional nn baseline; grounded metric.

    The mRNN captions each image from region 0 (the full frame); a region-attention generator (``reads_regions``)
    from all its regions and their mask. ``empty_captions`` counts generated captions without a word (0 with the
    default ``min_length=1``).

    ``grounding`` (for the generator and the baseline) is :func:`karpalign.evaluation.grounding.grounded_metrics`
    against the objects of ``dataset`` (default: the records' own dataset file when it lists objects, as the
    scenes' does; otherwise it is None and ``grounding_note`` says why); novel pairs are those no training image
    of that dataset contains.
    """
    from karpalign.data import features as F
    from karpalign.decoding.generate import generate_captions
    from karpalign.evaluation.grounding import grounded_metrics, scene_objects_of_records
    from karpalign.models.generators import reads_regions

    manifest = F.read_manifest(records_dir)
    if manifest.feature_dim != int(generator.feature_dim):
        raise ValueError(f"{records_dir} holds {manifest.feature_dim}-d features (cnn "
                         f"{manifest.cnn or '?'}) but the generator takes {generator.feature_dim}-d ones")
    scene, grounding_note = scene_objects_of_records(manifest, dataset)
    attends = reads_regions(generator)
    test = read_split_images(records_dir, split, max_images=max_images, batch_size=batch_size, with_regions=attends)
    train = read_split_images(records_dir, "train", with_features=baseline == "nn", batch_size=batch_size)
    train_captions = [c for caps in train["captions"] for c in caps]

    settings = dict(beam_size=beam_size, max_length=max_length, alpha=alpha, top_k=1, batch_size=batch_size,
                    min_length=min_length)
    if attends:
        decoded = generate_captions(generator, vocab, test["region_features"], region_mask=test["region_mask"],
                                    **settings)
    else:
        decoded = generate_captions(generator, vocab, test["features"], **settings)
    generated = [caps[0][0] if caps else "" for caps in decoded]
    references = dict(zip(test["image_ids"], test["captions"]))
    novel = objects = None
    if scene is not None:
        missing = [i for i in test["image_ids"] if i not in scene.objects]
        if missing:
            raise ValueError(f"{scene.path}: {len(missing)} images of split {split!r} in {records_dir} are not in "
                             f"the dataset, e.g. {missing[:3]}; pass the dataset the records were extracted from")
        objects, novel = scene.objects, scene.novel_pairs()

    def grounding(captions):
        return grounded_metrics(dict(zip(test["image_ids"], captions)), objects, novel) if objects is not None else None

    result = {
        "kind": "captions", "split": split,
        "metrics": score_captions(references, dict(zip(test["image_ids"], generated))),
        "novelty": _novelty(generated, train_captions),
        "empty_captions": sum(not text.strip() for text in generated),
        "grounding": grounding(generated), "grounding_note": grounding_note,
    }
    nn = None
    if baseline == "nn":
        nn = nearest_neighbour_captions(train["features"], train["captions"], test["features"])
        result["baseline"] = {"kind": "nn", "metrics": score_captions(references, dict(zip(test["image_ids"], nn))),
                              "novelty": _novelty(nn, train_captions), "grounding": grounding(nn)}
    elif baseline is not None:
        raise ValueError(f"unknown baseline {baseline!r}; the only one is 'nn'")
    result["samples"] = [{"image_id": image_id, "generated": generated[n], "references": test["captions"][n],
                          **({"nn": nn[n]} if nn is not None else {})}
                         for n, image_id in enumerate(test["image_ids"][:samples])]
    result["settings"] = {"beam_size": beam_size, "max_length": max_length, "alpha": alpha,
                          "min_length": min_length, "max_images": max_images, "n_images": len(generated), "n_train_images":
                          len(train["image_ids"]), "records_dir": records_dir,
                          "image_vector": "every region (attention)" if attends else "region 0 (full frame)",
                          "generator": type(generator).__name__}
    return result


def _novelty(generated, train_captions) -> dict:
    found = novelty(generated, train_captions)
    return {"in_training_set": found, "novel": 1.0 - found}
