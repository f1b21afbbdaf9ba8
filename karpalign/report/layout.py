"""Where the demo puts each step's output, so the demo (writer) and the report (reader) agree on one layout.

    <run>/scenes/dataset.json            synthetic scenes (karpalign-make-scenes)
    <run>/records/                       region features, vocab, manifest (karpalign-extract)
    <run>/align/                         alignment model run (a karpalign.training.run_dir.RunDir)
    <run>/align/eval-retrieval-<split>.json
    <run>/regions/                       MRF snippets, alignment.json, pictures/ (karpalign-align)
    <run>/caption/                       generator on full images (+ eval-captions-<split>-beam<k>.json, -nn.json)
    <run>/caption_regions/               generator on region snippets
    <run>/caption*/eval-region-captions-<split>-beam<k>.json   both generators captioning ground-truth boxes
    <run>/export/karpalign/1/            SavedModel (karpalign-export)
    <run>/served.json                    captions returned by the gRPC server for a few test images
    <run>/samples.json                   test images shown in the report (boxes, aligned words, captions)
    <run>/timings.json                   seconds per demo step
    <run>/report/index.html              the report
"""

from __future__ import annotations

import os

from karpalign.training.run_dir import RunDir

TIMINGS = "timings.json"
SERVED = "served.json"
SAMPLES = "samples.json"
REPORT_DIR = "report"


class Paths:
    """Absolute paths of one run folder's parts (see the module docstring)."""

    def __init__(self, run_dir: str):
        self.run = os.path.abspath(run_dir)
        j = lambda *parts: os.path.join(self.run, *parts)  # noqa: E731
        self.scenes = j("scenes")
        self.dataset = j("scenes", "dataset.json")
        self.records = j("records")
        self.configs = j("configs")
        self.align = j("align")
        self.regions = j("regions")
        self.caption = j("caption")
        self.caption_regions = j("caption_regions")
        self.export = j("export")
        self.served = j(SERVED)
        self.samples = j(SAMPLES)
        self.timings = j(TIMINGS)
        self.report = j(REPORT_DIR)

    def retrieval_json(self, split: str) -> str:
        return RunDir(self.align).eval_path("retrieval", split)

    def captions_json(self, run_dir: str, split: str, beam_size: int | None) -> str:
        """Caption metrics of a generator run at one beam size; ``beam_size=None``: the nearest-neighbour baseline."""
        kind = "nn" if beam_size is None else f"beam{beam_size}"
        return RunDir(run_dir).eval_path("captions", split, f"-{kind}")

    def region_captions_json(self, run_dir: str, split: str, beam_size: int) -> str:
        """Region-caption metrics (karpalign-eval region-captions) of a generator run."""
        return RunDir(run_dir).eval_path("region-captions", split, f"-beam{beam_size}")

    @property
    def alignment_json(self) -> str:
        return os.path.join(self.regions, "alignment.json")
