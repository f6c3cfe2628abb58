"""The GKD student's training recipe: what the config says is what it trains."""

from __future__ import annotations

from pathlib import Path

from datagen import write_npz
from test_validation import write_shard

from kr.config import ClassifierConfig, GKDConfig
from kr.data import load_dataset
from kr.method.student import train_student


def test_gkd_epochs_is_the_number_of_epochs_the_student_trains(tmp_path: Path) -> None:
    data = load_dataset(str(write_npz(tmp_path / "d.npz", n_train=60, n_val=20, n_test=20, channels=3, n_classes=5)))
    shard = write_shard(tmp_path / "shard.npz", n=40, n_classes=5)
    recipe = ClassifierConfig(width=4, blocks_per_stage=1, epochs=5, batch_size=16, bf16=False)
    result = train_student(data, [shard], GKDConfig(epochs=2, pool_slices=2, student=recipe), tmp_path / "out", 0)
    assert len(result["history"]) == 2
