"""File helpers shared by the readers and writers: JSON with clear errors, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from rooftrace.core.errors import RooftraceError


def read_text(path: Path) -> str:
    """A UTF-8 text file's content (a BOM is dropped), with errors that name the file."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RooftraceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RooftraceError(f"{path}: is a folder, expected a file") from None
    except UnicodeDecodeError:
        raise RooftraceError(f"{path}: not a text file (not UTF-8)") from None


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing, empty or malformed file raises :class:`RooftraceError`."""
    text = read_text(path)
    if not text.strip():
        raise RooftraceError(f"{path}: the file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RooftraceError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, nesting too deep
        raise RooftraceError(f"{path}: JSON that cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None


def atomic_write_text(path: str | Path, text: str, force: bool = False) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    A reader never sees a half-written file, and a crash leaves the old file (or none). The file
    gets the mode a plain ``open()`` would give (0666 less the umask), not the temporary file's 0600.

    Raises:
        RooftraceError: ``path`` exists and ``force`` is false, or the folder or the file cannot be
            written (a full disk included); the message names ``path``, never the temporary file.
    """
    return atomic_write_bytes(path, text.encode("utf-8"), force=force)


def atomic_write_bytes(path: str | Path, data: bytes, force: bool = False) -> Path:
    """Bytes version of :func:`atomic_write_text`."""
    path = Path(path)
    if path.exists() and not force:
        raise RooftraceError(f"{path}: already exists; pass --force to overwrite it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise RooftraceError(f"{path}: cannot write here ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp's 0600, made what open() would give
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota, a read-only folder: named by the file meant, not the temporary one
        Path(tmp).unlink(missing_ok=True)
        raise RooftraceError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class WriteQueue:
    """Files written atomically (:func:`atomic_write_bytes`, overwriting) by one background thread, in the order
    they were put, so that whoever produces them does not wait on the disk (an ``fsync`` a file: on a network
    share, milliseconds each).

    At most ``pending`` puts wait at once: :meth:`put` waits for the oldest beyond that, so memory stays
    bounded when the disk is slower than the producer. A write's error (a full disk) is raised by the next
    :meth:`put` or by :meth:`close`; the files put before it are written. Leaving the context manager writes
    what was put (even on an error or an interrupt, so every finished result is kept) and stops the thread.

    Attributes:
        seconds, cpu: Wall and CPU seconds the thread spent writing.
    """

    def __init__(self, pending: int = 32):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(1, thread_name_prefix="rooftrace-write")
        self._jobs: deque[Any] = deque()
        self._pending = max(1, pending)
        self.seconds = 0.0
        self.cpu = 0.0

    def put(self, files: list[tuple[Path, bytes | str]]) -> None:
        """Write ``(path, bytes or text)`` pairs, in this order, after everything put before."""
        self._reap(self._pending - 1)
        self._jobs.append(self._pool.submit(self._write, files))

    def _write(self, files: list[tuple[Path, bytes | str]]) -> None:
        t, c = time.perf_counter(), time.thread_time()
        try:
            for path, data in files:
                (atomic_write_text if isinstance(data, str) else atomic_write_bytes)(path, data, force=True)
        finally:
            self.seconds += time.perf_counter() - t
            self.cpu += time.thread_time() - c

    def _reap(self, keep: int) -> None:
        """Wait until at most ``keep`` puts are unwritten; raise the first error among those written (as
        :func:`rooftrace.core.threads.ordered_map` takes its results)."""
        while self._jobs and (len(self._jobs) > keep or self._jobs[0].done()):
            self._jobs.popleft().result()

    def close(self) -> None:
        """Write everything put; raise the first error."""
        try:
            self._reap(0)
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> WriteQueue:
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        try:
            self.close()
        except Exception:
            if kind is None:
                raise  # already failing: what was put is written, and the error that stopped the run is kept


def probe_writable(folder: str | Path, meant: str | Path, nothing: str = "") -> None:
    """Make ``folder`` (and its parents) if missing and check that a file can be created in it, before any
    work: a run that cannot write its output stops at once, not after all its work.

    Args:
        folder: Where the output goes.
        meant: The output the message names (a file, or ``folder`` itself).
        nothing: What the message ends with (``"; nothing was predicted"``).

    Raises:
        RooftraceError: ``MEANT: cannot write it (WHY)NOTHING``, naming ``meant``, never the probe file.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rooftrace-", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise RooftraceError(f"{meant}: cannot write it ({folder} is a file, not a folder){nothing}") from None
    except NotADirectoryError as exc:
        raise RooftraceError(f"{meant}: cannot write it ({exc.strerror}){nothing}") from None
    except OSError as exc:
        raise RooftraceError(f"{meant}: cannot write it ({exc.strerror or exc}){nothing}") from None


def write_error_reason(exc: BaseException, path: str | Path, temporary: tuple[str | Path, ...] = ()) -> str:
    """Why writing ``path`` failed, for the user: the system's reason when there is one (a full disk, a file size
    limit, a read-only folder), else the library's first line with what is short said first (GDAL and SQLite say
    "Write failed" or "sqlite3_exec(INSERT ...)" for a full disk); never the ``temporary`` files' names."""
    text = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0] or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not getattr(cause, "strerror", None):
        cause = cause.__cause__ or cause.__context__
    if cause is not None and cause.strerror not in text:  # "Write failed. See previous exception": the previous one
        text = f"{cause.strerror}; {text}"
    if cause is None and not getattr(exc, "strerror", None):
        free = free_bytes(Path(path).parent)
        limit = file_size_limit()
        short = text if len(text) <= 100 else text[:97] + "..."  # the library's words after the reason, shortened
        if free is not None and free < 16 * 1024 * 1024:
            text = f"No space left on device ({free:,} bytes free); {short}"
        elif limit is not None:
            text = f"the file size limit (ulimit -f) of {limit:,} bytes was reached, or the disk is full; {short}"
    for t in temporary:
        text = text.replace(str(t), str(path))
    return text if len(text) <= 300 else text[:297] + "..."


def file_size_limit() -> int | None:
    """The soft limit on the size of a file this process writes (``ulimit -f``), ``None`` when there is none."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else int(soft)


def free_bytes(folder: str | Path) -> int | None:
    """Bytes free to this user in ``folder``'s file system (``None`` when the system does not say)."""
    try:
        st = os.statvfs(folder)
        return st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        return None


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` over ``dst`` through :func:`atomic_write_bytes` (errors name ``dst``, no temporary file stays)."""
    return atomic_write_bytes(dst, Path(src).read_bytes(), force=True)


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else set and
    restored under a lock (other threads writing files meanwhile would see it change)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


