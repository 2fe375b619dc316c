"""The collector's settings during a run (core.collector)."""

from __future__ import annotations

import gc

from rooftrace.core.collector import collector_paused, heap_frozen


def test_the_heap_is_frozen_for_the_run_and_given_back_after():
    assert gc.get_freeze_count() == 0
    with heap_frozen():
        assert gc.get_freeze_count() > 0
        cycle: list = []
        cycle.append(cycle)  # what the run makes is still collected
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0


def test_a_heap_someone_else_froze_stays_theirs():
    gc.freeze()
    try:
        n = gc.get_freeze_count()
        with heap_frozen():
            pass
        assert gc.get_freeze_count() == n  # not unfrozen by us
    finally:
        gc.unfreeze()


def test_the_collector_is_paused_inside_and_restored_as_it_was():
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # it was off: it stays off
    finally:
        gc.enable()
