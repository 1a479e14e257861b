"""Installed size of a set of requirements: the files of their dependency closure, as pip put them.

Both stacks are measured the same way in the project's own environment (``.venv`` holds both at the
pinned versions): start from the requirements, follow each distribution's declared dependencies
(markers evaluated for this interpreter, requested extras honoured), and add up the size on disk of
every file each distribution's RECORD lists (byte-compiled files included). Nothing is downloaded,
and pip / setuptools count only where a package declares them.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# The usual way's serving set: TensorFlow's CPU build (Keras comes with it), Pillow and numpy, at
# the versions requirements-train.txt pins. A web framework is counted on neither side.
TENSORFLOW_STACK = ("tensorflow-cpu", "pillow", "numpy")


def read_requirements(path: Path) -> list[str]:
    """The requirement lines of a requirements file (comments, blank and ``-r`` lines skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def closure(requirements: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The installed distributions ``requirements`` need, transitively.

    Args:
        requirements: requirement strings (``name``, ``name==1.0``, ``name[extra]``).

    Returns:
        Canonical distribution name -> installed version.

    Raises:
        importlib.metadata.PackageNotFoundError: a needed distribution is not installed.
    """
    found: dict[str, str] = {}
    pending = [Requirement(r) for r in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        req = pending.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = importlib.metadata.distribution(req.name)
        found[key[0]] = dist.version
        for line in dist.requires or []:
            dep = Requirement(line)
            extras = req.extras or {""}
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                pending.append(dep)
    return found


def installed_mb(name: str) -> float:
    """The size on disk, in MB, of every file an installed distribution's RECORD lists."""
    dist = importlib.metadata.distribution(name)
    total = 0
    for file in dist.files or []:
        path = Path(dist.locate_file(file))
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total / 1e6


def stack_footprint(requirements: list[str] | tuple[str, ...]) -> dict[str, object]:
    """The closure of ``requirements`` with its installed size.

    Returns:
        ``{"installed_mb", "distributions": {name: {"version", "mb"}}}``, largest first.
    """
    versions = closure(requirements)
    sizes = {name: installed_mb(name) for name in versions}
    dists = {
        name: {"version": versions[name], "mb": mb}
        for name, mb in sorted(sizes.items(), key=lambda kv: -kv[1])
    }
    return {"installed_mb": sum(sizes.values()), "distributions": dists}
