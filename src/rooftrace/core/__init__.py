"""Shared foundations every stage uses, free of torch.

- :mod:`~rooftrace.core.errors`: :class:`RooftraceError` (one line for the user, exit 2), ``strict_mode`` and
  ``tally_skips`` (skipped items make a command exit 1).
- :mod:`~rooftrace.core.files`: atomic writes with the user's umask (``atomic_write_text``, ``atomic_write_bytes``)
  and reads that name the file on failure.
- :mod:`~rooftrace.core.hashing`: ``sha256_file``.
- :mod:`~rooftrace.core.version`: ``__version__``.
"""
