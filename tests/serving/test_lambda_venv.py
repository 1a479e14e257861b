"""The serving path needs nothing beyond requirements-lambda.txt: no TensorFlow, no Keras.

The slow test builds a clean virtual environment from requirements-lambda.txt alone (cached under
~/.cache/imgclf, keyed by the file's hash and the Python version), prints the installed size of
its site-packages, adds only pytest, and runs the serving tests inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.settings import PROJECT_ROOT

REQUIREMENTS = PROJECT_ROOT / "requirements-lambda.txt"
# Every serving test but this file's (the venv has no room for a venv of its own).
SERVING_TESTS = sorted(
    str(path.relative_to(PROJECT_ROOT))
    for path in (PROJECT_ROOT / "tests" / "serving").glob("test_*.py")
    if path.name != Path(__file__).name
)
FORBIDDEN = ("tensorflow", "keras", "tf_keras", "tensorboard")


def _pinned(package: str) -> str:
    """The ``package==version`` line of requirements.txt (the test runner's own pin)."""
    text = (PROJECT_ROOT / "requirements.txt").read_text()
    match = re.search(rf"^{package}==\S+", text, flags=re.MULTILINE)
    assert match, f"{package} is not pinned in requirements.txt"
    return match.group(0)


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _size_mb(folder: Path, skip: tuple[str, ...] = ()) -> float:
    total = 0
    for path in folder.rglob("*"):
        top = path.relative_to(folder).parts[0].lower()
        if path.is_file() and not path.is_symlink() and not top.startswith(skip):
            total += path.stat().st_size
    return total / 1e6


def lambda_venv() -> tuple[Path, dict[str, float]]:
    """Builds (once per requirements hash) the serving venv; returns it with its sizes in MB."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = cache / "imgclf" / f"lambda-venv-{key}"
    sizes_file = venv / "site-packages-mb.json"
    if not sizes_file.is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        pip += ["--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
        site = _site_packages(venv)
        sizes = {
            "site_packages_mb": _size_mb(site),
            "without_pip_setuptools_mb": _size_mb(
                site, skip=("pip", "setuptools", "_distutils", "pkg_resources")
            ),
        }
        # The test runner comes after the measurement: it is not part of what Lambda ships.
        subprocess.run([*pip, _pinned("pytest")], check=True)
        sizes_file.write_text(json.dumps(sizes))
    return venv, json.loads(sizes_file.read_text())


def test_the_serving_path_imports_no_tensorflow() -> None:
    code = (
        "import sys, lambda_func; "
        f"print([m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_serving_tests_pass_in_a_venv_from_requirements_lambda(
    capsys: pytest.CaptureFixture[str],
) -> None:
    venv, sizes = lambda_venv()
    python = str(venv / "bin" / "python")
    with capsys.disabled():
        print(
            f"\nlambda venv {venv}: site-packages {sizes['site_packages_mb']:.0f} MB "
            f"({sizes['without_pip_setuptools_mb']:.0f} MB without pip/setuptools)"
        )
    # GIVEN no TensorFlow or Keras in it
    for module in FORBIDDEN[:2]:
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
        assert probe.returncode != 0, f"{module} is importable in the lambda venv"
    # WHEN the serving tests run there (without the shared conftest, which may need more)
    run = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", *SERVING_TESTS],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    # THEN they pass
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1]
