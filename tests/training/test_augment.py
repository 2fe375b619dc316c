"""Training augmentation: the quick fog gives albumentations' fog pixel for pixel, and the same samples."""

from __future__ import annotations

import numpy as np
import pytest
from albumentations.augmentations.pixel import functional as fpixel

from rooftrace.config import AugmentConfig
from rooftrace.training import augment
from rooftrace.training.augment import QuickFog, add_fog_local, train_transform


@pytest.mark.parametrize("seed", range(6))
def test_quick_fog_is_albumentations_fog_pixel_for_pixel(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(40, 300, 2))
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    n = int(rng.integers(50, 2000))
    # particles near and beyond the edges too: their discs are cut by the image
    positions = [(int(rng.integers(-25, w + 25)), int(rng.integers(-25, h + 25))) for _ in range(n)]
    radiuses = [int(rng.integers(1, 40)) for _ in range(n)]
    intensity = float(rng.uniform(0.1, 0.4))
    want = fpixel.add_fog(img, intensity, 0.08, positions, radiuses)
    got = add_fog_local(img, intensity, 0.08, positions, radiuses)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert not np.array_equal(got, img)  # the fog did something


def test_the_training_pipeline_draws_the_same_samples_with_the_quick_fog(monkeypatch):
    """Only how the fog is drawn changed: with every sample fogged, the pipeline's outputs are those of
    albumentations' RandomFog under the same seed."""
    import albumentations as A

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(8)]
    masks = [rng.integers(0, 2, (128, 128, 3), dtype=np.uint8) for _ in range(8)]
    cfg = AugmentConfig(haze=1.0)

    def run() -> list[np.ndarray]:
        t = train_transform(cfg)
        return [np.concatenate([o["image"].ravel(), o["mask"].ravel()]) for o in (t(image=i, mask=m) for i, m in zip(images, masks))]

    calls = []
    monkeypatch.setattr(augment, "add_fog_local", lambda *a: calls.append(1) or add_fog_local(*a))
    quick = run()
    assert calls  # some samples were fogged (the rest downscaled)
    monkeypatch.setattr(augment, "QuickFog", A.RandomFog)
    slow = run()
    assert all(np.array_equal(a, b) for a, b in zip(quick, slow))
    assert QuickFog is not A.RandomFog and issubclass(QuickFog, A.RandomFog)

