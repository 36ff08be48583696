"""What the detection scores read: a model's logits and penultimate features, and
statistics of the training features (for the Mahalanobis and kernel-density baselines).

Sizes: N inputs, K classes, D feature dimensions, M training features.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from gmcli.errors import GmcliError
from gmcli.models.classifier import Classifier

log = logging.getLogger(__name__)


@dataclass
class Outputs:
    """A model's outputs for N inputs.

    Attributes:
        logits: evaluation logits (N, K), float32 (never with a GM margin).
        features: penultimate features (N, D), float32.
    """

    logits: Tensor
    features: Tensor

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def pred(self) -> Tensor:
        """Predicted classes (N,), int64."""
        return self.logits.argmax(dim=1)


def check_inputs(model: Classifier, x: Tensor, what: str) -> None:
    """Raise GmcliError unless ``x`` is (N, C, H, W) of the model's input shape."""
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(model.input_shape):
        raise GmcliError(
            f"{what}: inputs of shape {tuple(x.shape[1:])}, but the checkpoint takes "
            f"{tuple(model.input_shape)} (C, H, W)"
        )


@torch.no_grad()
def extract(model: Classifier, batches: Iterable[Tensor]) -> Outputs:
    """Logits and features of every batch, on the device of the model's parameters.

    Args:
        model: the classifier (put in eval mode here when it is not).
        batches: inputs in [0, 1], each (B, C, H, W).
    """
    if model.training:
        log.warning("the model was in training mode; switched to eval mode for detection")
        model.eval()
    device = next(model.parameters()).device
    logits, feats = [], []
    for x in batches:
        lg, f = model.logits_and_features(x.to(device=device, dtype=torch.float32))
        logits.append(lg.float().cpu())
        feats.append(f.float().cpu())
    if not logits:
        k, d = model.head.num_classes, model.head.feat_dim
        return Outputs(torch.zeros(0, k), torch.zeros(0, d))
    return Outputs(torch.cat(logits), torch.cat(feats))


def tensor_batches(x: Tensor, batch_size: int) -> Iterable[Tensor]:
    """Float32 batches (B, C, H, W) of a tensor of images (uint8 is divided by 255)."""
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        yield xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()


@dataclass
class TrainingStats:
    """Statistics of the training features (by true label).

    Attributes:
        class_means: per-class mean feature (K, D).
        tied_cov: the covariance shared by all classes (D, D): the within-class
            scatter sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T / M (Lee et al. 2018).
        features: training features (M, D) for kernel density (may be a sample).
        labels: their labels (M,).
    """

    class_means: Tensor
    tied_cov: Tensor
    features: Tensor
    labels: Tensor

    @classmethod
    def fit(cls, features: Tensor, labels: Tensor, num_classes: int) -> TrainingStats:
        """Class means and tied covariance (float64 accumulation) of features (M, D)."""
        if len(features) == 0:
            raise GmcliError("training features: none to fit detection statistics on")
        f = features.double()
        y = labels.to(torch.int64)
        means = f.new_zeros(num_classes, f.shape[1])
        for k in range(num_classes):
            members = f[y == k]
            if len(members):
                means[k] = members.mean(dim=0)
            else:
                log.warning("class %d has no training features; its mean is set to 0", k)
        centred = f - means[y]
        cov = centred.T @ centred / len(f)
        return cls(means.float(), cov.float(), features.float(), y)

    @classmethod
    def from_calib(cls, calib: dict[str, Tensor], num_classes: int) -> TrainingStats | None:
        """Statistics stored in a checkpoint (``calib.*``), or None when incomplete.

        Means and covariance missing beside stored features are computed from them.
        """
        if "features" not in calib or "labels" not in calib:
            return None
        feats, labels = calib["features"].float(), calib["labels"].to(torch.int64)
        if "class_means" in calib and "tied_cov" in calib:
            return cls(calib["class_means"].float(), calib["tied_cov"].float(), feats, labels)
        return cls.fit(feats, labels, num_classes)
