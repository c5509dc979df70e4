"""What a new user sees: README names importable as shown, help texts, one-line errors before any
work, which engine ran and why, rounded scores, and a demo that leaves the work tree clean."""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

import OneClickRegistrationLib
from OneClickRegistrationLib import synthetic
from OneClickRegistrationLib.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
PACKAGE = "OneClickRegistrationLib"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def _section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.DOTALL | re.MULTILINE)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_every_package_name_the_readme_imports_is_importable() -> None:
    text = README.read_text(encoding="utf-8")
    imported: list[tuple[str, str | None]] = []
    for block in _python_blocks(text):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                imported += [(str(node.module), alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                imported += [(alias.name, None) for alias in node.names if alias.name.startswith(PACKAGE)]
    # names written in prose as `OneClickRegistrationLib.X` or called in the Python section: `name(...)`
    for dotted in re.findall(rf"`({PACKAGE}(?:\.\w+)+)`", text):
        module, _, name = dotted.rpartition(".")
        imported.append((module, name))
    for name in re.findall(r"`(\w+)\(", _section(text, "Python")):
        imported.append((PACKAGE, name))
    for name in re.findall(r"`(\w+Error)`", _section(text, "Python")):
        imported.append((PACKAGE, name))
    assert (PACKAGE, "register") in imported and (PACKAGE, "judge_transform") in imported
    for module, name in imported:
        loaded = importlib.import_module(module)
        if name is not None and not hasattr(loaded, name):
            importlib.import_module(f"{module}.{name}")  # a sub-module is importable the same way


def test_judge_transform_is_importable_from_the_package() -> None:
    from OneClickRegistrationLib import judge_transform

    assert callable(judge_transform) and "judge_transform" in OneClickRegistrationLib.__all__


def test_top_level_help_shows_the_register_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--engine", "--transform", "--no-recover", "--timeout", "--fixed-modality", "OUTDIR"):
        assert option in out
    for command in ("score", "batch", "demo"):
        assert f"oneclick-register {command}" in out


@pytest.mark.parametrize("command", ["batch", "demo", "score"])
def test_sub_command_help_has_no_markup(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out and ":class:" not in out


def test_batch_help_lists_the_csv_columns(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    out = capsys.readouterr().out
    for column in ("fixed", "moving", "name", "fixed_modality", "moving_modality", "engine"):
        assert re.search(rf"^\s+{column}\s+\S", out, flags=re.MULTILINE), column


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory, t1_ct_pair: synthetic.SyntheticPair) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    fixed, moving = folder / "sub-01_T1w.nrrd", folder / "sub-01_ct.nrrd"
    sitk.WriteImage(t1_ct_pair.fixed, str(fixed))
    sitk.WriteImage(t1_ct_pair.moving, str(moving))
    return fixed, moving


def _run_cli(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    package_parent = str(Path(OneClickRegistrationLib.__file__).resolve().parent.parent)
    full_env = {**os.environ, "PYTHONPATH": package_parent, **(env or {})}
    return subprocess.run([sys.executable, "-m", "OneClickRegistrationLib.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=full_env, timeout=600, check=False)


@pytest.mark.parametrize("where", ["existing file", "below a file", "unwritable place"])
def test_bad_output_folder_is_one_line_exit_2_before_any_work(where: str, pair_files: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    existing = tmp_path / "taken.txt"
    existing.write_text("not a folder")
    output = {"existing file": existing, "below a file": existing / "out",
              "unwritable place": Path("/proc/oneclick-out")}[where]
    done = _run_cli([str(pair_files[0]), str(pair_files[1]), "-o", str(output), "--engine", "simpleitk"])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("oneclick-register: error: -o "), done.stderr
    assert str(output) in lines[0]
    assert done.stdout == ""  # nothing was read or registered
    assert existing.read_text() == "not a folder"


def test_batch_refuses_a_file_as_output_folder(tmp_path: Path) -> None:
    existing = tmp_path / "taken.txt"
    existing.write_text("x")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\na.nrrd,b.nrrd\n")
    done = _run_cli(["batch", str(pairs), "-o", str(existing)])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.engine
def test_without_elastix_the_run_says_which_engine_ran_and_why(pair_files: tuple[Path, Path], tmp_path: Path) -> None:
    # A PATH without elastix (the interpreter is started by its full path).
    empty = tmp_path / "bin"
    empty.mkdir()
    done = _run_cli([str(pair_files[0]), str(pair_files[1]), "-o", str(tmp_path / "out"), "--no-recover",
                     "--quiet"], env={"PATH": str(empty), "ONECLICK_ELASTIX": ""})
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["engine"] != "elastix"
    assert f"with {report['engine']} " in done.stdout
    assert re.search(r"Note: Engine elastix is not available \(.*elastix.*\)", done.stdout), done.stdout
    # scores in human output are rounded (4 decimals), not printed at full precision
    assert re.search(r" \d\.\d{4} -> \d\.\d{4}, verdict", done.stdout), done.stdout


def test_score_json_ends_with_a_newline(pair_files: tuple[Path, Path]) -> None:
    done = _run_cli(["score", str(pair_files[0]), str(pair_files[1]), "--metric", "nmi"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("}\n")
    json.loads(done.stdout)


@pytest.mark.engine
def test_demo_from_the_clone_leaves_the_work_tree_clean(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    clone.mkdir()
    demo_tmp = tmp_path / "tmp"
    demo_tmp.mkdir()
    done = _run_cli(["demo", "--fast", "--quiet"], cwd=clone, env={"TMPDIR": str(demo_tmp)})
    assert done.returncode == 0, done.stderr
    assert list(clone.iterdir()) == [], "the demo wrote into the current folder"
    folder = Path(re.search(r"\) in (.+)$", done.stdout.strip().splitlines()[-1]).group(1))
    assert folder.parent == demo_tmp and (folder / "overlay.png").is_file() and (folder / "report.json").is_file()
    assert "verdict" in done.stdout and re.search(r"with \w+ \(", done.stdout)
