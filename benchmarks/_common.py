"""What every benchmark script shares: where the sample pack is, and which CPU this is."""

from __future__ import annotations

import os
from pathlib import Path

from rooftrace.core.machine import cpu_name  # noqa: F401  (the benchmarks' name for it)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SAMPLE = Path(os.environ.get("ROOFTRACE_SAMPLE_DIR", REPO.parent / "shared" / "data" / "buildings-sample"))


def val_tiles_512(sample: Path, count: int, mean, std):
    """The first ``count`` validation tiles of the sample pack, resized to 512 x 512 (area), normalised with
    ``mean`` and ``std`` as a model file gives them: one ``(N, 3, 512, 512)`` float32 tensor, channels-last,
    and the files read."""
    import cv2
    import numpy as np
    import torch

    files = sorted((sample / "val" / "image").glob("*"))[:count]
    tiles = np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1], (512, 512), interpolation=cv2.INTER_AREA)
                      for p in files])
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    x = torch.from_numpy(((tiles / 255.0 - mean) / std).astype(np.float32)).permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last), files


def interleaved_times(runs: dict, rounds: int) -> dict:
    """Seconds of each zero-argument callable of ``runs``, ``rounds`` times, the callables in turn round by round;
    each call timed is the second of a pair (the first warms oneDNN's kernels for it), and a first round is run
    and dropped. Returns the same keys, each with its list of seconds."""
    import time

    times: dict = {key: [] for key in runs}
    for r in range(rounds + 1):
        for key, run in runs.items():
            run()
            t = time.perf_counter()
            run()
            if r:
                times[key].append(time.perf_counter() - t)
    return times
