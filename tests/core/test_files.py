"""The background file writer of predict (core.files.WriteQueue)."""

from __future__ import annotations

import threading
import time

import pytest

import rooftrace.core.files as files
from rooftrace.core.errors import RooftraceError
from rooftrace.core.files import WriteQueue


def test_files_are_written_in_the_order_put_off_the_calling_thread(tmp_path, monkeypatch):
    written, threads = [], set()
    write = files.atomic_write_bytes

    def slow(path, data, force=False):
        time.sleep(0.01)
        threads.add(threading.get_ident())
        written.append(path.name)
        return write(path, data, force=force)

    monkeypatch.setattr(files, "atomic_write_bytes", slow)
    t = time.perf_counter()
    with WriteQueue(pending=64) as q:
        for k in range(20):
            q.put([(tmp_path / "a" / f"{k}.png", bytes([k])), (tmp_path / f"{k}.json", f'{{"k": {k}}}')])
        put = time.perf_counter() - t
    assert put < 0.1  # 40 writes of 10 ms each did not hold the caller
    assert written == [n for k in range(20) for n in (f"{k}.png", f"{k}.json")]
    assert (tmp_path / "a" / "7.png").read_bytes() == bytes([7]) and (tmp_path / "7.json").read_text() == '{"k": 7}'
    assert threading.get_ident() not in threads and q.seconds >= 0.4


def test_a_slow_disk_holds_the_caller_at_the_pending_bound(tmp_path, monkeypatch):
    gate = threading.Event()
    write = files.atomic_write_bytes
    monkeypatch.setattr(files, "atomic_write_bytes", lambda path, data, force=False: (gate.wait(), write(path, data, force=force))[1])
    q = WriteQueue(pending=3)
    for k in range(3):
        q.put([(tmp_path / f"{k}", b"x")])
    blocked = threading.Thread(target=q.put, args=([(tmp_path / "3", b"x")],))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # a fourth waits for the first
    gate.set()
    blocked.join(5)
    q.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2", "3"]


def test_a_write_error_names_the_file_and_stops_the_next_put_or_the_close(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "taken").mkdir()  # a folder where the file should go: the rename fails
    q = WriteQueue()
    q.put([(tmp_path / "first", b"1"), (tmp_path / "ro" / "taken", b"2")])
    with pytest.raises(RooftraceError, match="taken"):
        q.close()
    assert (tmp_path / "first").read_bytes() == b"1"  # what came before it is written
    with pytest.raises(RooftraceError, match="taken"), WriteQueue() as q:
        q.put([(tmp_path / "ro" / "taken", b"2")])
        time.sleep(0.2)
        q.put([(tmp_path / "after", b"3")])


def test_leaving_on_an_error_writes_what_was_put_and_keeps_the_error(tmp_path):
    with pytest.raises(KeyError), WriteQueue() as q:
        for k in range(5):
            q.put([(tmp_path / f"{k}", b"x")])
        raise KeyError("the run's own error")
    assert len(list(tmp_path.iterdir())) == 5
