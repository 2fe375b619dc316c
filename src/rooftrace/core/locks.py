"""Exclusive outputs: one run at a time writes an output folder, or a scene file and its sidecars.

:class:`OutputLock` takes an advisory lock (``flock``) on a small lock file beside the target
(``OUT/.rooftrace.lock`` for a folder, ``.<name>.lock`` beside a file) and writes its process id
into it. A second run on the same target finds the lock held and stops at once with
:class:`OutputBusy`, naming the target and the other run's process id. The kernel drops the lock
when its process dies, however it dies, so a lock file a killed run left behind is taken over by
the next run: a stale lock never blocks anyone, and a live one is never broken.

``flock`` locks belong to an open file description, so two runs in one process (threads, a notebook
cell started twice) exclude each other as two processes do.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from rooftrace.core.errors import RooftraceError

F = TypeVar("F", bound=Callable[..., Any])

#: The lock file of an output folder.
FOLDER_LOCK = ".rooftrace.lock"


class OutputBusy(RooftraceError):
    """The output is being written by another live run (its process id in :attr:`pid`)."""

    def __init__(self, message: str, target: Path, pid: int | None):
        super().__init__(message)
        self.target, self.pid = target, pid


def lock_path(target: str | Path, folder: bool = False) -> Path:
    """The lock file of ``target``: ``target/.rooftrace.lock`` for a folder, else ``.<name>.lock`` beside it."""
    target = Path(target)
    return target / FOLDER_LOCK if folder else target.with_name(f".{target.name}.lock")


def holder(target: str | Path, folder: bool = False) -> int | None:
    """The process id of the live run holding ``target``'s lock, else ``None`` (free, or a stale file)."""
    path = lock_path(target, folder)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _read_pid(path) or -1
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class OutputLock:
    """An exclusive lock on an output (a folder, or a file with its sidecars), held until :meth:`release`.

    Use as a context manager::

        with OutputLock(out_dir, folder=True):
            ...  # write into out_dir

    Raises:
        OutputBusy: Another live run holds it (a :class:`RooftraceError`: one line, exit 2).
        RooftraceError: The lock file cannot be created (a read-only folder, ...), naming the target.
    """

    def __init__(self, target: str | Path, folder: bool = False, what: str = "output"):
        self.target, self.folder, self.what = Path(target), folder, what
        self.path = lock_path(self.target, folder)
        self._fd: int | None = None
        self.acquire()

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            what = "the output folder" if self.folder else "its folder"
            raise RooftraceError(f"{self.target}: cannot create {what} ({exc.strerror or exc})") from None
        for _ in range(20):  # the file may be replaced under us by a run that released it meanwhile
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise RooftraceError(f"{self.target}: cannot write it ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    pid = _read_pid(self.path)
                    who = f"process {pid}" if pid else "another process"
                    raise OutputBusy(f"{self.target}: in use by another rooftrace run ({who}); wait for it to finish, "
                                     f"or choose another {self.what}", self.target, pid) from None
                raise RooftraceError(f"{self.target}: cannot lock it ({exc.strerror or exc})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # released and removed by its holder between our open and our lock: try again
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return
        raise RooftraceError(f"{self.target}: cannot lock it (its lock file keeps changing)")

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __del__(self, _close=os.close) -> None:  # pragma: no cover - a lock dropped without release
        fd = getattr(self, "_fd", None)
        if fd is not None:
            self._fd = None
            try:
                _close(fd)  # the kernel drops the lock with the file; the stale lock file blocks no one
            except OSError:
                pass


@contextmanager
def exclusive_folder(out: str | Path, what: str = "--out") -> Iterator[Path]:
    """Hold ``out``'s folder lock for a run that writes into it (a second run stops at once with :class:`OutputBusy`);
    a folder the run made is removed again when the run stops before writing into it."""
    out = Path(out)
    created = not out.exists()
    try:
        with OutputLock(out, folder=True, what=what):
            yield out
    except BaseException:
        if created:
            with suppress(OSError):
                out.rmdir()  # only when empty
        raise


def exclusive(param: str, what: str = "--out") -> Callable[[F], F]:
    """Decorate a function that writes into the folder given as its argument ``param``: it runs inside
    :func:`exclusive_folder` of that folder."""
    def deco(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with exclusive_folder(sig.bind_partial(*args, **kwargs).arguments[param], what):
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return deco
