"""The registry's command line: ``python -m imgclf.registry [--uri U] [--name N] COMMAND``.

Commands: ``list`` (versions with their metrics; marks live and previous), ``show VERSION``,
``publish DIR [--images DIR] [--promote]``, ``promote VERSION``, ``rollback``, ``models`` (every
model with its live version), ``publish-bundled ROOT`` (each ``ROOT/<name>/`` with nothing live
yet is published and made live) and ``forget SHA256 [--bucket B]`` (an image removed everywhere in
the data bucket, its models retrained from scratch: ``imgclf.retrain.forget``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgclf import artifact
from imgclf.artifact import InvalidModel, Manifest
from imgclf.registry import (
    AliasNotFound,
    Registry,
    RegistryError,
    list_models,
    open_registry,
    publish_bundled,
)
from imgclf.settings import ServeSettings

HEADER = (
    f"{'version':>7}  {'created_at':<19}  {'quant':<8}  {'accuracy':>8}  {'macro_f1':>8}  "
    f"{'gate':<5}  alias"
)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def version_row(registry: Registry, version: str, live: dict[str, Any]) -> str:
    """One line of ``list``: a version, when, how quantised, its metrics and gate, live or not."""
    files = registry.read_version(version, names=(artifact.MANIFEST, artifact.METRICS))
    manifest = Manifest.from_json(files[artifact.MANIFEST])
    metrics = json.loads(files[artifact.METRICS])
    # The retrain job's evaluation on the fixed test split, else train.py's own.
    evaluation = metrics.get("evaluation") or manifest.metrics
    gate = metrics.get("gate", {})
    marks = "live" if live.get("version") == version else ""
    marks = marks or ("previous" if live.get("previous") == version else "")
    return (
        f"{version:>7}  {(manifest.created_at or '-')[:19]:<19}  "
        f"{manifest.quantization or '-':<8}  {_fmt(evaluation.get('accuracy')):>8}  "
        f"{_fmt(evaluation.get('macro_f1')):>8}  {str(gate.get('passed', '-')):<5}  {marks}"
    )


def forget_image(bucket: str, sha256: str) -> int:
    """``forget SHA256``: ``imgclf.retrain.forget`` on the data bucket (imported here only: the
    serve image copies this package, not the retrain stage)."""
    from imgclf import layout
    from imgclf.retrain.forget import forget, format_report

    try:
        report = forget(layout.data_store(bucket), sha256.strip().lower())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 1 if report.problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one registry command; exit 1 with the reason on a registry error."""
    settings = ServeSettings.from_env()
    parser = argparse.ArgumentParser(prog="python -m imgclf.registry", description=__doc__)
    parser.add_argument("--uri", default=settings.model_registry_uri, help="MODEL_REGISTRY_URI")
    parser.add_argument("--name", default=settings.model_name, help="MODEL_NAME")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="versions with their metrics; marks live and previous")
    commands.add_parser("show", help="manifest + metrics of a version").add_argument("version")
    publish = commands.add_parser("publish", help="validate and publish a model directory")
    publish.add_argument("model_dir", type=Path)
    publish.add_argument("--images", type=Path, help="known images to predict on")
    publish.add_argument("--promote", action="store_true", help="also make it live")
    promote = commands.add_parser("promote", help="make a published version live")
    promote.add_argument("version")
    commands.add_parser("rollback", help="make the previous live version live again")
    commands.add_parser("models", help="every model in the registry and its live version")
    bundled = commands.add_parser(
        "publish-bundled", help="publish and make live each ROOT/<name>/ with nothing live yet"
    )
    bundled.add_argument("root", type=Path)
    forget = commands.add_parser(
        "forget", help="remove an image (by sha256) from the data bucket; retrain its models"
    )
    forget.add_argument("sha256")
    forget.add_argument("--bucket", default=settings.data_bucket, help="DATA_BUCKET")
    args = parser.parse_args(argv)
    if args.command == "forget":
        return forget_image(args.bucket, args.sha256)
    if not args.uri:
        parser.error("set --uri or MODEL_REGISTRY_URI")
    registry = open_registry(args.uri, args.name)
    try:
        if args.command == "list":
            try:
                live = registry.read_live()[0]
            except AliasNotFound:
                live = {}
            print(HEADER)
            for version in registry.list_versions():
                print(version_row(registry, version, live))
        elif args.command == "show":
            print(json.dumps(registry.describe(args.version), indent=2))
        elif args.command == "publish":
            version = registry.publish(args.model_dir, args.images)
            print(f"published {registry.uri} version {version}")
            if args.promote:
                print(json.dumps(registry.promote(version, reason="cli publish --promote")))
        elif args.command == "promote":
            print(json.dumps(registry.promote(args.version, reason="cli promote")))
        elif args.command == "rollback":
            print(json.dumps(registry.rollback(reason="cli rollback")))
        elif args.command == "models":
            for name in list_models(registry.store):
                try:
                    live = Registry(registry.store, name).read_live()[0]["version"]
                except AliasNotFound:
                    live = "-"
                print(f"{name:<24}  live {live}")
        elif args.command == "publish-bundled":
            reason = "publish-bundled: the bundled model"
            for name, version in publish_bundled(registry.store, args.root, reason).items():
                done = f"version {version} published and live" if version else "live already"
                print(f"{args.uri}/{name}: {done}")
    except (RegistryError, InvalidModel) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
