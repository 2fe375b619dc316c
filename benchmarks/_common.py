"""What every benchmark script shares: where the sample pack is, and which CPU this is."""

from __future__ import annotations

import os
from pathlib import Path

from rooftrace.core.machine import cpu_name  # noqa: F401  (the benchmarks' name for it)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = Path(os.environ.get("ROOFTRACE_SAMPLE_DIR", REPO.parent / "shared" / "data" / "buildings-sample"))
