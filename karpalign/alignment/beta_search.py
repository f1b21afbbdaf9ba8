"""Choosing the MRF smoothing ``beta`` by word alignment accuracy on a split with ground-truth phrase links.

``karpalign-align --tune-beta B1,B2,...`` calls :func:`tune_beta`; the chosen value then aligns every split.
TensorFlow (through :mod:`karpalign.alignment.job`) is imported when the function runs, not on import.
"""

from __future__ import annotations

import tempfile


def tune_beta(model, records_dir: str, split: str, betas: list[float], ground_truth: dict, *, max_words: int,
              max_images: int | None = None) -> tuple[float, dict]:
    """Aligns ``split`` with each beta (outputs thrown away) -> (best beta, {"split", "word_accuracy": {beta:
    acc}, "chosen"}). Ties go to the smaller beta. Raises ValueError when the split has no phrase links."""
    from karpalign.alignment.job import align_split

    accuracy = {}
    with tempfile.TemporaryDirectory() as tmp:
        for beta in betas:
            r = align_split(model, records_dir, split, tmp, beta=beta, max_words=max_words,
                            ground_truth=ground_truth, max_images=max_images, progress=False)
            acc = (r.get("accuracy") or {}).get("word_accuracy")
            if acc is None:
                raise ValueError(f"split {split} has no words linked to ground-truth boxes in the dataset, so "
                                 "beta cannot be tuned on it")
            accuracy[f"{beta:g}"] = acc
    best = min(betas, key=lambda b: (-accuracy[f"{b:g}"], b))
    return best, {"split": split, "word_accuracy": accuracy, "chosen": best}
