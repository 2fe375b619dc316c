"""``core.threads.ordered_map``: results in order, bounded read-ahead, errors at their turn, threads joined."""

from __future__ import annotations

import threading

import pytest

from rooftrace.core.threads import ordered_map


def test_results_come_in_input_order_whatever_finishes_first():
    second_done = threading.Event()

    def fn(i: int) -> int:
        if i == 0:
            assert second_done.wait(60)  # item 0 finishes only after item 1 has
        if i == 1:
            second_done.set()
        return i * i

    assert list(ordered_map(fn, range(20), 3)) == [i * i for i in range(20)]
    second_done.set()
    assert list(ordered_map(lambda i: i * i, range(5), 1)) == [i * i for i in range(5)]


def test_items_are_read_at_most_one_more_than_the_threads_ahead():
    taken = []

    def items():
        for i in range(30):
            taken.append(i)
            yield i

    for k, _ in enumerate(ordered_map(lambda i: i, items(), 2)):
        assert len(taken) <= k + 1 + 3  # the one yielded, two running, one waiting


def test_an_error_is_raised_at_its_turn_and_the_threads_are_joined():
    seen = []

    def fn(i: int) -> int:
        if i == 4:
            raise ValueError("item 4")
        return i

    gen = ordered_map(fn, range(10), 2, name="rooftrace-test")
    with pytest.raises(ValueError, match="item 4"):
        for v in gen:
            seen.append(v)
    assert seen == [0, 1, 2, 3]
    assert not [t for t in threading.enumerate() if t.name.startswith("rooftrace-test")]


def test_one_worker_runs_in_the_calling_thread():
    me = threading.get_ident()
    assert set(ordered_map(lambda _: threading.get_ident(), range(4), 1)) == {me}
