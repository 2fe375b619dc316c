"""Shared foundations every stage uses, free of torch.

- :mod:`~rooftrace.core.errors`: :class:`RooftraceError` (one line for the user, exit 2), ``strict_mode`` and
  ``tally_skips`` (skipped items make a command exit 1).
- :mod:`~rooftrace.core.files`: atomic writes with the user's umask (``atomic_write_text``, ``atomic_write_bytes``),
  reads that name the file on failure, ``probe_writable`` (an output checked before any work) and
  ``write_error_reason`` (why a write failed, for the file meant).
- :mod:`~rooftrace.core.locks`: exclusive outputs (``OutputLock``, ``exclusive``); :mod:`~rooftrace.core.paths`:
  inputs never outputs; :mod:`~rooftrace.core.memory`: the allocation bound; :mod:`~rooftrace.core.allocator`:
  ``ready_allocator`` (freed arrays reused for inference).
- :mod:`~rooftrace.core.hashing`: ``sha256_file``; :mod:`~rooftrace.core.machine`: ``cpu_name``.
- :mod:`~rooftrace.core.threads`: ``ordered_map`` (work over a few threads, results in order).
- :mod:`~rooftrace.core.version`: ``__version__``.
"""
