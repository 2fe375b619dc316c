"""Open a report in a real headless browser: the system's Chromium driven by Playwright.

Used by the tests (``tests/evaluation/test_scene_report.py``), the benchmark (``benchmarks/scene_report.py``) and the
README screenshot (``docs/scene_report_screenshot.py``). Playwright is only the driver: it never downloads a
browser here; :func:`find_chromium` finds the one installed by the system (Debian: ``apt-get install
chromium``), or ``$ROOFTRACE_CHROMIUM``. Every request the page makes is recorded, so a caller can check that
nothing left the file system.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium executable: ``$ROOFTRACE_CHROMIUM``, else the first of :data:`CHROMIUM_NAMES` on PATH."""
    env = os.environ.get("ROOFTRACE_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable() -> str | None:
    """Why a report cannot be opened in a browser here (``None`` when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    if find_chromium() is None:
        return "no Chromium found (apt-get install chromium, or set ROOFTRACE_CHROMIUM)"
    return None


@dataclass
class OpenedReport:
    """A report open in a page, with every request it made and what it said."""

    page: Any
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    load_s: float = 0.0

    def outside_requests(self) -> list[str]:
        """Requests that did not stay on the file system (anything but ``file:`` and ``data:``)."""
        return [u for u in self.requests if not u.startswith(("file:", "data:"))]


@contextmanager
def open_report(path: str | Path, *, width: int = 1200, height: int = 900, ready: str | None = None,
                timeout_ms: int = 30_000) -> Iterator[OpenedReport]:
    """Open ``path`` (an HTML file) from disk in headless Chromium, offline.

    ``ready`` is a JavaScript expression waited for after the ``load`` event (the scene report sets
    ``window.rooftraceReady``); ``load_s`` is the time from navigation to then. Requests to anything but
    ``file:`` and ``data:`` are recorded and aborted, so the page can fetch nothing from the network.

    Raises:
        RuntimeError: No browser here (see :func:`unavailable`).
    """
    from playwright.sync_api import sync_playwright

    why = unavailable()
    if why:
        raise RuntimeError(why)
    url = Path(path).resolve().as_uri()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, offline=True)
            page = context.new_page()
            opened = OpenedReport(page)
            page.on("request", lambda r: opened.requests.append(r.url))
            page.on("pageerror", lambda e: opened.errors.append(str(e)))
            page.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
            page.route(lambda u: not u.startswith(("file:", "data:")), lambda route: route.abort())
            t0 = time.perf_counter()
            page.goto(url, wait_until="load", timeout=timeout_ms)
            if ready:
                page.wait_for_function(ready, timeout=timeout_ms)
            opened.load_s = time.perf_counter() - t0
            yield opened
        finally:
            browser.close()


def screenshot_scene_map(report: str | Path, png: str | Path, *, width: int = 1100, height: int = 760,
                         zoom: float | None = 0.5, click: bool = True) -> Path:
    """Save a PNG of a scene report's map: zoomed in by ``zoom`` levels from the whole scene, with a
    building's popup open when ``click``."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with open_report(report, width=width, height=height, ready="window.rooftraceReady === true") as opened:
        page = opened.page
        page.add_style_tag(content=f"#map{{height:{height - 40}px !important}}")
        page.evaluate("window.rooftraceMap.map.invalidateSize(); window.rooftraceMap.map.fitBounds("
                      "window.rooftraceMap.bounds, {animate: false})")
        if zoom:
            page.evaluate(f"window.rooftraceMap.map.setZoom(window.rooftraceMap.map.getZoom() + {zoom}, {{animate: false}})")
        page.locator("#map").scroll_into_view_if_needed()
        if click:
            page.evaluate("""(() => {
              const m = window.rooftraceMap.map, c = m.getCenter();
              let best = null, d = Infinity;
              window.rooftraceMap.buildings.eachLayer(l => {
                const b = l.getBounds().getCenter(), e = m.distance(b, c);
                if (e < d && (l.feature.properties['class'] || 'building') !== 'false positive') { d = e; best = l; }
              });
              if (best) best.openPopup(best.getBounds().getCenter());
            })()""")
            page.wait_for_timeout(400)  # the popup fades in
        page.locator("#map").screenshot(path=str(png))
    return png
