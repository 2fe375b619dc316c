"""The tests mirror the stages of ``src/rooftrace``: ``tests/<stage>/`` holds the tests of ``rooftrace.<stage>``.

A test file at the top of ``tests/`` belongs to no stage, and a folder that matches no stage (a renamed or
removed one) points the reader nowhere: both fail here, with the one place outside the stages named.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src" / "rooftrace"

#: What may sit at the top of tests/: the package marker and the fixtures every folder shares.
TOP_LEVEL = {"__init__.py", "conftest.py"}
#: Folders that are not a stage of src/rooftrace, and what they hold.
NOT_STAGES = {"package": "the package as a whole: its import layout, the wheel, this layout"}


def stages() -> set[str]:
    """The stages: the packages of src/rooftrace and its public top-level modules (``api.py``)."""
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    modules = {p.stem for p in SRC.glob("*.py") if not p.stem.startswith("_")}
    return packages | modules


def folders() -> list[Path]:
    return [p for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))]


def test_no_test_file_sits_at_the_top_of_tests():
    loose = sorted(p.name for p in TESTS.glob("*.py") if p.name not in TOP_LEVEL)
    assert not loose, f"move these into tests/<stage>/ (the stage of src/rooftrace they test): {loose}"


def test_every_test_folder_is_a_stage_of_the_source():
    known = stages()
    assert {"labels", "scenes", "cli", "api"} <= known  # the reading of src/ itself is sound
    strays = sorted(p.name for p in folders() if p.name not in known and p.name not in NOT_STAGES)
    assert not strays, f"tests/ folders that match no stage of src/rooftrace (stages: {sorted(known)}): {strays}"


def test_every_test_folder_is_a_package():
    """Each folder has an ``__init__.py``, so that test files of the same name in two stages import apart."""
    bare = sorted(p.name for p in folders() if not (p / "__init__.py").exists())
    assert (TESTS / "__init__.py").exists() and not bare, f"add an empty __init__.py to tests/{bare}"
