"""`rooftrace report`: the HTML report of predictions against ground truth."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from shapely.geometry import box

from rooftrace.cli import main
from rooftrace.labels.begc import write_begc_csv
from rooftrace.labels.coco import read_coco


def test_report_counts_and_draws_every_tile(sample, tmp_path, capsys):
    gt = read_coco(sample / "test" / "test.json")
    # Predictions: the truth, minus the first building of image 0, plus one false square on image 1.
    gt[0].footprints = gt[0].footprints[1:]
    gt[1].footprints = gt[1].footprints + [box(0, 0, 3, 3)]
    pred = write_begc_csv(gt, tmp_path / "pred.csv")
    out = tmp_path / "report"
    assert main(["report", "--pred", str(pred), "--gt", str(sample / "test" / "test.json"), "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    scores = json.loads((out / "scores.json").read_text())
    assert (scores["fn"], scores["fp"], scores["tp"]) == (1, 1, 352)
    per = {p["image_id"]: p for p in scores["per_image"]}
    assert (per[0]["fn"], per[1]["fp"]) == (1, 1)
    assert len(list((out / "tiles").glob("*.png"))) == 10 and html.count("<figure") == 10
    assert "true positive" in html and "missed building" in html and "By source" in html
    # The worst image is drawn first, and its picture shows the missed building in orange.
    first = html.index("<figure")
    assert "0.99" in html[first:first + 300] or "F1 0.9" in html[first:first + 300]
    tile = Image.open(out / "tiles" / "0000.png").convert("RGB")
    colours = set(tile.getdata())
    assert (255, 160, 0) in colours and (40, 220, 60) in colours
    assert main(["report", "--pred", str(pred), "--gt", str(sample / "test" / "test.json"), "--out", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err


def test_report_of_a_folder_reads_pixels_not_a_longitude_latitude_geojson(sample, tmp_path):
    from rooftrace.evaluation.report import build_report

    gt = read_coco(sample / "test" / "test.json")
    n = sum(len(img.footprints) for img in gt)
    folder = tmp_path / "pred"
    folder.mkdir()
    write_begc_csv(gt, folder / "submission.csv")
    # A georeferenced run's GeoJSON is in longitude/latitude: the report must not score it against pixels.
    (folder / "predictions.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    report = build_report(folder, sample / "test" / "test.json", tmp_path / "r1")
    assert report.score.tp == n  # scored from submission.csv (the empty GeoJSON would find nothing)
    # A pixel GeoJSON (it has scores) is preferred when the tiles were not georeferenced.
    (folder / "predictions.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [],
                                                            "rooftrace": {"coordinates": "pixel"}}))
    report = build_report(folder, sample / "test" / "test.json", tmp_path / "r2")
    assert report.score.tp == 0 and report.score.fn == n  # scored from the (empty) pixel GeoJSON


def test_report_links_full_size_pictures_and_predict_overlays_and_shows_scores(sample, tmp_path):
    from rooftrace.labels.geojson import write_geojson

    gt = read_coco(sample / "test" / "test.json")
    folder = tmp_path / "pred"
    (folder / "overlays").mkdir(parents=True)
    for img in gt:
        img.scores = [0.875] * len(img.footprints)
    gt[1].footprints = gt[1].footprints + [box(0, 0, 30, 30)]
    gt[1].scores = gt[1].scores + [0.25]
    write_geojson(gt, folder / "predictions.geojson")  # a predict folder's pixel GeoJSON, with scores
    for stem in ("0000", "0001"):
        Image.new("RGB", (8, 8)).save(folder / "overlays" / f"{stem}.png")
    out = tmp_path / "report"
    assert main(["report", "--pred", str(folder), "--gt", str(sample / "test" / "test.json"), "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert html.count("full size</a>") == 10 and html.count("predict's overlay</a>") == 2
    assert "href='../pred/overlays/0000.png'" in html
    # One clickable shape per drawn building, each saying what it is and its score.
    assert html.count("<path class='b ") == gt.n_footprints
    assert html.count("score 0.875, true positive") == 2 * (gt.n_footprints - 1) and "score 0.250, false positive" in html
    assert "http" not in html
    # The picture carries the scores too: white text inside the false square at the top-left corner.
    fig = next(f for f in html.split("<figure")[1:] if "score 0.250" in f)
    pic = np.asarray(Image.open(out / fig.split("src='")[1].split("'")[0]).convert("RGB"))
    assert (pic[4:56, 4:56] > 200).all(axis=-1).sum() > 3
