"""Headless Chromium for checking and picturing the report: the DOM after load, and PNG screenshots.

The report's inline script sets ``data-images-ok`` / ``data-images-count`` on ``<body>`` once the page has
loaded, so :func:`dump_dom` + :func:`images_ok` tell whether every picture loaded from disk. Chromium runs
with a throw-away profile and without network services (no sync, no component updates).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

CHROMIUM = os.environ.get("KARPALIGN_CHROMIUM", "/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--virtual-time-budget=5000")


class BrowserError(RuntimeError):
    """Chromium is missing or failed; the message says which and shows its stderr."""


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    if not os.path.exists(CHROMIUM):
        raise BrowserError(f"{CHROMIUM} not found: install it with `apt-get install chromium` "
                           "(`make test` does), or point KARPALIGN_CHROMIUM at a Chromium binary")
    profile = tempfile.mkdtemp(prefix="karpalign-chromium-")
    try:
        proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BrowserError(f"chromium did not finish within {timeout:.0f}s ({' '.join(args)})") from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0:
        raise BrowserError(f"chromium exited with code {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def _url(page: str) -> str:
    return "file://" + os.path.abspath(page)


def dump_dom(page: str, timeout: float = 120.0) -> str:
    """The serialized DOM of a local HTML file after its load event (scripts have run)."""
    return _run(["--dump-dom", _url(page)], timeout).stdout


def images_ok(dom: str) -> tuple[bool, int]:
    """(every <img> loaded, number of images) as the report's script recorded them on <body>."""
    body = re.search(r"<body[^>]*>", dom)
    if body is None:
        raise BrowserError("the DOM has no <body> element")
    ok = re.search(r'data-images-ok="(\w+)"', body.group(0))
    count = re.search(r'data-images-count="(\d+)"', body.group(0))
    if ok is None or count is None:
        raise BrowserError("the page's image check did not run (no data-images-ok on <body>)")
    return ok.group(1) == "true", int(count.group(1))


def screenshot(page: str, out_png: str, width: int = 1300, height: int = 2400, timeout: float = 120.0) -> str:
    """A PNG screenshot of a local HTML file (window width x height pixels)."""
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    _run([f"--screenshot={os.path.abspath(out_png)}", f"--window-size={width},{height}", _url(page)], timeout)
    if not os.path.exists(out_png):
        raise BrowserError(f"chromium did not write {out_png}")
    return out_png
