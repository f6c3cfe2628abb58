"""Classification metrics computed the same way for teacher, student and every baseline."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax(logits / temperature) of float (N, K) logits -> probabilities (N, K), rows summing to 1.

    The row maximum is subtracted first, so large logits cannot overflow; the float dtype is kept.
    """
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, ROC AUC (binary: positive class; multi-class: macro one-vs-rest) and per-class recall.

    logits: float (N, K); labels: int (N,) in [0, K). Returns {"accuracy", "auc", "n", "per_class": {"c": {"n",
    "recall"}}, "confusion_matrix"}: accuracy and recall are fractions in [0, 1] (recall None for an absent class);
    auc is NaN when fewer than two classes are present, and multi-class AUC renormalises the probabilities over
    the classes present; confusion_matrix is K x K counts, rows true class, columns predicted.
    """
    probs = softmax(logits.astype(np.float64))
    pred = probs.argmax(axis=1)
    n_classes = probs.shape[1]
    labels = np.asarray(labels).astype(np.int64)
    present = np.unique(labels)
    if len(present) < 2:
        auc = float("nan")  # AUC is undefined with one class; report it as missing, never as a number
    elif n_classes == 2:
        auc = float(roc_auc_score(labels, probs[:, 1]))
    else:
        auc = float(
            roc_auc_score(
                labels,
                probs[:, present] / probs[:, present].sum(1, keepdims=True),
                multi_class="ovr",
                average="macro",
                labels=present,
            )
        )
    per_class = {
        str(c): {
            "n": int((labels == c).sum()),
            "recall": float((pred[labels == c] == c).mean()) if (labels == c).any() else None,
        }
        for c in range(n_classes)
    }
    return {
        "accuracy": float((pred == labels).mean()),
        "auc": auc,
        "n": int(len(labels)),
        "per_class": per_class,
        # rows: true class, columns: predicted class
        "confusion_matrix": np.bincount(labels * n_classes + pred, minlength=n_classes**2)
        .reshape(n_classes, n_classes)
        .tolist(),
    }


def majority_rate(labels: np.ndarray) -> float:
    """Share of the most common class among int labels (N,), a fraction in [0, 1]; ValueError when N is 0."""
    return float(np.bincount(np.asarray(labels).astype(np.int64)).max() / len(labels))
