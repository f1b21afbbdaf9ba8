"""The demo's HTML report: metrics tables with baselines, training curves, and test images with their regions,
aligned words and generated captions.

    karpalign-report runs/demo            # writes runs/demo/report/index.html

:func:`build_report` reads a demo folder (layout in :mod:`karpalign.report.layout`): the evaluation JSONs of
`karpalign-eval`, `alignment.json` of `karpalign-align`, each training run's `history.jsonl` and TensorBoard
events, `samples.json`, `served.json` and `timings.json`. Every part is optional: a missing file leaves its
section out with a note saying which file was missing, so the report also works on partial runs. For a caption
run of the region-attention generator (``model.generator: updown``) it also shows where each generated word looked
(:mod:`karpalign.report.attention`). The page is static, opens from disk, and references only files under
``report/`` (plus a relative link to the alignment pictures page), so the folder can be moved or zipped. An inline
script sets ``data-images-ok`` on ``<body>`` once every picture has loaded (used by the headless-browser test).
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import math
import os
import shutil
import sys
import urllib.parse

from karpalign.data import features as F
from karpalign.report import layout as L

RECALLS = ("R@1", "R@5", "R@10")
CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

# Published figures (PAPER.md), on real data: shown for scale, not comparable to the synthetic scenes.
PAPER_RETRIEVAL = {"Flickr8K (paper)": ((16.5, 40.6, 54.2, 7.6), (11.8, 32.1, 44.7, 12.4)),
                   "COCO 1K (paper)": ((38.4, 69.9, 80.5, 1), (27.4, 60.2, 74.8, 3))}
PAPER_CAPTIONS = {"COCO mRNN (paper)": (62.5, 45.0, 32.1, 23.0, 19.5, None, 66.0),
                  "COCO nearest neighbour (paper)": (None, None, None, None, None, None, 38.3)}


class ReportError(ValueError):
    """An input file exists but is malformed; the message names it."""


# ---- reading inputs -----------------------------------------------------------------------------------------


def _load(path: str):
    """A JSON file's content, or None when it does not exist; malformed JSON raises ReportError naming it."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None


def _field(obj: dict, path: str, *keys):
    """obj[k1][k2]...; a missing key raises ReportError naming the file and the field."""
    cur = obj
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            raise ReportError(f"{path}: field {'.'.join(map(str, keys))!r} is missing")
        cur = cur[k]
    return cur


# ---- small HTML helpers -------------------------------------------------------------------------------------


def _e(x) -> str:
    return html.escape(str(x))


def _num(x, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else _e(x)


def _table(cls: str, header: list[str], rows: list[tuple[str, list, str]]) -> str:
    """rows: (label, cells, css class of the row)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(f'<tr class="{cls_}"><th scope="row">{_e(label)}</th>' + "".join(f"<td>{c}</td>" for c in cells)
                   + "</tr>\n" for label, cells, cls_ in rows)
    return f'<table class="{cls}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>'


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _rel(path: str, page_dir: str) -> str:
    return urllib.parse.quote(os.path.relpath(path, page_dir).replace(os.sep, "/"))


# ---- chance levels ------------------------------------------------------------------------------------------


def chance_i2t(n_images: int, n_sentences: int) -> tuple[list[float], float]:
    """Random scores, image->text: R@1/5/10 (%) and median rank of the first of c = M/N correct sentences among M.

    P(first correct within K) = 1 - C(M - c, K) / C(M, K); c is rounded to the nearest integer (the scenes have
    a fixed number of captions per image).
    """
    m, c = n_sentences, max(1, round(n_sentences / max(n_images, 1)))

    def within(k: int) -> float:
        if k > m - c:
            return 1.0
        miss = 1.0
        for i in range(k):
            miss *= (m - c - i) / (m - i)
        return 1.0 - miss

    median = next(k for k in range(1, m + 1) if within(k) >= 0.5)
    return [100.0 * within(k) for k in (1, 5, 10)], float(median)


def chance_t2i(n_images: int) -> tuple[list[float], float]:
    """Random scores, text->image: R@K = K/N (%), median rank (N + 1) / 2."""
    return [100.0 * min(k, n_images) / n_images for k in (1, 5, 10)], (n_images + 1) / 2


# ---- sections -----------------------------------------------------------------------------------------------


def section_data(p: L.Paths) -> str:
    if not os.path.isfile(os.path.join(p.records, F.MANIFEST)):
        return _note(f"{p.records}/{F.MANIFEST} not found: no feature extraction in this run")
    try:
        manifest = F.read_manifest(p.records)
    except ValueError as exc:
        return _note(str(exc))
    rows = [(split, [_e(n)], "") for split, n in manifest.counts.items()]
    info = (f"{_e(manifest.cnn_spec or manifest.cnn or '?')} features "
            f"({_e(manifest.feature_dim)}-d) of up to {_e(manifest.num_regions)} regions "
            f"per image (proposer {_e(manifest.proposer.name)}, crops {_e(manifest.crop_size or '?')} px); "
            f"vocabulary {_e(manifest.vocab_size or '?')} words from the training split.")
    return f"<p>{info}</p>\n" + _table("counts", ["split", "images"], rows)


def section_retrieval(p: L.Paths, splits: list[str]) -> str:
    rows, notes = [], []
    header = ["", *(f"image→text {r}" for r in RECALLS), "i→t med r", *(f"text→image {r}" for r in RECALLS),
              "t→i med r"]
    for split in splits:
        path = p.retrieval_json(split)
        r = _load(path)
        if r is None:
            notes.append(f"{path} not found")
            continue
        i2t, t2i = _field(r, path, "i2t"), _field(r, path, "t2i")
        n_img, n_sent = _field(r, path, "n_images"), _field(r, path, "n_sentences")
        rows.append((f"{split}: BRNN model ({n_img} images, {n_sent} sentences)",
                     [_num(i2t[k]) for k in RECALLS] + [_num(i2t["median_rank"])]
                     + [_num(t2i[k]) for k in RECALLS] + [_num(t2i["median_rank"])], "model"))
        ci, mi = chance_i2t(n_img, n_sent)
        ct, mt = chance_t2i(n_img)
        rows.append((f"{split}: random scores (chance)", [_num(x) for x in ci] + [_num(mi)]
                     + [_num(x) for x in ct] + [_num(mt)], "baseline"))
    for name, (i2t, t2i) in PAPER_RETRIEVAL.items():
        rows.append((name, [_num(float(x)) for x in i2t] + [_num(float(x)) for x in t2i], "paper"))
    out = _table("retrieval", header, rows)
    return out + "".join(_note(n) for n in notes)


def section_alignment(p: L.Paths, page_dir: str) -> str:
    path = p.alignment_json
    a = _load(path)
    if a is None:
        return _note(f"{path} not found: no MRF alignment in this run")
    rows = []
    for split, r in a.items():
        if split in ("pictures", "beta_search") or not isinstance(r, dict):
            continue
        acc = r.get("accuracy") or {}
        rows.append((split, [_e(r.get("images", "?")), _e(r.get("sentences", "?")), _e(r.get("snippets", "?")),
                             _num(100 * acc["word_accuracy"]) if acc.get("word_accuracy") is not None else "–",
                             _num(100 * acc["snippet_accuracy"]) if acc.get("snippet_accuracy") is not None else "–",
                             _num(r.get("beta"), 2)], "model"))
    out = _table("alignment", ["split", "images", "sentences", "snippets", "word accuracy %",
                               "snippet accuracy %", "β"], rows)
    out += _note("Accuracy against the scenes' ground-truth phrase links: a word (snippet) counts as correct "
                 "when its region overlaps the box its phrase refers to.")
    search = a.get("beta_search")
    if isinstance(search, dict) and isinstance(search.get("word_accuracy"), dict):
        tried = ", ".join(f"β {b}: {_num(100 * acc)}%" for b, acc in search["word_accuracy"].items())
        out += _note(f"β chosen on {_e(search.get('split', '?'))} by word accuracy ({tried}).")
    pictures = os.path.join(p.regions, "pictures", "index.html")
    if os.path.exists(pictures):
        out += f'<p><a href="{_rel(pictures, page_dir)}">All alignment pictures drawn by karpalign-align</a></p>'
    return out


GROUNDING = (("object_precision", "object P %"), ("object_recall", "object R %"))
GENERATOR_LABELS = {"MRNNDecoder": "mRNN", "UpDownDecoder": "updown (region attention)"}


def _percent(x) -> str:
    return _num(100 * x) if isinstance(x, (int, float)) else "–"


def _caption_row(label: str, metrics: dict, novelty: dict | None, cls: str,
                 grounding: dict | None = None) -> tuple[str, list, str]:
    cells = [_num(100 * metrics[m]) if metrics.get(m) is not None else "–" for m in CAPTION_METRICS]
    novel = novelty.get("novel") if novelty else None
    cells += [_num(100 * novel) if novel is not None else "–"]
    return label, cells + [_percent((grounding or {}).get(k)) for k, _ in GROUNDING], cls


def section_captions(p: L.Paths, split: str, beams: list[int]) -> str:
    rows, notes, n = [], [], None
    for beam in beams:
        path = p.captions_json(p.caption, split, beam)
        r = _load(path)
        if r is None:
            notes.append(f"{path} not found")
            continue
        metrics = _field(r, path, "metrics")
        n = metrics.get("n_images", n)
        generator = GENERATOR_LABELS.get((r.get("settings") or {}).get("generator"), "mRNN")
        rows.append(_caption_row(f"{generator}, beam {beam}", metrics, r.get("novelty"), "model",
                                 r.get("grounding")))
        if "baseline" in r:
            rows.append(_caption_row("nearest-neighbour baseline", _field(r, path, "baseline", "metrics"),
                                     r["baseline"].get("novelty"), "baseline", r["baseline"].get("grounding")))
    for name, values in PAPER_CAPTIONS.items():
        rows.append((name, [_num(v) if v is None else _num(float(v)) for v in values] + ["–"] * 3, "paper"))
    header = ["", *CAPTION_METRICS, "novel %", *(h for _, h in GROUNDING)]
    out = _table("captions", header, rows)
    if n:
        out += _note(f"{n} {split} images, coco-caption scorers (×100). 'novel %': generated sentences not found "
                     "verbatim among the training captions. 'object P/R %': the grounded metric "
                     "(karpalign.evaluation.grounding): colour–shape pairs named that are in the image / objects "
                     "whose pair is named (datasets that list their objects only).")
    return out + "".join(_note(x) for x in notes)


def section_region_captions(p: L.Paths, split: str, beam: int) -> str:
    rows, notes = [], []
    for run, label in ((p.caption_regions, "region model (trained on MRF snippets)"),
                       (p.caption, "full-frame model (baseline)")):
        path = p.region_captions_json(run, split, beam)
        r = _load(path)
        if r is None:
            notes.append(f"{path} not found")
            continue
        rows.append(_caption_row(label, _field(r, path, "metrics"), None,
                                 "model" if run == p.caption_regions else "baseline"))
    if not rows:
        return _note("region captions not evaluated in this run (" + "; ".join(notes) + ")")
    rows = [(label, cells[:len(CAPTION_METRICS) + 1], cls) for label, cells, cls in rows]
    rows.append(("region model (paper, COCO, BLEU-1)", ["35.2"] + ["–"] * 7, "paper"))
    rows.append(("full-frame model (paper, COCO, BLEU-1)", ["14.2"] + ["–"] * 7, "paper"))
    out = _table("region-captions", ["", *CAPTION_METRICS, "novel %"], rows)
    out += _note(f"Every ground-truth box of the {split} images captioned at beam {beam} and scored against the "
                 "phrases that refer to it (paper Table 3).")
    return out + "".join(_note(x) for x in notes)


def section_curves(p: L.Paths, img_dir: str, page_dir: str) -> str:
    from karpalign.report.curves import plot_run

    figures = []
    for run, title in ((p.align, "alignment model (BRNN, ranking loss)"),
                       (p.caption, "generator on full images"),
                       (p.caption_regions, "generator on region snippets")):
        png = plot_run(run, os.path.join(img_dir, f"curve_{os.path.basename(run)}.png"), title)
        if png:
            figures.append(f'<figure class="curve"><img src="{_rel(png, page_dir)}" alt="{_e(title)}">'
                           f"<figcaption>{_e(title)}</figcaption></figure>")
    return "\n".join(figures) if figures else _note("no training history found")


def _coloured_words(tokens, assignment) -> str:
    from karpalign.alignment.pictures import UNALIGNED_COLOUR, region_colours

    colours = region_colours(assignment)
    spans = []
    for token, region in zip(tokens, assignment):
        rgb = colours.get(int(region), UNALIGNED_COLOUR)
        spans.append(f'<span style="color: rgb{tuple(rgb)}" title="region {int(region)}">{_e(token)}</span>')
    return " ".join(spans)


def section_samples(p: L.Paths, img_dir: str, page_dir: str) -> str:
    from karpalign.alignment.pictures import draw_alignment

    data = _load(p.samples)
    if data is None:
        return _note(f"{p.samples} not found: no sample images")
    cards = []
    for n, s in enumerate(_field(data, p.samples, "samples")):
        where = f"{p.samples}: samples[{n}]"
        for key in ("image_id", "path", "boxes", "references", "captions"):
            if key not in s:
                raise ReportError(f"{where}: field {key!r} is missing")
        tokens, assignment = s.get("tokens"), s.get("assignment")
        png = os.path.join(img_dir, f"sample_{n}.png")
        if not os.path.exists(s["path"]):
            picture = _note(f"image file {s['path']} not found")
        else:
            try:
                if tokens:
                    draw_alignment(s["path"], s["boxes"], tokens, assignment[:len(tokens)], png,
                                   title=f"image {s['image_id']}", min_width=320)
                else:  # no alignment: the image with its boxes only
                    draw_alignment(s["path"], s["boxes"], [], [], png, title=f"image {s['image_id']}",
                                   min_width=320)
            except ValueError as e:
                raise ReportError(f"{where}: {e}") from None
            picture = f'<img src="{_rel(png, page_dir)}" alt="image {_e(s["image_id"])} with its aligned regions">'
        aligned = (f'<p class="aligned"><b>aligned:</b> {_coloured_words(tokens, assignment)}</p>'
                   if tokens else "")
        caps = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in s["captions"].items())
        refs = "".join(f"<li>{_e(r)}</li>" for r in s["references"])
        cards.append(f'<div class="sample">{picture}\n{aligned}\n<table class="generated">{caps}</table>\n'
                     f'<p><b>references</b></p><ul class="refs">{refs}</ul></div>')
    return '<div class="samples">\n' + "\n".join(cards) + "\n</div>"


def section_attention(p: L.Paths, img_dir: str, page_dir: str, split: str, show: int = 4) -> str:
    """For an updown caption run: the first test images with each generated word coloured by the region it
    attended to most, and the attention weights (computed once, cached in the run; see report.attention)."""
    from karpalign.training.run_dir import RunDir

    run = RunDir(p.caption, "caption")
    if not run.has_model():
        return _note(f"{run.model_path()} not found: no caption run")
    if run.load_config().model.generator != "updown":
        return _note("the caption run's generator (mRNN) reads only the whole image; attention maps need "
                     "`model.generator: updown`")
    if not os.path.isfile(os.path.join(p.records, F.MANIFEST)):
        return _note(f"{p.records}/{F.MANIFEST} not found: no records to caption")
    from karpalign.alignment.pictures import draw_alignment
    from karpalign.report.attention import cached_attention_maps

    try:
        data = cached_attention_maps(p.caption, p.records, split)
    except (ValueError, OSError) as e:
        raise ReportError(f"{p.caption}: attention maps: {e}") from None
    cards = []
    for k, s in enumerate(data["samples"][:show]):
        png = os.path.join(img_dir, f"attention_{k}.png")
        if os.path.exists(s["path"]):
            draw_alignment(s["path"], s["boxes"], s["words"], s["attended"], png,
                           title=f"image {s['image_id']}: attended regions",
                           min_width=320)
            picture = f'<img src="{_rel(png, page_dir)}" alt="attention of image {_e(s["image_id"])}">'
        else:
            picture = _note(f"image file {s['path']} not found")
        head = "".join(f"<th>{_e(w)}</th>" for w in s["words"])
        body = ""
        for r in range(len(s["boxes"])):
            cells = "".join(f'<td style="background: rgba(200, 60, 30, {min(1.0, float(row[r])):.2f})">'
                            f"{100 * float(row[r]):.0f}</td>" for row in s["attention"])
            body += f"<tr><th>{'whole image' if r == 0 else f'region {r}'}</th>{cells}</tr>"
        table = f'<table class="attention"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>'
        cards.append(f'<div class="sample">{picture}\n{table}</div>')
    settings = data["settings"]
    intro = _note(f"Greedy captions (beam {settings['beam_size']}) of the first {len(cards)} {split} images by the "
                  "updown generator; each column is a generated word, each cell the attention weight (%) on a "
                  "region when that word was produced.")
    g = data.get("grounding")
    if g and g.get("words"):
        intro += _note(f"Over the first {len(data['samples'])} {split} images: {_percent(g['on_object'])}% of the "
                       f"{g['words']} colour and shape words of true colour–shape mentions attended most to a region "
                       f"framing that object (IoU ≥ 0.5), {_percent(g['on_whole_image'])}% to the whole image.")
    return intro + '<div class="samples">\n' + "\n".join(cards) + "\n</div>"


def section_serving(p: L.Paths) -> str:
    served = _load(p.served)
    if served is None:
        return _note(f"{p.served} not found: the serving step did not run")
    rows = [(os.path.basename(im["path"]), [_e(im["captions"][0][0]) if im["captions"] else "–",
                                           _num(im["captions"][0][1], 3) if im["captions"] else "–"], "")
            for im in served["images"]]
    intro = (f"<p>karpalign-serve (TF Serving's gRPC PredictionService) on {_e(served['address'])}, model "
             f"{_e(served['model'])}: {len(rows)} JPEG files captioned by the client in one request in "
             f"{_num(served['seconds'], 2)} s (image decoding, regions, CNN and beam search inside the SavedModel).</p>")
    return intro + _table("served", ["image", "caption", "score"], rows)


def section_timings(p: L.Paths) -> str:
    t = _load(p.timings)
    if not t:
        return _note(f"{p.timings} not found")
    rows = [(name, [_num(v.get("seconds")) if v.get("seconds") is not None else "–",
                    "reused" if v.get("reused") else ""], "") for name, v in t.items()]
    total = sum(v.get("seconds") or 0 for v in t.values())
    rows.append(("total (steps run or reused)", [_num(float(total)), ""], "total"))
    return _table("timings", ["step", "seconds", ""], rows)


# ---- the page -----------------------------------------------------------------------------------------------

STYLE = """
body { font-family: sans-serif; margin: 1.5em 2em; background: #fafafa; color: #222; max-width: 1300px; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; background: #fff; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
thead th { background: #eee; } tbody th { text-align: left; font-weight: normal; }
tr.model th { font-weight: bold; } tr.baseline { color: #555; } tr.paper { color: #888; font-style: italic; }
.note { color: #666; font-size: 0.85em; }
figure.curve { display: inline-block; margin: 0.5em; background: #fff; border: 1px solid #ddd; padding: 0.3em; }
.samples { display: flex; flex-wrap: wrap; gap: 1em; }
.sample { background: #fff; border: 1px solid #ddd; padding: 0.6em; width: 420px; }
.sample img { max-width: 100%; } .aligned { font-weight: bold; }
table.generated th, table.generated td { text-align: left; }
ul.refs { font-size: 0.85em; color: #444; padding-left: 1.2em; }
table.attention { font-size: 0.75em; } table.attention td { text-align: center; padding: 0.15em 0.3em; }
"""

IMAGE_CHECK = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.dataset.imagesOk = ok ? "true" : "false";
  document.body.dataset.imagesCount = String(imgs.length);
});
"""


def build_report(run_dir: str, out_dir: str | None = None, *, retrieval_splits=("test", "test_novel"),
                 caption_split: str = "test", beams=None, title: str = "karpalign demo report") -> str:
    """Writes ``<out_dir>/index.html`` (default ``<run_dir>/report``) with its images; returns the page path.

    ``beams`` defaults to the beam sizes found in ``<run>/caption/eval-captions-<split>-beam*.json``.
    Raises ReportError when an input file is malformed (missing files only drop their section).
    """
    p = L.Paths(run_dir)
    if not os.path.isdir(p.run):
        raise ReportError(f"{p.run}: run folder does not exist")
    out_dir = os.path.abspath(out_dir or p.report)
    img_dir = os.path.join(out_dir, "img")
    if os.path.isdir(img_dir):
        shutil.rmtree(img_dir)  # drop pictures of an earlier build
    os.makedirs(img_dir)
    if beams is None:
        prefix = f"eval-captions-{caption_split}-beam"
        names = os.listdir(p.caption) if os.path.isdir(p.caption) else []
        beams = sorted(int(n[len(prefix):-5]) for n in names
                       if n.startswith(prefix) and n.endswith(".json") and n[len(prefix):-5].isdigit())
    beams = list(beams)
    sections = [
        ("data", "Data", section_data(p)),
        ("retrieval", "Image–sentence retrieval", section_retrieval(p, list(retrieval_splits))),
        ("alignment", "MRF alignment of words to regions", section_alignment(p, out_dir)),
        ("captions", f"Generated captions ({caption_split} split)", section_captions(p, caption_split, beams)),
        ("region-captions", "Region captions",
         section_region_captions(p, caption_split, max(beams)) if beams else _note("no caption evaluation found")),
        ("curves", "Training curves", section_curves(p, img_dir, out_dir)),
        ("samples", "Test images: regions, aligned words, captions", section_samples(p, img_dir, out_dir)),
        ("attention", "Where the generator looks: attention per word", section_attention(p, img_dir, out_dir,
                                                                                         caption_split)),
        ("serving", "Served over gRPC", section_serving(p)),
        ("timings", "Demo steps", section_timings(p)),
    ]
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = "\n".join(f'<section id="{sid}">\n<h2>{_e(heading)}</h2>\n{content}\n</section>'
                     for sid, heading, content in sections)
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{_e(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{_e(title)}</h1>\n<p class=\"note\">Run folder {_e(p.run)}, report written {when}. "
            "Synthetic scenes: figures show that the system works end to end; the paper's numbers (italic) "
            "are on real photographs and only give the scale.</p>\n"
            f"{body}\n<script>{IMAGE_CHECK}</script>\n</body>\n</html>\n")
    index = os.path.join(out_dir, "index.html")
    with open(index, "w", encoding="utf-8") as f:
        f.write(page)
    return index


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="karpalign-report", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", help="demo folder (karpalign-demo --out)")
    ap.add_argument("--out", default=None, help="report folder (default <run_dir>/report)")
    args = ap.parse_args(argv)
    try:
        index = build_report(args.run_dir, args.out)
    except (ReportError, OSError) as e:
        print(f"karpalign-report: {e}", file=sys.stderr)
        return 2
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
