"""The corpus: the image test files of the Pillow release the serve image pins.

They are real-world odd files the project did not make (every mode and bit depth, broken headers,
files from Pillow's own fuzzers, other formats). ``fetch_corpus`` downloads that release's source
distribution once with pip (``--no-binary :all:``: the wheels carry no tests), checks that it holds
``Tests/images``, and extracts only that folder under the cache.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements-lambda.txt"


@dataclass(frozen=True)
class Corpus:
    """An extracted corpus.

    Attributes:
        folder: the ``Tests/images`` folder.
        source: the source distribution's file name.
        sha256: its hash.
        files: how many files the folder holds.
    """

    folder: Path
    source: str
    sha256: str
    files: int


def pinned_pillow(requirements: Path = REQUIREMENTS) -> str:
    """The Pillow version ``requirements-lambda.txt`` pins.

    Raises:
        SystemExit: no ``pillow==`` line.
    """
    match = re.search(r"^pillow==(\S+)", requirements.read_text(), re.I | re.M)
    if not match:
        raise SystemExit(f"{requirements} pins no pillow==<version>")
    return match[1]


def fetch_corpus(cache: Path) -> Corpus:
    """Downloads (once) and extracts the pinned Pillow's ``Tests/images`` under ``cache``.

    Args:
        cache: the fuzz cache folder (git-ignored).

    Returns:
        The extracted corpus.

    Raises:
        SystemExit: pip could not download the source distribution, or it has no Tests/images.
    """
    version = pinned_pillow()
    sdist_dir = cache / "sdist"
    sdist = sdist_dir / f"pillow-{version}.tar.gz"
    if not sdist.exists():
        sdist_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:"]
        command += ["--no-deps", f"pillow=={version}", "-d", str(sdist_dir)]
        if subprocess.run(command, check=False).returncode != 0 or not sdist.exists():
            raise SystemExit(f"could not download the pillow=={version} source distribution")
    top = f"pillow-{version}/Tests/images/"
    folder = cache / f"pillow-{version}" / "Tests" / "images"
    if not folder.is_dir():
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(top) and m.isfile()]
            if not members:
                raise SystemExit(f"{sdist.name} has no {top}: no corpus to run")
            # The "data" filter refuses absolute paths, links out of the folder and devices.
            archive.extractall(cache, members=members, filter="data")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    return Corpus(folder=folder, source=sdist.name, sha256=digest, files=files)
