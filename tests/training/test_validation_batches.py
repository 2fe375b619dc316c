"""Validation batches: tiles of one padded size together (rooftrace.training.dataset.same_size_batches)."""

from __future__ import annotations


def test_validation_batches_hold_one_padded_size_each():
    """Validation runs tiles of one padded size together (as predict pads them), every tile once."""
    from rooftrace.training.dataset import same_size_batches

    sizes = [(64, 63), (512, 512), (300, 300), (60, 64), (512, 500), (1058, 1126), (320, 310), (33, 33), (64, 64)]
    batches = same_size_batches(sizes, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
    padded = [{(-(-sizes[i][0] // 32) * 32, -(-sizes[i][1] // 32) * 32) for i in b} for b in batches]
    assert all(len(p) == 1 for p in padded) and all(1 <= len(b) <= 2 for b in batches)
    order = [next(iter(p)) for p in padded]
    assert order == sorted(order)  # sizes in increasing order, indices in order within a size
    assert batches == [[0, 3], [7, 8], [2, 6], [1, 4], [5]]  # 33 x 33 px is padded to 64 x 64 too
    # a pixel budget: 512 x 512 px a batch at most, but never less than one tile
    capped = same_size_batches(sizes, batch_size=4, max_pixels=512 * 512)
    assert capped == [[0, 3, 7, 8], [2, 6], [1], [4], [5]]
