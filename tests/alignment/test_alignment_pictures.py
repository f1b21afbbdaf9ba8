"""Alignment pictures (PNG) and the HTML page that shows them."""

import re

import numpy as np
import pytest
from PIL import Image

from karpalign.alignment.pictures import PALETTE, draw_alignment, region_colours, write_alignment_html

TOKENS = "a red circle left of a blue square".split()
ASSIGNMENT = [1, 1, 1, 0, 0, 2, 2, 2]
BOXES = np.array([[0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.9, 0.9]])


def grey_image(height=48, width=64):
    return np.full((height, width, 3), 128, dtype=np.uint8)


def test_region_colours_follow_first_occurrence():
    assert region_colours([4, 4, 0, -1, 2, 0]) == {4: PALETTE[0], 0: PALETTE[1], 2: PALETTE[2]}
    assert len(set(PALETTE)) == len(PALETTE)


def test_draw_alignment_writes_png_with_coloured_boxes_and_words(tmp_path):
    out = draw_alignment(grey_image(), BOXES, TOKENS, ASSIGNMENT, tmp_path / "sub" / "a.png", min_width=400)
    picture = np.asarray(Image.open(out).convert("RGB"))
    factor = 7  # ceil(400 / 64)
    width, image_h = 64 * factor, 48 * factor
    assert picture.shape[1] == width and picture.shape[0] > image_h  # sentence band under the image

    colours = region_colours(ASSIGNMENT)  # {1: red, 0: blue, 2: green}
    assert len(set(colours.values())) == 3
    # Middle of the left edge of each region box carries that region's colour.
    for region, colour in colours.items():
        ymin, xmin, ymax, _ = BOXES[region]
        x = round(xmin * (width - 1)) + 1
        y = round((ymin + ymax) / 2 * (image_h - 1))
        assert tuple(picture[y, x]) == colour, f"region {region}"
    # Inside the boxes, away from the outlines and labels, the image is untouched.
    assert tuple(picture[round(0.45 * image_h), round(0.3 * width)]) == (128, 128, 128)
    # The sentence band shows every region's colour (words drawn in their region's colour).
    band = picture[image_h:].reshape(-1, 3)
    for colour in colours.values():
        assert np.all(band == colour, axis=1).sum() > 10


def test_draw_alignment_title_and_path_input(tmp_path):
    src = tmp_path / "scene.png"
    Image.fromarray(grey_image(300, 500)).save(src)
    plain = np.asarray(Image.open(draw_alignment(src, BOXES, TOKENS, ASSIGNMENT, tmp_path / "plain.png")))
    titled_png = draw_alignment(src, BOXES, TOKENS, ASSIGNMENT, tmp_path / "t.png", title="x")
    titled = np.asarray(Image.open(titled_png))
    assert plain.shape[1] == titled.shape[1] == 500  # wide enough already: not enlarged
    assert titled.shape[0] > plain.shape[0] > 300


def test_long_sentences_wrap_onto_more_lines(tmp_path):
    short = draw_alignment(grey_image(), BOXES, TOKENS, ASSIGNMENT, tmp_path / "s.png")
    long_tokens = TOKENS * 8
    long = draw_alignment(grey_image(), BOXES, long_tokens, ASSIGNMENT * 8, tmp_path / "l.png")
    assert Image.open(long).size[0] == Image.open(short).size[0]
    assert Image.open(long).size[1] > Image.open(short).size[1]


@pytest.mark.parametrize(
    "image, boxes, assignment, error, message",
    [
        (np.zeros((8, 8, 3), np.float32), BOXES, ASSIGNMENT, ValueError, "uint8 \\(H, W, 3\\)"),
        ("/nonexistent/scene.jpg", BOXES, ASSIGNMENT, FileNotFoundError, "does not exist"),
        (grey_image(), BOXES[:, :3], ASSIGNMENT, ValueError, "region_boxes must be \\(M, 4\\)"),
        (grey_image(), BOXES, ASSIGNMENT[:-1], ValueError, "7 entries but there are 8 tokens"),
        (grey_image(), BOXES, [3] * 8, ValueError, "names region 3 but there are 3 region boxes"),
    ],
)
def test_draw_alignment_rejects_bad_input(tmp_path, image, boxes, assignment, error, message):
    with pytest.raises(error, match=message):
        draw_alignment(image, boxes, TOKENS, assignment, tmp_path / "x.png")


def test_html_page_embeds_relative_images_and_coloured_words(tmp_path):
    pictures = tmp_path / "pictures"
    items = []
    for i, (tokens, assignment) in enumerate([(TOKENS, ASSIGNMENT), (["two", "dogs", "<run>"], [2, 2, 0])]):
        png = draw_alignment(grey_image(), BOXES, tokens, assignment, pictures / f"img {i}.png")
        items.append({"png": png, "tokens": tokens, "assignment": assignment, "title": f"image {i}"})
    out = write_alignment_html(items, tmp_path / "report" / "alignments.html")
    page = open(out, encoding="utf-8").read()

    assert re.findall(r'<img src="([^"]+)"', page) == ["../pictures/img%200.png", "../pictures/img%201.png"]
    for word in TOKENS + ["two", "dogs"]:
        assert f">{word}</span>" in page
    assert "&lt;run&gt;" in page and "<run>" not in page  # escaped
    red, blue = PALETTE[0], PALETTE[1]  # sentence 0: region 1 first, then region 0
    assert f'color: rgb{red}" title="region 1">red</span>' in page
    assert f'color: rgb{blue}" title="region 0">left</span>' in page
    assert "region 2</span>: two dogs" in page and "image 1" in page


def test_html_rejects_bad_items(tmp_path):
    png = draw_alignment(grey_image(), BOXES, TOKENS, ASSIGNMENT, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"items\[0\] has no field 'assignment'"):
        write_alignment_html([{"png": png, "tokens": TOKENS}], tmp_path / "p.html")
    with pytest.raises(FileNotFoundError, match=r"items\[1\]\.png"):
        write_alignment_html(
            [{"png": png, "tokens": TOKENS, "assignment": ASSIGNMENT},
             {"png": tmp_path / "missing.png", "tokens": TOKENS, "assignment": ASSIGNMENT}],
            tmp_path / "p.html",
        )
    with pytest.raises(ValueError, match="2 entries but there are 8 tokens"):
        write_alignment_html([{"png": png, "tokens": TOKENS, "assignment": [0, 1]}], tmp_path / "p.html")
