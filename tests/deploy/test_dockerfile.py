"""The Dockerfile's two images and their build context, checked without Docker.

hadolint lints the file; the rest reads it: each target's CMD names a handler that exists and is
copied in; the serve target installs requirements-lambda.txt and nothing else; the train target
installs requirements-train.txt, which holds no test or dev tool; .dockerignore lets in exactly
what the images copy and keeps data, tests and notebooks out.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from helpers import ROOT, run_deploy_tool

# The only way a target may install anything: pip install -r FILE, with these options.
PIP_INSTALL = argparse.ArgumentParser(prog="pip install", add_help=False)
PIP_INSTALL.add_argument("-r", dest="requirements", action="append", required=True)
PIP_INSTALL.add_argument("--target")
PIP_INSTALL.add_argument("--no-cache-dir", action="store_true")
PIP_INSTALL.add_argument("--only-binary")


@dataclass
class Stage:
    """One ``FROM <base> AS <name>`` stage with its instructions, in order."""

    name: str
    base: str
    instructions: list[tuple[str, str]]

    def arguments(self, instruction: str) -> list[str]:
        """The arguments of each of the stage's ``instruction`` lines."""
        return [args for name, args in self.instructions if name == instruction]

    def copied(self) -> list[str]:
        """The build-context paths the stage copies (a COPY's last argument is its target)."""
        return [src for args in self.arguments("COPY") for src in shlex.split(args)[:-1]]

    def installed(self) -> list[str]:
        """The requirements files the stage installs; fails on any other kind of RUN."""
        files = []
        for args in self.arguments("RUN"):
            words = shlex.split(args)
            assert words[:2] == ["pip", "install"], f"{self.name}: RUN {args}"
            parsed, extra = PIP_INSTALL.parse_known_args(words[2:])
            assert extra == [], f"{self.name} installs {extra} beyond its requirements file"
            files += [PurePosixPath(r).name for r in parsed.requirements]
        return files

    def handler(self) -> str:
        """The ``module.function`` its CMD names."""
        (command,) = self.arguments("CMD")
        (handler,) = json.loads(command)
        return handler


def dockerfile_stages() -> dict[str, Stage]:
    """Parses the Dockerfile: continuation lines joined, comments dropped, ARG defaults applied."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    arguments: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in (line.strip() for line in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction == "ARG" and stage is None:
            name, _, default = args.partition("=")
            arguments[name] = default
        elif instruction == "FROM":
            args = re.sub(r"\$\{(\w+)\}", lambda m: arguments[m.group(1)], args)
            base, _, name = args.partition(" AS ")
            stage = stages[name.strip()] = Stage(name.strip(), base.strip(), [])
        else:
            assert stage is not None, f"{instruction} before FROM"
            stage.instructions.append((instruction, args.strip()))
    return stages


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """``.dockerignore`` as ``(is_exception, pattern)`` pairs, in file order."""
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            glob = re.escape(line.lstrip("!").strip("/"))
            glob = glob.replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
            patterns.append((line.startswith("!"), re.compile(glob.replace(r"\*", "[^/]*"))))
    return patterns


def build_context() -> set[str]:
    """The files ``docker build .`` sends. As Docker decides: a pattern that matches a path or
    one of its parent folders applies, and the last pattern that applies wins."""
    patterns = dockerignore()

    def ignored(path: str) -> bool:
        parts = PurePosixPath(path).parts
        paths = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        verdict = False
        for exception, pattern in patterns:
            if any(pattern.fullmatch(p) for p in paths):
                verdict = not exception
        return verdict

    reopened = [pattern.pattern for exception, pattern in patterns if exception]
    files = set()
    for folder, dirs, names in os.walk(ROOT):
        base = Path(folder).relative_to(ROOT).as_posix() + "/"
        base = "" if base == "./" else base
        # Ignored folders that no exception reopens (.venv, .git, data, ...) are not walked.
        dirs[:] = [
            d
            for d in dirs
            if not ignored(base + d) or any(p.startswith(re.escape(base + d)) for p in reopened)
        ]
        files |= {base + name for name in names if not ignored(base + name)}
    return files


def requirement_lines(path: Path) -> Iterator[tuple[str, str]]:
    """``(file name, requirement)`` for each requirement, following ``-r`` includes."""
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            yield from requirement_lines(path.parent / line[2:].strip())
        elif line:
            yield path.name, line


def package(requirement: str) -> str:
    return re.split(r"[\[=<>~; ]", requirement)[0].lower()


def test_hadolint_passes() -> None:
    result = run_deploy_tool("hadolint", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_targets_start_from_the_lambda_python_base_image() -> None:
    stages = dockerfile_stages()
    assert set(stages) == {"serve", "train"}
    for stage in stages.values():
        assert re.fullmatch(r"public\.ecr\.aws/lambda/python:3\.1[2-9]", stage.base), stage.base


def test_every_image_runs_a_handler_that_exists_and_is_copied_in() -> None:
    for stage in dockerfile_stages().values():
        module, _, function = stage.handler().rpartition(".")
        source = ROOT / f"{module}.py"
        assert source.name in stage.copied(), f"the {stage.name} image lacks {source.name}"
        tree = ast.parse(source.read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert function in functions, f"{source.name} has no {function}()"


def test_the_serve_target_installs_nothing_beyond_requirements_lambda() -> None:
    serve = dockerfile_stages()["serve"]
    assert serve.installed() == ["requirements-lambda.txt"]
    copied = serve.copied()
    assert {"lambda_func.py", "model/", "imgclf/serving/", "imgclf/registry/"} <= set(copied)
    # The core files and the serving package, never the training or retraining code.
    assert not [c for c in copied if c.startswith(("imgclf/pipeline", "imgclf/retrain"))]
    assert "imgclf/" not in copied
    assert {instruction for instruction, _ in serve.instructions} <= {"COPY", "RUN", "CMD"}


BLOCKED = ("tensorflow", "keras", "keras_tuner", "sklearn", "matplotlib", "torch")
IMPORT_SERVE_IMAGE = """
import json, sys
sys.path.insert(0, ".")
BLOCKED = {blocked!r}

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the serve image imported {{name}}")

sys.meta_path.insert(0, Block())
import lambda_func
event = json.load(open("health_http_api.json"))
response = lambda_func.lambda_handler(event, None)
print(response["statusCode"], sorted(m for m in sys.modules if m.startswith("imgclf")))
"""


def test_the_serve_image_files_import_without_the_training_stack(tmp_path: Path) -> None:
    # GIVEN a folder laid out as the serve target copies files (and nothing else of the repo)
    for source in dockerfile_stages()["serve"].copied():
        if source.startswith("requirements"):
            continue
        target = tmp_path / source
        if source.endswith("/"):
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / source, target)
    shutil.copyfile(ROOT / "events" / "health_http_api.json", tmp_path / "health_http_api.json")
    # WHEN lambda_func is imported there, isolated, with the training stack made unimportable
    code = IMPORT_SERVE_IMAGE.format(blocked=BLOCKED)
    run = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=tmp_path,
        env={"MODEL_DIR": str(tmp_path / "model"), "POWERTOOLS_LOG_LEVEL": "ERROR"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # THEN it loads the bundled model and answers /health
    assert run.returncode == 0, run.stderr[-3000:]
    status, _, modules = run.stdout.strip().splitlines()[-1].partition(" ")
    assert status == "200", run.stdout
    assert "imgclf.pipeline" not in modules and "imgclf.retrain" not in modules


def test_the_train_target_installs_requirements_train_which_has_no_dev_tools() -> None:
    train = dockerfile_stages()["train"]
    assert train.installed() == ["requirements-train.txt"]
    pins = list(requirement_lines(ROOT / "requirements.txt"))
    # The local stack's and the tools' pins: nothing the train image needs.
    dev_only = {
        package(line)
        for file, line in pins
        if file in ("requirements.txt", "requirements-stack.txt")
    }
    trains = {package(line) for _, line in requirement_lines(ROOT / "requirements-train.txt")}
    assert {"tensorflow-cpu", "keras", "keras-tuner", "ai-edge-litert"} <= trains
    assert {"pytest", "moto", "locust"} <= dev_only and trains.isdisjoint(dev_only)


def test_every_version_is_pinned_in_exactly_one_place() -> None:
    # The training set and the local stack both include the serving set: read each file once.
    pins = set(requirement_lines(ROOT / "requirements.txt"))
    files_of: dict[str, set[str]] = {}
    for file, line in pins:
        files_of.setdefault(package(line), set()).add(file)
    assert {name: files for name, files in files_of.items() if len(files) > 1} == {}
    assert len({package(line) for _, line in pins}) == len(pins), "a package is pinned twice"
    assert all("==" in line for _, line in pins), "a requirement is not pinned"


def test_the_build_context_holds_what_the_images_copy_and_no_data_tests_or_notebooks() -> None:
    context = build_context()
    for stage in dockerfile_stages().values():
        for source in stage.copied():
            assert any(f == source or f.startswith(source) for f in context), source
    top_level = {f.split("/")[0] for f in context if "/" in f}
    assert top_level == {"imgclf", "model"}
    leaked = [f for f in context if f.endswith((".ipynb", ".pyc")) or "__pycache__" in f]
    assert leaked == []
    assert {"model/scene/model.tflite", "imgclf/preprocess.py", "lambda_func.py"} <= context
