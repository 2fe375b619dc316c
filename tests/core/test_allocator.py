"""The allocator readied for inference: freed arrays reused, numpy's huge-page advice off, and the
``system`` opt-out. Each case runs in a fresh process, since the settings are the process's."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import write_tiny_model

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="mallopt is glibc's")


def _run(code: str, **env: str) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("ROOFTRACE_ALLOCATOR", "NUMPY_MADVISE_HUGEPAGE")}
    e.update(env)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


# Faults while a 64 MiB array is made, filled and freed, after one of the same size was made and freed.
_FAULTS = """
import json, resource, numpy as np
from numpy._core import multiarray
from rooftrace.core.allocator import ready_allocator
words = ready_allocator() if READY else None
np.ones(16 * 1024**2, np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(16 * 1024**2, np.float32); del a
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"words": words, "faults": faults, "huge": bool(multiarray._get_madvise_hugepage()),
                  "again": ready_allocator() if READY else None}))
"""


@glibc
def test_freed_memory_is_reused():
    on = _run("READY = True\n" + _FAULTS)
    assert "freed memory kept for reuse" in on["words"] and "no huge-page advice" in on["words"]
    assert on["again"] == on["words"]  # once a process; later calls say the same
    assert on["huge"] is False
    assert on["faults"] < 200, on  # 16,384 pages of 4 KiB: all of them reused
    # the same, as the system sets it (no huge pages either, so that every page is counted): faulted in afresh
    off = _run("READY = False\n" + _FAULTS, NUMPY_MADVISE_HUGEPAGE="0")
    assert off["faults"] > 10_000, off


@glibc
def test_system_leaves_the_allocator_as_it_was():
    r = _run("READY = True\n" + _FAULTS, ROOFTRACE_ALLOCATOR="system")
    assert "ROOFTRACE_ALLOCATOR=system" in r["words"]
    assert r["huge"] is True  # numpy's own default on Linux
    assert r["faults"] > 20, r  # the freed array went back to the kernel (a fault a 4 KiB or 2 MiB page)


def test_loading_a_model_and_post_processing_blocks_ready_it(tmp_path):
    model = write_tiny_model(tmp_path / "tiny.safetensors")
    r = _run(f"""
        import json
        import rooftrace.core.allocator as a
        from rooftrace.inference.runtime import load_runtime
        load_runtime({str(model)!r}, device="cpu", precision="fp32")
        first = a._done
        a._done = None
        import numpy as np, rasterio
        from rooftrace.scenes.blocks import postprocess_blocks
        with rasterio.open({str(tmp_path / 'p.tif')!r}, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8") as d:
            d.write(np.zeros((3, 64, 64), np.uint8))
        list(postprocess_blocks({str(tmp_path / 'p.tif')!r}, progress=False))
        print(json.dumps({{"runtime": first, "blocks": a._done}}))
    """)
    assert r["runtime"] and r["runtime"].startswith("allocator:")
    assert r["blocks"] and r["blocks"].startswith("allocator:")
