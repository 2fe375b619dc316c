"""The offline map library bundled with rooftrace, and the pieces of an HTML page that use it.

Leaflet 1.9.4 (BSD-2-Clause, from the npm registry: ``npm pack leaflet@1.9.4``) ships in
``rooftrace/evaluation/static/leaflet/`` with its licence. :func:`copy_leaflet` puts a copy beside a report,
so the report opens from the file system with nothing fetched from the network.

Data for a page goes in a ``.js`` file that assigns JSON to a global variable (:func:`write_js_data`), so
a page opened from ``file://`` reads it with a ``<script>`` tag, without fetch or XHR (which browsers refuse
for ``file://``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from rooftrace.core.files import atomic_copy, atomic_write_text

LEAFLET_VERSION = "1.9.4"
#: Files of the bundled Leaflet, relative to ``static/leaflet/`` (and to the copy beside a report).
LEAFLET_FILES = ("leaflet.js", "leaflet.css", "LICENSE", "images/layers.png", "images/layers-2x.png",
                 "images/marker-icon.png", "images/marker-icon-2x.png", "images/marker-shadow.png")


def leaflet_dir() -> Path:
    """The bundled Leaflet folder inside the installed package."""
    return Path(str(resources.files("rooftrace.evaluation") / "static" / "leaflet"))


def copy_leaflet(out_dir: str | Path) -> Path:
    """Copy the bundled Leaflet into ``OUT_DIR/leaflet/`` (replacing an older copy); returns that folder."""
    src, dst = leaflet_dir(), Path(out_dir) / "leaflet"
    for name in LEAFLET_FILES:
        atomic_copy(src / name, dst / name)  # a full disk names the copy, never the package's file; no partial copy stays
    return dst


def write_js_data(path: str | Path, variable: str, data: Any) -> Path:
    """Write ``data`` as compact JSON assigned to ``window.<variable>``; a page loads it with a script tag.

    ``</`` is escaped so the text could also be inlined in a ``<script>`` element."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).replace("</", "<\\/")
    return atomic_write_text(path, f"window.{variable}={text};\n", force=True)


LEAFLET_HEAD = ('<link rel="stylesheet" href="leaflet/leaflet.css">\n'
                '<script src="leaflet/leaflet.js"></script>\n')
