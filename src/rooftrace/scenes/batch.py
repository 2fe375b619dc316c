"""Many scenes in one process: listing scene files, sharding them across machines, skipping finished
ones and running :func:`rooftrace.scenes.predict.predict_scene` on each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rooftrace.core.errors import RooftraceError, is_strict
from rooftrace.core.locks import OutputBusy, holder
from rooftrace.gis.formats import DEFAULT_FORMAT, by_name
from rooftrace.gis.writers import check_writable, output_complete
from rooftrace.imagery.raster import SCENE_SUFFIXES
from rooftrace.inference.runtime import ModelRunner, SceneModel, make_runner
from rooftrace.scenes.predict import SceneResult, predict_scene

if TYPE_CHECKING:  # pragma: no cover
    from rooftrace.imagery.normalize import Normalization
    from rooftrace.models.files import LoadedModel


def check_unique_stems(paths: Sequence[Path]) -> None:
    """Refuse scenes whose outputs would collide: one output per file stem (``OUT/<stem>.gpkg``)."""
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise RooftraceError(f"{stems[p.stem]} and {p} share the file stem {p.stem!r}; their outputs would collide")
        stems[p.stem] = p


def list_scenes(inputs: Sequence[str | Path]) -> list[Path]:
    """Scene files from files, folders (their ``.tif``/``.tiff``/``.vrt``/... files) and ``.txt``
    lists (one path a line, relative to the list's folder; ``#`` starts a comment), sorted and
    without duplicates.

    Raises:
        RooftraceError: A path that does not exist, or no scene at all.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(q for q in p.iterdir() if q.suffix.lower() in SCENE_SUFFIXES and not q.name.startswith("."))
        elif p.suffix.lower() == ".txt" and p.is_file():
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if line:
                    q = Path(line) if Path(line).is_absolute() else p.parent / line
                    if not q.exists():
                        raise RooftraceError(f"{p}: line {n}: {q} does not exist")
                    found.append(q)
        elif p.exists():
            found.append(p)
        else:
            raise RooftraceError(f"{p}: no such file or folder")
    scenes = sorted({q.resolve() for q in found}, key=str)
    if not scenes:
        raise RooftraceError(f"no scenes found in {', '.join(map(str, inputs))}")
    return scenes


def parse_shard(value: str | tuple[int, int] | None) -> tuple[int, int]:
    """A shard ``(i, n)`` from ``"i/n"`` (0 <= i < n); ``None`` is the whole list ``(0, 1)``."""
    if value is None:
        return 0, 1
    if isinstance(value, str):
        i_s, sep, n_s = value.partition("/")
        try:
            i, n = int(i_s), int(n_s)
        except ValueError:
            raise RooftraceError(f"--shard {value!r}: expected I/N, e.g. 0/4 for the first of 4 workers") from None
    else:
        i, n = value
    if not (n >= 1 and 0 <= i < n):
        raise RooftraceError(f"--shard {i}/{n}: need 0 <= I < N")
    return i, n


def shard_scenes(scenes: Sequence[Path], shard: tuple[int, int]) -> list[Path]:
    """Scenes ``i, i + n, ...`` of the list sorted by path: the share of worker ``i`` of ``n``.

    Deterministic and stateless: workers given the same list agree on who does what without
    talking to each other, and together cover every scene once.
    """
    i, n = shard
    return sorted(scenes, key=str)[i::n]


@dataclass
class ScenesResult:
    """What :func:`predict_scenes` did: per-scene results, scenes skipped (output existed) and failures."""

    out_dir: Path
    shard: tuple[int, int]
    results: list[SceneResult] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    busy: list[Path] = field(default_factory=list)  #: scenes another live run was writing, left to it

    def summary(self) -> str:
        i, n = self.shard
        lines = [f"shard {i}/{n}: {len(self.results)} scene(s) predicted, {len(self.skipped)} already done, "
                 + (f"{len(self.busy)} being predicted by another run, " if self.busy else "")
                 + f"{len(self.failed)} failed; outputs in {self.out_dir}"]
        lines += [f"  {r.scene.name}: {r.n_buildings} buildings, {r.seconds:.1f} s" for r in self.results]
        lines += [f"  failed {p}: {msg}" for p, msg in self.failed]
        lines += [f"  {p.name}: being predicted by another live run (its output is locked); left to it" for p in self.busy]
        return "\n".join(lines)


def _finished(output: Path, scene: Path | None = None) -> bool:
    """Whether a scene's output is finished: it opens, reads back whole and carries the provenance the
    run recorded (:func:`rooftrace.gis.writers.output_complete`); a half-written or foreign file is not."""
    return output_complete(output, scene) is None


def predict_scenes(
    scenes: Sequence[str | Path],
    out_dir: str | Path,
    model: str | Path | LoadedModel | ModelRunner | SceneModel | None = None,
    *,
    shard: str | tuple[int, int] | None = None,
    fmt: str = DEFAULT_FORMAT,
    device: str = "auto",
    tta: bool = False,
    precision: str = "auto",
    normalization: Normalization | None = None,
    force: bool = False,
    progress: bool = True,
    **kwargs: Any,
) -> ScenesResult:
    """Predict this worker's share of many scenes into ``out_dir/<scene stem>.<fmt>``.

    The model is loaded once. Scenes whose output exists are skipped unless ``force`` (outputs
    are written atomically, so one that exists is complete): rerunning a killed worker resumes
    it. A scene that fails with a :class:`RooftraceError` is reported and the others go on.

    Args:
        scenes: Files, folders and ``.txt`` lists (see :func:`list_scenes`).
        shard: ``"i/n"`` or ``(i, n)``: take scenes ``i, i + n, ...`` of the sorted list.
        fmt: A format's name in :mod:`rooftrace.gis.formats` (``gpkg``, ``fgb``, ``parquet``, ``geojson``;
            the output files' suffix).
        kwargs: Passed on to :func:`predict_scene` (tile, overlap, batch_size, bands, ...).

    Raises:
        RooftraceError: No scenes, a bad shard or format, or two scenes with the same file stem.
    """
    from rooftrace.imagery.resample import checked_input_gsd

    suffix = by_name(fmt).suffix
    # Before any scene: a bad --gsd stops the run, it does not fail every scene (gsd: the older name of input_gsd).
    kwargs["input_gsd"] = checked_input_gsd(kwargs.get("input_gsd"), kwargs.pop("gsd", None))
    i, n = parse_shard(shard)
    every = list_scenes(scenes)
    check_unique_stems(every)
    out_dir = Path(out_dir)
    result = ScenesResult(out_dir, (i, n))
    mine = shard_scenes(every, (i, n))
    # An output of 0 bytes (a copy cut short, a full disk outside rooftrace) is not a finished scene.
    todo, busy = [], []
    for p in mine:
        out = out_dir / f"{p.stem}{suffix}"
        if holder(out) is not None:  # another live run is writing it: left to that run
            busy.append(p)
        elif force or not _finished(out, p):
            todo.append(p)
    result.skipped = [p for p in mine if p not in todo and p not in busy]
    result.busy = busy
    if not todo:
        return result
    check_writable(out_dir, out_dir)  # before the model is loaded: not once per scene, after its inference
    runner = make_runner(model, device=device, tta=tta, normalization=normalization, precision=precision)
    for p in todo:
        try:
            out = out_dir / f"{p.stem}{suffix}"
            result.results.append(predict_scene(p, out, runner, force=force or out.exists(), progress=progress, **kwargs))
        except OutputBusy:  # another run took it meanwhile: it is that run's, and this one goes on
            result.busy.append(p)
        except RooftraceError as exc:
            if is_strict():  # --strict: stop at the first scene that fails
                raise
            result.failed.append((p, str(exc)))
    return result
