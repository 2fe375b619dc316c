"""Make docs/scene-report.png, the README's picture of a scene report's map, from the sample pack's Austin scene.

    .venv/bin/python docs/scene_report_screenshot.py [--sample DIR] [--model MODEL] [--work /tmp/rooftrace-shot]

Runs ``rooftrace predict-scene`` on ``scenes/inria_austin.tif`` (the shipped model unless --model), writes the
scene report against ``scenes/inria_austin.geojson`` and saves a screenshot of its map, with one building's
popup open, taken in headless Chromium by :func:`rooftrace.evaluation.browser.screenshot_scene_map` (the
function the browser tests use).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, default=Path(os.environ.get("ROOFTRACE_SAMPLE_DIR", REPO.parent / "shared" / "data" / "buildings-sample")))
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rooftrace-shot"))
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "scene-report.png")
    args = ap.parse_args(argv)
    from rooftrace.cli import main as rooftrace
    from rooftrace.evaluation.browser import screenshot_scene_map
    from rooftrace.evaluation.scene_report import write_scene_report

    scene, labels = args.sample / "scenes" / "inria_austin.tif", args.sample / "scenes" / "inria_austin.geojson"
    gpkg = args.work / "inria_austin.gpkg"
    cmd = ["predict-scene", str(scene), "--out", str(gpkg), "--force"] + (["--model", str(args.model)] if args.model else [])
    if rooftrace(cmd) != 0:
        return 1
    result = write_scene_report(gpkg, scene, args.work / "report", labels=labels, force=True)
    print(result.summary())
    png = screenshot_scene_map(result.path, args.png, width=1000, height=700, zoom=0.75)
    from PIL import Image

    with Image.open(png) as im:  # 256 colours: a third of the bytes, no visible difference at this size
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(png, optimize=True)
    print(png, f"{png.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
