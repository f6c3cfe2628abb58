"""Teacher: the compact CNN trained on the real training split (the one model that sees real images)."""

from __future__ import annotations

from pathlib import Path

from kr.config import ClassifierConfig
from kr.data import Dataset
from kr.method.classifier import build_classifier, fit, predict_logits, save_classifier
from kr.method.metrics import classification_metrics


def train_teacher(data: Dataset, cfg: ClassifierConfig, out_dir: Path, seed: int) -> dict:
    """Train on real train with augmentation, keep the best epoch by real val, score once on real test.

    Writes `out_dir/teacher.pt` (`save_classifier`, extra: role, dataset_md5). Returns {"path", "params" (count),
    "best_epoch", "history" (per-epoch records of `fit`), "train_s" (seconds), "val", "test"
    (`classification_metrics` dicts: accuracy a fraction in [0, 1])}.
    """
    info = data.info
    model = build_classifier(cfg, info.channels, info.n_classes, info.image_size, seed)
    history = fit(model, lambda _epoch: (data.x_train, data.y_train), (data.x_val, data.y_val), cfg, seed, "teacher")
    val = classification_metrics(predict_logits(model, data.x_val, bf16=cfg.bf16), data.y_val)
    test = classification_metrics(predict_logits(model, data.x_test, bf16=cfg.bf16), data.y_test)
    path = save_classifier(model, Path(out_dir) / "teacher.pt", extra={"role": "teacher", "dataset_md5": info.md5})
    return {
        "path": str(path),
        "params": sum(p.numel() for p in model.parameters()),
        "best_epoch": history["best_epoch"],
        "history": history["history"],
        "train_s": history["train_s"],
        "val": val,
        "test": test,
    }
