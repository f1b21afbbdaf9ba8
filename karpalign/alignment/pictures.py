"""Pictures of word→region alignments, in the style of the paper's figures.

:func:`draw_alignment` writes one PNG: the image with every region that received words outlined in its own
colour and labelled with its snippets, and the sentence underneath with each word in its region's colour.
:func:`write_alignment_html` writes a static page showing several such PNGs with their coloured sentences.
Colours are given to regions in the order they first occur in the sentence, so the picture and the page
agree, and the same sentence always gets the same colours.
"""

from __future__ import annotations

import html
import math
import os
import urllib.parse
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from karpalign.alignment.mrf import snippets

# tab10-like colours: distinct from each other and readable as text on white.
PALETTE = (
    (214, 39, 40),
    (31, 119, 180),
    (44, 160, 44),
    (148, 103, 189),
    (255, 127, 14),
    (23, 190, 207),
    (227, 119, 194),
    (140, 86, 75),
    (188, 189, 34),
    (127, 127, 127),
)
UNALIGNED_COLOUR = (40, 40, 40)  # words that belong to no region (negative assignment)
BACKGROUND = (255, 255, 255)
BOX_WIDTH = 3
MARGIN = 8
FONT_SIZE = 16
LABEL_FONT_SIZE = 13


def region_colours(assignment) -> dict[int, tuple[int, int, int]]:
    """Region -> RGB colour by first occurrence in the sentence (colours repeat after len(PALETTE))."""
    colours: dict[int, tuple[int, int, int]] = {}
    for a in np.asarray(assignment).reshape(-1):
        a = int(a)
        if a >= 0 and a not in colours:
            colours[a] = PALETTE[len(colours) % len(PALETTE)]
    return colours


def _load_image(image) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        if not os.path.exists(image):
            raise FileNotFoundError(f"draw_alignment: image file {os.fspath(image)!r} does not exist")
        with Image.open(image) as img:
            return img.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"draw_alignment: image must be a uint8 (H, W, 3) array or path, not {array.dtype} {array.shape}"
        )
    return Image.fromarray(array, "RGB")


def _check_alignment(region_boxes, tokens, assignment, where: str) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(region_boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{where}: region_boxes must be (M, 4) [ymin, xmin, ymax, xmax], got shape {boxes.shape}"
        )
    assignment = np.asarray(assignment).reshape(-1).astype(np.int64)
    if len(assignment) != len(tokens):
        raise ValueError(
            f"{where}: assignment has {len(assignment)} entries but there are {len(tokens)} tokens"
        )
    if np.any(assignment >= len(boxes)):
        raise ValueError(
            f"{where}: assignment names region {assignment.max()} but there are {len(boxes)} region boxes"
        )
    return boxes, assignment


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _wrap_words(words: Sequence[str], font, max_width: float) -> list[list[int]]:
    """Greedy line breaking: lists of word indices whose rendered width fits in max_width."""
    space = font.getlength(" ")
    lines: list[list[int]] = [[]]
    width = 0.0
    for i, word in enumerate(words):
        w = font.getlength(word)
        if lines[-1] and width + space + w > max_width:
            lines.append([])
            width = 0.0
        width += (space if lines[-1] else 0.0) + w
        lines[-1].append(i)
    return lines


def _fit_text(text: str, font, max_width: float) -> str:
    if font.getlength(text) <= max_width:
        return text
    while text and font.getlength(text + "...") > max_width:
        text = text[:-1]
    return text + "..."


def _line_height(font) -> int:
    top, bottom = font.getbbox("Ag")[1::2]
    return int(math.ceil(bottom - top)) + 6


def draw_alignment(image, region_boxes, tokens, assignment, out_png, title=None, min_width: int = 400) -> str:
    """Draws the alignment of one sentence to the regions of one image and writes it as a PNG.

    Args:
      image: uint8 (H, W, 3) array or a path to an image file.
      region_boxes: (M, 4) normalised [ymin, xmin, ymax, xmax] boxes of the model's regions.
      tokens: the sentence's N words.
      assignment: (N,) region index per word (negative = no region, drawn dark grey).
      out_png: where to write the picture (parent folders are created).
      title: optional line of text above the image.
      min_width: images narrower than this are enlarged by the smallest integer factor reaching it, so the
        labels stay legible on small images.

    Returns:
      out_png as a string. The picture is ``W * factor`` wide; its height is the (enlarged) image height plus
      the title and sentence bands.
    """
    tokens = [str(t) for t in tokens]
    where = f"draw_alignment({os.fspath(out_png)!r})"
    boxes, assignment = _check_alignment(region_boxes, tokens, assignment, where)
    img = _load_image(image)
    factor = max(1, math.ceil(min_width / img.width))
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC)
    width, height = img.size

    font, label_font = _font(FONT_SIZE), _font(LABEL_FONT_SIZE)
    line_h = _line_height(font)
    lines = _wrap_words(tokens, font, width - 2 * MARGIN)
    title_h = line_h + MARGIN if title else 0
    sentence_h = len(lines) * line_h + 2 * MARGIN
    canvas = Image.new("RGB", (width, title_h + height + sentence_h), BACKGROUND)
    canvas.paste(img, (0, title_h))
    draw = ImageDraw.Draw(canvas)
    if title:
        title_text = _fit_text(str(title), font, width - 2 * MARGIN)
        draw.text((MARGIN, MARGIN // 2), title_text, fill=(0, 0, 0), font=font)

    colours = region_colours(assignment)
    labels: dict[int, list[str]] = {}
    for snip in snippets(assignment, tokens):
        labels.setdefault(snip.region, []).append(snip.text)
    # Large boxes first, so the outlines and labels of small boxes stay on top.
    order = sorted(colours, key=lambda r: -(boxes[r, 2] - boxes[r, 0]) * (boxes[r, 3] - boxes[r, 1]))
    for region in order:
        colour = colours[region]
        ymin, xmin, ymax, xmax = np.clip(boxes[region], 0.0, 1.0)
        left, right = round(xmin * (width - 1)), round(xmax * (width - 1))
        top, bottom = title_h + round(ymin * (height - 1)), title_h + round(ymax * (height - 1))
        draw.rectangle([left, top, right, bottom], outline=colour, width=BOX_WIDTH)
        text = _fit_text(f"{region}: " + " | ".join(labels[region]), label_font, width - 2 * BOX_WIDTH)
        text_w = label_font.getlength(text)
        label_h = _line_height(label_font)
        x = min(max(left, 0), width - text_w - 2 * BOX_WIDTH)
        y = min(max(top, title_h), title_h + height - label_h)
        draw.rectangle([x, y, x + text_w + 2 * BOX_WIDTH, y + label_h], fill=colour)
        draw.text((x + BOX_WIDTH, y + 2), text, fill=(255, 255, 255), font=label_font)

    space = font.getlength(" ")
    y = title_h + height + MARGIN
    for line in lines:
        x = float(MARGIN)
        for i in line:
            colour = colours.get(int(assignment[i]), UNALIGNED_COLOUR)
            draw.text((x, y), tokens[i], fill=colour, font=font)
            x += font.getlength(tokens[i]) + space
        y += line_h

    out_dir = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(out_dir, exist_ok=True)
    canvas.save(out_png, format="PNG")
    return os.fspath(out_png)


def _css_rgb(colour: tuple[int, int, int]) -> str:
    return "rgb({}, {}, {})".format(*colour)


def _coloured_sentence(tokens: Sequence[str], assignment: np.ndarray) -> str:
    colours = region_colours(assignment)
    spans = []
    for token, region in zip(tokens, assignment):
        colour = colours.get(int(region), UNALIGNED_COLOUR)
        spans.append(
            f'<span class="w" style="color: {_css_rgb(colour)}" title="region {int(region)}">'
            f"{html.escape(token)}</span>"
        )
    return " ".join(spans)


def write_alignment_html(items: Sequence[Mapping], out_html, title: str = "Word-region alignments") -> str:
    """Writes a static page showing alignment pictures with their coloured sentences.

    Args:
      items: one dict per picture: ``png`` (path of a PNG from :func:`draw_alignment`), ``tokens`` (words),
        ``assignment`` (region per word), and optionally ``title``. Images are referenced by paths relative to
        the page, so the page and its PNGs can be moved together.
      out_html: where to write the page.
      title: the page heading.

    Returns:
      out_html as a string.
    """
    page_dir = os.path.dirname(os.path.abspath(out_html))
    figures = []
    for i, item in enumerate(items):
        where = f"write_alignment_html: items[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be a dict (png, tokens, assignment), not {type(item).__name__}")
        for field in ("png", "tokens", "assignment"):
            if field not in item:
                raise ValueError(f"{where} has no field {field!r}")
        png = os.path.abspath(item["png"])
        if not os.path.isfile(png):
            raise FileNotFoundError(f"{where}.png: {os.fspath(item['png'])!r} does not exist")
        tokens = [str(t) for t in item["tokens"]]
        assignment = np.asarray(item["assignment"]).reshape(-1).astype(np.int64)
        if len(assignment) != len(tokens):
            raise ValueError(
                f"{where}: assignment has {len(assignment)} entries but there are {len(tokens)} tokens"
            )
        src = urllib.parse.quote(os.path.relpath(png, page_dir).replace(os.sep, "/"))
        caption = f"<h2>{html.escape(str(item['title']))}</h2>\n" if item.get("title") else ""
        colours = region_colours(assignment)
        snippet_rows = "".join(
            f'<li><span style="color: {_css_rgb(colours[s.region])}">region {s.region}</span>: '
            f"{html.escape(s.text)}</li>"
            for s in snippets(assignment, tokens)
        )
        figures.append(
            "<figure>\n"
            f"{caption}"
            f'<img src="{html.escape(src)}" alt="{html.escape(" ".join(tokens))}">\n'
            f'<figcaption><p class="sentence">{_coloured_sentence(tokens, assignment)}</p>\n'
            f"<ul>{snippet_rows}</ul></figcaption>\n"
            "</figure>"
        )

    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n"
        "<style>\n"
        "body { font-family: sans-serif; margin: 2em; background: #fafafa; }\n"
        "figure { display: inline-block; vertical-align: top; margin: 1em; padding: 1em; background: #fff;"
        " border: 1px solid #ddd; max-width: 560px; }\n"
        "figure img { max-width: 100%; }\n"
        "figure h2 { font-size: 1em; margin: 0 0 0.5em; }\n"
        ".sentence { font-size: 1.2em; font-weight: bold; }\n"
        "figcaption ul { font-size: 0.9em; padding-left: 1.2em; }\n"
        "</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(figures) + "\n</body>\n</html>\n"
    )
    os.makedirs(page_dir, exist_ok=True)
    with open(out_html, "w", encoding="utf-8") as f:
        f.write(page)
    return os.fspath(out_html)
