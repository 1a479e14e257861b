"""Converts a trained Keras model to TFLite and proves it still agrees with Keras before writing it.

Examples:
    python convert.py --model-dir runs/train --data data/sample                  # float16
    python convert.py --model-dir runs/train --data data/sample --quantization int8 --out model

MODEL_DIR holds model.keras, labels.json and metrics.json (what train.py writes). The parity check
runs both models on the test split of --data; the conversion is refused (exit code 3, nothing
written) when float models agree on fewer than --min-agreement of the top-1 answers, or when int8
loses more than --max-accuracy-drop accuracy, unless --force.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import keras
import numpy as np

from imgclf.conversion import QUANTIZATIONS, check_parity, to_tflite, write_model_dir
from imgclf.data import DatasetError, find_splits, load_split
from imgclf.settings import ServeSettings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model-dir", type=Path, required=True, help="folder with model.keras etc.")
    p.add_argument("--data", type=Path, required=True, help="dataset root (seg_train/, seg_test/)")
    p.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="float16",
        help="float32 | float16 (half the size) | dynamic (int8 weights) | int8 (full)",
    )
    p.add_argument("--out", type=Path, help="where to write (default: --model-dir)")
    p.add_argument("--name", default=ServeSettings().model_name, help="model name in the manifest")
    p.add_argument(
        "--representative", type=int, default=200, help="training images used to calibrate int8"
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        help="least top-1 agreement with Keras for float32/float16/dynamic",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=0.01,
        help="most test accuracy int8 may lose against Keras",
    )
    p.add_argument("--force", action="store_true", help="write even when the parity check fails")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or args.model_dir
    model = keras.models.load_model(args.model_dir / "model.keras")
    classes = json.loads((args.model_dir / "labels.json").read_text())
    size = model.input_shape[1:3]
    try:
        train_dir, test_dir = find_splits(args.data)
        test = load_split(test_dir, *size, classes=classes)
        train = load_split(train_dir, *size, classes=classes)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    pick = rng.choice(len(train.x), size=min(args.representative, len(train.x)), replace=False)
    content = to_tflite(model, args.quantization, train.x[pick])
    report = check_parity(model, content, test.x, test.y)
    print(
        f"parity on {report.images} test images: top-1 agreement {report.agreement:.4f}, "
        f"accuracy keras {report.keras_accuracy:.4f} tflite {report.tflite_accuracy:.4f}, "
        f"max |p diff| {report.max_abs_prob_diff:.4f}, size {report.size_bytes / 1024:.0f} KiB, "
        f"invoke p50 {report.invoke_ms_p50:.2f} ms"
    )
    problems = report.problems(args.quantization, args.min_agreement, args.max_accuracy_drop)
    if problems and not args.force:
        print(
            f"refused ({args.quantization}): {'; '.join(problems)}; nothing written "
            "(use --force to write anyway)",
            file=sys.stderr,
        )
        return 3
    for problem in problems:
        print(f"warning (--force): {problem}", file=sys.stderr)
    write_model_dir(args.model_dir, out, content, args.quantization, report, args.name)
    print(f"wrote {out / 'model.tflite'} and {out / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
