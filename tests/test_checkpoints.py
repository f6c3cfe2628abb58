"""Checkpoint files the pipeline reads back: no code runs from them, damage and foreign runs are detected, and
writes are durable (fsync before rename, rename before pruning) and leave the previous checkpoint intact."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datagen import make_arrays

from kr.config import GeneratorConfig
from kr.method import classifier
from kr.method.generator import GeneratorError, list_checkpoints, load_generator, train_generator

TINY = dict(block_out_channels=[8, 16], attention_levels=[False, False], norm_num_groups=4, batch_size=8)
MD5_A = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
MD5_B = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"


def _cfg(**kw) -> GeneratorConfig:
    return GeneratorConfig(**{**TINY, "train_steps": 4, "checkpoint_every": 2, "keep_checkpoints": 2, **kw})


def _train(out: Path, md5: str = MD5_A, **kw) -> dict:
    a = make_arrays(n_train=24, n_val=3, n_test=3, channels=1, n_classes=3)
    x = np.ascontiguousarray(a["train_images"][:, None])
    return train_generator(x, a["train_labels"][:, 0].astype(np.int64), 3, _cfg(**kw), out, 0, dataset_md5=md5)


def _state(out: Path, step: int) -> Path:
    return out / f"checkpoints/step-{step:06d}/state.pt"


def _rewrite_digest(state: Path) -> None:
    """What someone who plants a file can also do: make manifest.json (where there is one) agree with it."""
    manifest = state.parent / "manifest.json"
    if not manifest.exists():
        return
    data = json.loads(manifest.read_text())
    data["sha256"]["state.pt"] = hashlib.sha256(state.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(data))


class _Planted:
    """Pickles as a call that writes a marker file: what a malicious state.pt would do on torch.load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.fault
def test_a_planted_pickle_never_runs_and_resume_falls_back(tmp_path: Path, caplog) -> None:
    out, marker = tmp_path / "gen", tmp_path / "marker"
    _train(out)
    state = _state(out, 4)
    torch.save({"step": 4, "unet": _Planted(marker)}, state)
    _rewrite_digest(state)
    with caplog.at_level(logging.WARNING, logger="kr.method.generator"):
        result = _train(out, train_steps=6)
    assert not marker.exists(), "loading a checkpoint ran code from its pickle"
    assert result["resumed_from"] == 2 and result["complete"]
    assert result["skipped_checkpoints"] == ["step-000004"]
    assert "weights_only" in caplog.text and "step-000004" in caplog.text


@pytest.mark.fault
def test_a_planted_pickle_in_the_only_checkpoint_means_step_0(tmp_path: Path, caplog) -> None:
    out, marker = tmp_path / "gen", tmp_path / "marker"
    _train(out, train_steps=2)
    state = _state(out, 2)
    torch.save(_Planted(marker), state)
    _rewrite_digest(state)
    with caplog.at_level(logging.WARNING, logger="kr.method.generator"):
        result = _train(out, train_steps=2)
    assert not marker.exists()
    assert result["resumed_from"] == 0 and result["complete"] and result["skipped_checkpoints"] == ["step-000002"]
    assert "training from step 0" in caplog.text


def test_checkpoint_state_holds_plain_values_and_a_manifest(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _train(out)
    for ckpt in list_checkpoints(out):
        state = torch.load(ckpt.path / "state.pt", map_location="cpu", weights_only=True)
        assert state["step"] == ckpt.step and set(state) == {"step", "unet", "optimizer", "lr_scheduler", "ema"}
        digests = json.loads((ckpt.path / "manifest.json").read_text())["sha256"]
        assert {"state.pt", "ema/config.json", "ema/diffusion_pytorch_model.safetensors"} <= set(digests)
        assert all(hashlib.sha256((ckpt.path / n).read_bytes()).hexdigest() == d for n, d in digests.items())


@pytest.mark.fault
def test_another_datasets_folder_is_refused_naming_both_md5s(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _train(out, md5=MD5_A)
    with pytest.raises(GeneratorError) as err:
        _train(out, md5=MD5_B)
    message = str(err.value)
    assert MD5_A in message and MD5_B in message and "generator.resume=never" in message
    assert _train(out, md5=MD5_A, train_steps=6)["resumed_from"] == 4  # the same data resumes


def test_resume_never_deletes_the_old_run_and_starts_at_step_0(tmp_path: Path, caplog) -> None:
    out = tmp_path / "gen"
    _train(out, md5=MD5_A, label_dropout=0.3, train_steps=6)
    with caplog.at_level(logging.WARNING, logger="kr.method.generator"):
        result = _train(out, md5=MD5_B, resume="never")
    assert result["resumed_from"] == 0 and result["complete"]
    assert "deleting the checkpoints" in caplog.text
    assert [c.step for c in list_checkpoints(out)] == [2, 4]  # step-000006 of the old run is gone
    spec = json.loads((out / "spec.json").read_text())
    assert spec["dataset_md5"] == MD5_B and spec["config"]["label_dropout"] == 0.1
    assert "resume" not in spec["config"]  # "auto" resumes what "never" trained
    assert _train(out, md5=MD5_B, train_steps=6)["resumed_from"] == 4


@pytest.mark.fault
@pytest.mark.parametrize("damage", ["truncated", "truncated_with_matching_digest"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path, caplog, damage: str) -> None:
    out = tmp_path / "gen"
    _train(out)
    state = _state(out, 4)
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    if damage == "truncated_with_matching_digest":
        _rewrite_digest(state)  # so torch.load itself meets the damage
    with caplog.at_level(logging.WARNING, logger="kr.method.generator"):
        result = _train(out, train_steps=6)
    assert result["resumed_from"] == 2 and result["complete"]
    assert result["skipped_checkpoints"] == ["step-000004"] and "step-000004" in caplog.text
    assert [c.step for c in list_checkpoints(out)] == [4, 6]
    assert torch.load(_state(out, 4), weights_only=True)["step"] == 4  # trained again, written again


def test_no_intact_checkpoint_means_step_0_with_a_warning(tmp_path: Path, caplog) -> None:
    out = tmp_path / "gen"
    _train(out)
    for step in (2, 4):
        _state(out, step).write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING, logger="kr.method.generator"):
        result = _train(out)
    assert result["resumed_from"] == 0 and result["complete"]
    assert result["skipped_checkpoints"] == ["step-000004", "step-000002"]
    assert "training from step 0" in caplog.text


def test_a_state_that_fails_half_way_still_gives_a_true_fresh_start(tmp_path: Path) -> None:
    """The UNet loads, the optimiser does not: the run from step 0 must not keep the loaded UNet weights."""
    out = tmp_path / "gen"
    _train(out, train_steps=2)
    state_path = _state(out, 2)
    state = torch.load(state_path, weights_only=True)
    state["optimizer"]["param_groups"] = []
    torch.save(state, state_path)
    _rewrite_digest(state_path)
    result = _train(out, train_steps=2)
    assert result["resumed_from"] == 0 and result["skipped_checkpoints"] == ["step-000002"]
    _train(tmp_path / "straight", train_steps=2)
    a = load_generator(out / "checkpoints/step-000002").state_dict()
    b = load_generator(tmp_path / "straight/checkpoints/step-000002").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_load_generator_refuses_ema_weights_that_do_not_match_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    _train(out, train_steps=2)
    weights = out / "checkpoints/step-000002/ema/diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the tensor data: safetensors itself would load it
    weights.write_bytes(bytes(data))
    with pytest.raises(GeneratorError, match="damaged"):
        load_generator(out / "checkpoints/step-000002")


def _full_disk(_obj, f, *args, **kwargs) -> None:
    """torch.save on a disk that fills up half-way through the file."""
    if isinstance(f, str | os.PathLike):  # torch.save(obj, path) as well as torch.save(obj, file)
        with open(f, "wb") as file:
            file.write(b"PK\x03\x04" + bytes(64))
    else:
        f.write(b"PK\x03\x04" + bytes(64))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.fault
def test_a_full_disk_mid_checkpoint_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "gen"
    _train(out, train_steps=2)
    before = (out / "checkpoints/step-000002/state.pt").read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", _full_disk)
        with pytest.raises(OSError) as err:
            _train(out, train_steps=4)
    assert err.value.errno == errno.ENOSPC
    assert "step-000004" in "".join(getattr(err.value, "__notes__", []))
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]  # no half checkpoint, no .tmp
    assert (out / "checkpoints/step-000002/state.pt").read_bytes() == before
    result = _train(out, train_steps=4)
    assert result["resumed_from"] == 2 and result["complete"] and result["skipped_checkpoints"] == []


class _Recorder:
    """Records fsyncs (by path), renames and deletions under one folder, in order."""

    def __init__(self, root: Path, monkeypatch) -> None:
        self.root, self.events = str(root.resolve()), []
        fsync, rename, replace, unlink, rmtree = os.fsync, os.rename, os.replace, os.unlink, shutil.rmtree

        def rec(kind: str, path) -> None:
            if str(path).startswith(self.root):
                self.events.append((kind, str(path)[len(self.root) + 1 :]))

        def on_fsync(fd: int) -> None:
            rec("fsync", os.readlink(f"/proc/self/fd/{fd}"))
            fsync(fd)

        def on_rename(src, dst, *a, **k) -> None:
            rec("rename", Path(dst).resolve())
            rename(src, dst, *a, **k)

        def on_replace(src, dst, *a, **k) -> None:
            rec("rename", Path(dst).resolve())
            replace(src, dst, *a, **k)

        def on_unlink(path, *a, **k) -> None:
            rec("delete", Path(path).resolve())
            unlink(path, *a, **k)

        def on_rmtree(path, *a, **k) -> None:
            rec("delete", Path(path).resolve())
            rmtree(path, *a, **k)

        for name, fn in (
            ("fsync", on_fsync),
            ("rename", on_rename),
            ("replace", on_replace),
            ("unlink", on_unlink),
        ):
            monkeypatch.setattr(os, name, fn)
        monkeypatch.setattr(shutil, "rmtree", on_rmtree)

    def index(self, kind: str, path: str) -> int:
        hits = [i for i, e in enumerate(self.events) if e == (kind, path)]
        assert hits, f"no {kind} of {path} in {self.events}"
        return hits[0]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced files")
def test_a_checkpoint_is_synced_before_its_rename_and_the_rename_before_pruning(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "gen"
    out.mkdir()
    with monkeypatch.context() as patch:
        rec = _Recorder(out, patch)
        _train(out, train_steps=2, checkpoint_every=1, keep_checkpoints=1)
    tmp = "checkpoints/step-000002.tmp"
    renamed = rec.index("rename", "checkpoints/step-000002")
    assert rec.index("fsync", f"{tmp}/state.pt") < renamed
    assert rec.index("fsync", f"{tmp}/ema/diffusion_pytorch_model.safetensors") < renamed
    assert rec.index("fsync", f"{tmp}/manifest.json") < renamed
    synced = [i for i, e in enumerate(rec.events) if e == ("fsync", "checkpoints") and i > renamed]
    assert synced, "the rename must be made durable (fsync of checkpoints/)"
    assert synced[0] < rec.index("delete", "checkpoints/step-000001"), "pruned before the new checkpoint was durable"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fsynced files")
def test_save_classifier_syncs_before_its_rename(tmp_path: Path, monkeypatch) -> None:
    model = classifier.SmallResNet(1, 2, width=4, blocks_per_stage=1)
    with monkeypatch.context() as patch:
        rec = _Recorder(tmp_path, patch)
        classifier.save_classifier(model, tmp_path / "m/teacher.pt", {"note": "x"})
    renamed = rec.index("rename", "m/teacher.pt")
    assert rec.index("fsync", "m/teacher.tmp") < renamed < rec.index("fsync", "m")
    assert classifier.load_classifier(tmp_path / "m/teacher.pt").arch == model.arch


@pytest.mark.fault
def test_save_classifier_on_a_full_disk_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "teacher.pt"
    classifier.save_classifier(classifier.SmallResNet(1, 2, width=4, blocks_per_stage=1), path)
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", _full_disk)
        with pytest.raises(OSError, match=os.strerror(errno.ENOSPC)):
            classifier.save_classifier(classifier.SmallResNet(1, 2, width=8, blocks_per_stage=1), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.pt"]  # no half-written .tmp left
