"""The extension's CMake files, configured against a stand-in for Slicer's CMake package.

A Slicer build tree is not available here, so ``find_package(Slicer)`` finds a small stand-in that
records what ``slicerMacroBuildScriptedModule`` and ``slicer_add_python_unittest`` receive and fails
on a listed file that does not exist (as the real macro does). What is checked: every Python file of
the module and its core package is listed, the resources are copied beside the module in the build
tree (where the installed module looks for them), and the self-test is registered.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "OneClickRegistration"
SCRIPTED_DIR = "lib/Slicer-5.8/qt-scripted-modules"

STAND_IN_CONFIG = f"""
set(Slicer_USE_FILE "${{CMAKE_CURRENT_LIST_DIR}}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${{CMAKE_CURRENT_LIST_DIR}}/Nothing.cmake")
set(Slicer_EXTENSION_CPACK "${{CMAKE_CURRENT_LIST_DIR}}/Nothing.cmake")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "{SCRIPTED_DIR}")
set(BUILD_TESTING ON)
"""

STAND_IN_USE = """
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(STUB "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(STUB_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "unknown arguments: ${STUB_UNPARSED_ARGUMENTS}")
  endif()
  foreach(_file IN LISTS STUB_SCRIPTS STUB_RESOURCES)
    if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${_file}")
      message(FATAL_ERROR "nonexistent file ${_file}")
    endif()
    file(APPEND "${CMAKE_BINARY_DIR}/listed.txt" "${_file}\\n")
  endforeach()
  file(APPEND "${CMAKE_BINARY_DIR}/module.txt" "NAME=${STUB_NAME}\\n")
endmacro()
function(slicer_add_python_unittest)
  cmake_parse_arguments(STUB "" "SCRIPT" "" ${ARGN})
  file(APPEND "${CMAKE_BINARY_DIR}/module.txt" "UNITTEST=${STUB_SCRIPT}\\n")
endfunction()
"""


@pytest.fixture(scope="module")
def configured(tmp_path_factory) -> Path:
    cmake = shutil.which("cmake")
    if cmake is None or shutil.which("c++") is None:
        pytest.skip("cmake and a C++ compiler are needed to configure the extension")
    root = tmp_path_factory.mktemp("cmake")
    stand_in = root / "slicer"
    stand_in.mkdir()
    (stand_in / "SlicerConfig.cmake").write_text(STAND_IN_CONFIG, encoding="utf-8")
    (stand_in / "UseSlicer.cmake").write_text(STAND_IN_USE, encoding="utf-8")
    (stand_in / "Nothing.cmake").write_text("", encoding="utf-8")
    build = root / "build"
    completed = subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={stand_in}"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return build


def test_every_python_file_of_the_module_is_listed(configured):
    listed = set((configured / "listed.txt").read_text(encoding="utf-8").split())
    expected = {"OneClickRegistration.py"} | {
        str(p.relative_to(MODULE_DIR)) for package in ("OneClickRegistrationLib", "OneClickRegistrationSlicer")
        for p in (MODULE_DIR / package).rglob("*.py") if "__pycache__" not in p.parts
    }
    assert "OneClickRegistrationLib/engines/base.py" in expected  # the walk found the engines
    assert "OneClickRegistrationSlicer/scene.py" in expected
    assert listed == expected


def test_only_the_module_file_sits_at_the_top_of_the_module_folder():
    # Slicer's scripted-module factory loads every .py there as a module of its own.
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["OneClickRegistration.py"]


def test_resources_are_copied_beside_the_module(configured):
    for resource in ("Resources/UI/OneClickRegistration.ui", "Resources/Icons/OneClickRegistration.png",
                     "Resources/Scripts/batch_register_folder.py"):
        copied = configured / SCRIPTED_DIR / resource
        assert copied.read_bytes() == (ROOT / resource).read_bytes(), resource


def test_module_and_self_test_are_registered(configured):
    lines = (configured / "module.txt").read_text(encoding="utf-8").split()
    assert "NAME=OneClickRegistration" in lines
    assert "UNITTEST=OneClickRegistration.py" in lines


def test_extension_metadata_points_at_no_made_up_address():
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "http" not in top
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_CONTRIBUTORS"):
        line = next(line for line in top.splitlines() if line.startswith(f"set({field} "))
        assert "TO FILL" in line, line
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")
