"""File helpers shared by the readers and writers: JSON with clear errors, atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
import threading
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


