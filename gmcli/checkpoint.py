"""The checkpoint shared by every command: safetensors tensors + JSON metadata.

Loading never unpickles anything: tensors come from safetensors, metadata from
JSON. Writes are atomic (a temporary file in the same folder, then a rename).
See docs/architecture.md for the layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gmcli import __version__
from gmcli.errors import GmcliError
from gmcli.losses.gm import GMHead
from gmcli.losses.softmax import SoftmaxHead
from gmcli.models.classifier import Classifier

log = logging.getLogger(__name__)

FORMAT = "gmcli-checkpoint"
FORMAT_VERSION = 1
META_KEY = "gmcli"
CALIB_PREFIX = "calib."


def versions() -> dict[str, str]:
    """Versions of gmcli, torch and torchvision, for provenance."""
    import torchvision

    return {"gmcli": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def fingerprint(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors``, sorted by name."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``.

    An interruption leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(
    path: str | os.PathLike,
    model: Classifier,
    meta: Mapping[str, Any],
    calib: Mapping[str, Tensor] | None = None,
) -> dict[str, Any]:
    """Write ``model`` and its metadata to ``path`` atomically; return the full metadata.

    ``meta`` holds the recipe-level facts (class names, dataset, recipe,
    metrics, epoch, backbone name ...); this function adds the format, the
    model's own facts, versions and the fingerprint. ``calib`` tensors are
    stored under ``calib.<name>``.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    head = model.head
    full: dict[str, Any] = dict(meta)
    full.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        head=model.head_kind,
        head_config=_head_config(head),
        num_classes=head.num_classes,
        feat_dim=head.feat_dim,
        input_shape=list(model.input_shape),
        mean=model.mean.flatten().tolist(),
        std=model.std.flatten().tolist(),
        versions=versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        fingerprint=fingerprint(state),
    )
    tensors = dict(state)
    for name, t in (calib or {}).items():
        tensors[CALIB_PREFIX + name] = t.detach().to("cpu").contiguous().clone()
    text = json.dumps(full, sort_keys=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: text}))
    log.info("wrote checkpoint %s (fingerprint %s)", path, full["fingerprint"][:12])
    return full


def _head_config(head: GMHead | SoftmaxHead) -> dict[str, Any]:
    if isinstance(head, GMHead):
        return {
            "covariance": head.covariance,
            "learn_priors": head.learn_priors,
            "log_var_range": list(head.log_var_range),
        }
    return {}


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint file, checked, without building a model."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GmcliError(f"checkpoint {str(path)!r} does not exist (expected a .safetensors file written by gmcli)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for foreign files
        raise GmcliError(
            f"checkpoint {str(path)!r} is not a readable safetensors file ({_first_line(exc)}); "
            "gmcli reads only its own .safetensors checkpoints and never unpickles files"
        ) from None
    if META_KEY not in raw:
        raise GmcliError(f"checkpoint {str(path)!r} has no gmcli metadata: it was not written by gmcli")
    try:
        meta = json.loads(raw[META_KEY])
    except json.JSONDecodeError:
        raise GmcliError(f"checkpoint {str(path)!r} has corrupt gmcli metadata (not JSON)") from None
    if meta.get("format") != FORMAT:
        raise GmcliError(f"checkpoint {str(path)!r} has format {meta.get('format')!r}, expected {FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise GmcliError(
            f"checkpoint {str(path)!r} has format version {version!r}; this gmcli "
            f"{__version__} reads versions up to {FORMAT_VERSION}: upgrade gmcli"
        )
    return tensors, meta


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def build_model(meta: Mapping[str, Any]) -> Classifier:
    """An untrained :class:`Classifier` with the architecture that ``meta`` describes."""
    from gmcli.models.backbones import build_backbone

    input_shape = tuple(meta["input_shape"])
    backbone = build_backbone(meta["backbone"]["name"], input_shape=input_shape, feat_dim=meta["feat_dim"])
    if meta["head"] == "gm":
        cfg = meta.get("head_config", {})
        head: GMHead | SoftmaxHead = GMHead(
            meta["feat_dim"],
            meta["num_classes"],
            covariance=cfg.get("covariance", "identity"),
            learn_priors=cfg.get("learn_priors", False),
            log_var_range=tuple(cfg.get("log_var_range", (-4.0, 4.0))),
        )
    elif meta["head"] == "softmax":
        head = SoftmaxHead(meta["feat_dim"], meta["num_classes"])
    else:
        raise GmcliError(f"checkpoint head {meta['head']!r} is not known; expected 'gm' or 'softmax'")
    return Classifier(backbone, head, mean=meta["mean"], std=meta["std"], input_shape=input_shape)


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Classifier, dict[str, Any], dict[str, Tensor]]:
    """Rebuild the classifier of a checkpoint, in eval mode on ``device``.

    Returns:
        (model, meta, calib): the model, its metadata and the calibration
        tensors (names without the ``calib.`` prefix).
    """
    tensors, meta = read_checkpoint(path)
    calib = {k[len(CALIB_PREFIX):]: v for k, v in tensors.items() if k.startswith(CALIB_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(CALIB_PREFIX)}
    if fingerprint(state) != meta.get("fingerprint"):
        raise GmcliError(f"checkpoint {str(path)!r} is corrupt: its tensors do not match its fingerprint")
    model = build_model(meta)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise GmcliError(f"checkpoint {str(path)!r} does not fit its own architecture: {_first_line(exc)}") from None
    model.to(device).eval()
    return model, meta, calib
