"""Evaluation of a classifier on a labelled split: metrics and the plots that go with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # no pyplot: files only, and no global backend is chosen
from sklearn.metrics import classification_report, confusion_matrix


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        y_true: true class indices.
        y_pred: predicted class indices.
        classes: class names, indexed like the labels.

    Returns:
        A JSON-ready dict (rows of ``confusion_matrix`` are true classes, columns predictions).
    """
    labels = list(range(len(classes)))
    report = classification_report(
        y_true, y_pred, labels=labels, target_names=classes, output_dict=True, zero_division=0
    )
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "per_class": {
            name: {
                "precision": float(report[name]["precision"]),
                "recall": float(report[name]["recall"]),
                "f1": float(report[name]["f1-score"]),
                "support": int(report[name]["support"]),
            }
            for name in classes
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "count": int(len(y_true)),
    }


def plot_confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path) -> None:
    """Writes the confusion matrix (counts, true class per row) as a PNG."""
    cm = np.asarray(matrix)
    fig = Figure(figsize=(1.1 * len(classes) + 2, 1.1 * len(classes) + 1.5))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            colour = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour)
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    """Writes the loss and accuracy curves of a fit as a PNG."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, values in history.items():
            if key.endswith(metric):
                ax.plot(range(1, len(values) + 1), values, marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
