"""Fixtures shared by the training tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mini_split(sample, tmp_path_factory) -> Path:
    """Four 256 x 256 train and val tiles of the sample pack (symlinked), as BEGC-style splits.

    With a 256 crop and no augmentation every epoch sees the same pixels, so a working training loop
    must lower the loss within two epochs."""
    root = tmp_path_factory.mktemp("mini")
    for split in ("train", "val"):
        data = json.loads((sample / split / f"{split}.json").read_text())
        imgs = [i for i in data["images"] if i["width"] == 256][:4]
        ids = {i["id"] for i in imgs}
        (root / split / "image").mkdir(parents=True)
        for i in imgs:
            os.symlink(sample / split / i["file_name"], root / split / i["file_name"])
        anns = [a for a in data["annotations"] if a["image_id"] in ids]
        (root / split / f"{split}.json").write_text(json.dumps({"images": imgs, "annotations": anns}))
    return root
