"""elastix parameter files: parameter maps in and out, and transform files read as ITK transforms.

A parameter map is a ``dict`` from parameter name to a tuple of values, as ITKElastix's parameter
maps are (``{"Transform": ("EulerTransform",), "MaximumNumberOfIterations": (250, 250)}``): adapting
one is ``dict.update``, never an edit of generated text. Reading gives numbers as floats and quoted
values as strings.

elastix's result (``TransformParameters.0.txt``, with its chain of initial transforms) is read here
and converted to the project's convention (ITK fixed->moving, LPS, centre included). That path works
with every elastix version: the Debian 5.0.1 build silently ignores ``WriteITKCompositeTransform``,
so an ITK transform file cannot be relied upon.
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import numpy as np
import SimpleITK as sitk

from ..errors import EngineError, InputError
from ..images import write_text
from ..transforms import affine_from_matrix, as_rigid_or_affine, to_matrix

# A typing.Union, not PEP 604: type aliases are evaluated at run time and the core runs on Python 3.9.
ParameterValue = Union[str, int, float, bool]
ParameterMap = dict[str, tuple[ParameterValue, ...]]

_PARAMETER_LINE = re.compile(r"^\s*\(\s*(\w+)\s*(.*?)\s*\)\s*(?://.*)?$")


def _format_value(value: ParameterValue) -> str:
    if isinstance(value, bool):
        return '"true"' if value else '"false"'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"An elastix parameter must be a finite number; received {value!r}.")
        return repr(value)  # shortest text that reads back to the same double
    return f'"{value}"'


def format_parameters(parameters: Mapping[str, tuple[ParameterValue, ...]], *, header: str = "") -> str:
    """elastix parameter-file text, one ``(Name value ...)`` line per entry, after ``// header``."""
    lines = [f"// {header}\n"] if header else []
    lines += [f"({name} {' '.join(_format_value(v) for v in values)})\n" for name, values in parameters.items()]
    return "".join(lines)


def write_parameter_file(parameters: Mapping[str, tuple[ParameterValue, ...]], path: str | os.PathLike[str], *,
                         header: str = "") -> Path:
    """Write a parameter map as an elastix parameter file."""
    return write_text(format_parameters(parameters, header=header), path)


def _parse_token(token: str) -> str | float:
    if token.startswith('"'):
        return token.strip('"')
    try:
        return float(token)
    except ValueError:
        return token


def parse_parameters(text: str) -> dict[str, tuple[str | float, ...]]:
    """Read elastix parameter-file text: ``{name: values}``; quoted values stay strings."""
    parameters: dict[str, tuple[str | float, ...]] = {}
    for line in text.splitlines():
        match = _PARAMETER_LINE.match(line)
        if match is None:
            continue
        parameters[match.group(1)] = tuple(_parse_token(t) for t in shlex.split(match.group(2), posix=False))
    return parameters




def initial_transform_text(transform: sitk.Transform, fixed: sitk.Image) -> str:
    """``transform`` (linear, fixed->moving) as an elastix AffineTransform parameter file for ``-t0``."""
    matrix = to_matrix(transform)
    linear = matrix[:3, :3]
    size, spacing = fixed.GetSize(), fixed.GetSpacing()
    # Around the fixed image centre, like elastix's own transforms (any centre gives the same map).
    center = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in size]))
    translation = matrix[:3, 3] + linear @ center - center
    parameters: ParameterMap = {
        "Transform": ("AffineTransform",),
        "NumberOfParameters": (12,),
        "TransformParameters": (*(float(v) for v in linear.ravel()), *(float(v) for v in translation)),
        "InitialTransformParametersFileName": ("NoInitialTransform",),
        "HowToCombineTransforms": ("Compose",),
        "FixedImageDimension": (3,),
        "MovingImageDimension": (3,),
        "FixedInternalImagePixelType": ("float",),
        "MovingInternalImagePixelType": ("float",),
        "Size": tuple(int(n) for n in size),
        "Index": (0, 0, 0),
        "Spacing": tuple(float(s) for s in spacing),
        "Origin": tuple(float(o) for o in fixed.GetOrigin()),
        "Direction": tuple(float(d) for d in fixed.GetDirection()),
        "UseDirectionCosines": (True,),
        "CenterOfRotationPoint": tuple(float(c) for c in center),
    }
    return format_parameters(parameters)



def _numbers(parameters: Mapping[str, tuple[str | float, ...]], name: str, count: int) -> np.ndarray:
    values = parameters.get(name, ())
    if len(values) != count or not all(isinstance(v, float) for v in values):
        raise EngineError(f"elastix's transform file has no valid {name} (expected {count} numbers; "
                          f"received {values!r}).")
    return np.asarray(values, dtype=float)


def _single_matrix(parameters: Mapping[str, tuple[str | float, ...]]) -> np.ndarray:
    """The 4x4 matrix of one elastix transform entry (without its initial transform)."""
    kind = str(parameters.get("Transform", ("",))[0])
    if kind == "TranslationTransform":
        offset = tuple(_numbers(parameters, "TransformParameters", 3))
        return to_matrix(sitk.TranslationTransform(3, offset))
    if kind not in ("EulerTransform", "AffineTransform", "SimilarityTransform"):
        raise EngineError(f"elastix returned a {kind or 'unnamed'} transform; expected a linear one "
                          "(EulerTransform, AffineTransform, SimilarityTransform or TranslationTransform).")
    center = tuple(_numbers(parameters, "CenterOfRotationPoint", 3))
    if kind == "EulerTransform":
        p = _numbers(parameters, "TransformParameters", 6)
        euler = sitk.Euler3DTransform()
        euler.SetCenter(center)
        euler.SetComputeZYX(str(parameters.get("ComputeZYX", ("false",))[0]).lower() == "true")
        euler.SetParameters(tuple(p))
        return to_matrix(euler)
    if kind == "AffineTransform":
        p = _numbers(parameters, "TransformParameters", 12)
        affine = sitk.AffineTransform(3)
        affine.SetCenter(center)
        affine.SetParameters(tuple(p))
        return to_matrix(affine)
    p = _numbers(parameters, "TransformParameters", 7)  # SimilarityTransform
    similarity = sitk.Similarity3DTransform()
    similarity.SetCenter(center)
    similarity.SetParameters(tuple(p))
    return to_matrix(similarity)


def transform_matrix_from_parameter_file(path: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None,
                                         _depth: int = 0) -> np.ndarray:
    """The 4x4 fixed->moving matrix of an elastix transform parameter file, initial transforms included.

    A relative initial-transform file name is looked up beside the file, then in ``base`` (the folder
    elastix ran in, which is what elastix resolved it against).
    """
    file = Path(path)
    if _depth > 16:
        raise EngineError(f"elastix's chain of initial transforms is too long (at {str(file)!r}).")
    if not file.is_file():
        raise EngineError(f"elastix's transform parameter file is missing: {str(file)!r}.")
    parameters = parse_parameters(file.read_text(encoding="utf-8", errors="replace"))
    current = _single_matrix(parameters)
    initial_name = str(parameters.get("InitialTransformParametersFileName", ("NoInitialTransform",))[0])
    if initial_name == "NoInitialTransform":
        return current
    initial_path = Path(initial_name)
    if not initial_path.is_absolute():
        beside = file.parent / initial_path
        initial_path = beside if beside.is_file() or base is None else Path(base) / initial_path
    initial = transform_matrix_from_parameter_file(initial_path, base=base, _depth=_depth + 1)
    how = str(parameters.get("HowToCombineTransforms", ("Compose",))[0])
    if how == "Compose":  # elastix applies the initial transform first
        return current @ initial
    if how == "Add":  # T(x) = T_init(x) + T_cur(x) - x
        return current + initial - np.eye(4) + np.diag([0.0, 0.0, 0.0, 1.0])
    raise EngineError(f"elastix combined its transforms with {how!r}; expected 'Compose' or 'Add'.")



def transform_from_parameter_file(path: str | os.PathLike[str], *, rigid: bool,
                                  base: str | os.PathLike[str] | None = None) -> sitk.Transform:
    """elastix's result file as one ITK fixed->moving transform, centred where elastix centred it.

    ``base`` is the folder elastix ran in (relative file names in the result are resolved there).
    """
    parameters = parse_parameters(Path(path).read_text(encoding="utf-8", errors="replace"))
    center = parameters.get("CenterOfRotationPoint", (0.0, 0.0, 0.0))
    matrix = transform_matrix_from_parameter_file(path, base=base)
    if not np.all(np.isfinite(matrix)):
        raise EngineError(f"elastix returned a transform with non-finite values ({str(path)!r}).")
    flat = affine_from_matrix(matrix, tuple(float(c) for c in center))  # type: ignore[arg-type]
    return as_rigid_or_affine(flat, rigid=rigid)
