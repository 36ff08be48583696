"""The checkpoint: round trip, atomic writes, and refusal of foreign or unsafe files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gmcli.checkpoint import fingerprint, load_checkpoint, read_checkpoint, save_checkpoint
from gmcli.errors import GmcliError
from gmcli.losses.gm import GMHead
from gmcli.losses.softmax import SoftmaxHead
from gmcli.models.backbones import build_backbone
from gmcli.models.classifier import Classifier

META = {
    "name": "t",
    "backbone": {"name": "digits-cnn"},
    "class_names": [str(i) for i in range(10)],
    "dataset": {"name": "digits"},
}


def make_model(head: str = "gm", covariance: str = "diagonal") -> Classifier:
    torch.manual_seed(0)
    backbone = build_backbone("digits-cnn", input_shape=(1, 8, 8), feat_dim=6)
    if head == "gm":
        h = GMHead(6, 10, covariance=covariance, learn_priors=True)
        with torch.no_grad():
            h.log_var.uniform_(-1, 1)
            h.prior_logits.normal_()
    else:
        h = SoftmaxHead(6, 10)
    model = Classifier(backbone, h, mean=[0.3], std=[0.4], input_shape=(1, 8, 8))
    # move batch-norm statistics away from their defaults, so the round trip covers buffers
    model.train()
    with torch.no_grad():
        model(torch.rand(32, 1, 8, 8))
    return model.eval()


@pytest.mark.parametrize(("head", "covariance"), [("gm", "diagonal"), ("gm", "isotropic"), ("softmax", "")])
def test_round_trip_gives_identical_logits(tmp_path: Path, head: str, covariance: str) -> None:
    model = make_model(head, covariance)
    x = torch.rand(16, 1, 8, 8)
    calib = {"class_means": torch.randn(10, 6)}
    meta = save_checkpoint(tmp_path / "c.safetensors", model, META, calib=calib)
    loaded, meta2, calib2 = load_checkpoint(tmp_path / "c.safetensors")
    assert torch.equal(model(x), loaded(x))
    assert torch.equal(calib2["class_means"], calib["class_means"])
    assert meta2 == meta
    assert meta["head"] == head and meta["input_shape"] == [1, 8, 8] and meta["feat_dim"] == 6
    assert not loaded.training
    assert set(meta["versions"]) == {"gmcli", "torch", "torchvision"}


def test_fingerprint_ignores_calibration_and_tracks_weights(tmp_path: Path) -> None:
    model = make_model()
    a = save_checkpoint(tmp_path / "a.safetensors", model, META)
    b = save_checkpoint(tmp_path / "b.safetensors", model, META, calib={"x": torch.ones(2)})
    assert a["fingerprint"] == b["fingerprint"]
    with torch.no_grad():
        model.head.mu[0, 0] += 1e-3
    c = save_checkpoint(tmp_path / "c.safetensors", model, META)
    assert c["fingerprint"] != a["fingerprint"]
    assert fingerprint({"t": torch.zeros(2)}) != fingerprint({"t": torch.zeros(3)})


class _RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_a_checkpoint_crafted_to_run_code_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.safetensors"
    payload = {"model": _RunsCode(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(GmcliError, match="not a readable safetensors file.*never unpickles"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_model(), META)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(GmcliError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_foreign_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(GmcliError, match="no gmcli metadata"):
        load_checkpoint(path)


def _rewrite_meta(path: Path, edit) -> None:  # noqa: ANN001
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["gmcli"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(meta, tensors)
    save_file(tensors, str(path), metadata={"gmcli": json.dumps(meta)})


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_model(), META)
    _rewrite_meta(path, lambda m, t: m.update(format_version=99))
    with pytest.raises(GmcliError, match="format version 99.*upgrade gmcli"):
        read_checkpoint(path)


def test_tampered_tensors_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, make_model(), META)
    _rewrite_meta(path, lambda m, t: t["head.mu"].add_(1.0))
    with pytest.raises(GmcliError, match="do not match its fingerprint"):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(GmcliError, match="does not exist"):
        load_checkpoint(tmp_path / "none.safetensors")


def test_interrupted_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.safetensors"
    first = save_checkpoint(path, make_model(), META)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):  # noqa: ANN001, ANN202
        Path(filename).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, make_model("softmax"), META)
    assert path.read_bytes() == before
    assert read_checkpoint(path)[1]["fingerprint"] == first["fingerprint"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
