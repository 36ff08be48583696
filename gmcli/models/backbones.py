"""Feature extractors: normalised images (N, C, H, W) -> features (N, D).

Every backbone has an int attribute ``out_dim`` = D, the feature dimension the
classification head (GM or softmax) receives. Features are the output of a
linear layer (or of global pooling), with no activation after it, as the GM
loss expects (Wan et al., CVPR 2018).
"""

from __future__ import annotations

import difflib
import logging

import torch
from torch import Tensor, nn

from gmcli.errors import GmcliError

logger = logging.getLogger(__name__)

BACKBONES: tuple[str, ...] = ("digits-cnn", "convnet6", "cnn28", "resnet20")
TV_PREFIX = "tv:"

# (C, H, W) each native backbone needs; None in C accepts any channel count.
_INPUT_SHAPES: dict[str, tuple[int | None, int, int]] = {
    "digits-cnn": (1, 8, 8),
    "convnet6": (1, 28, 28),
    "cnn28": (1, 28, 28),
    "resnet20": (None, 32, 32),
}
_DEFAULT_FEAT_DIM: dict[str, int] = {"digits-cnn": 32, "convnet6": 2, "cnn28": 64}


def _conv_bn(c_in: int, c_out: int, act: nn.Module) -> list[nn.Module]:
    """3x3 convolution (same padding, no bias) + batch norm + activation."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), act]


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits: (N, 1, 8, 8) -> (N, D).

    conv 32 - conv 64 - max-pool (4x4) - conv 128 - global average pool - linear D,
    each convolution 3x3 with batch norm and ReLU; dropout before the linear layer.
    """

    def __init__(
        self, in_channels: int = 1, *, feat_dim: int = 32, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32, nn.ReLU(inplace=True)),
            *_conv_bn(32, 64, nn.ReLU(inplace=True)),
            nn.MaxPool2d(2),
            *_conv_bn(64, 128, nn.ReLU(inplace=True)),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.fc = nn.Linear(128, feat_dim)
        self.out_dim = feat_dim

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, 8, 8) -> (N, D)."""
        return self.fc(self.features(x))


class ConvNet6(nn.Module):
    """The GM paper's MNIST network: (N, 1, 28, 28) -> (N, D), D = 2 by default.

    Six convolutions in pairs of 32, 64 and 128 channels, each pair followed by
    2x2 max-pooling (28 -> 14 -> 7 -> 3), with batch norm and PReLU, then a linear
    layer to D. With D = 2 the learned features can be drawn as they are: the
    well-known picture of one Gaussian blob per class.

    Note:
        Wan et al. (CVPR 2018), after Wen et al.'s center-loss network, use 5x5
        kernels; gmcli uses 3x3 kernels, about 2.5 times cheaper on a CPU.
    """

    def __init__(self, in_channels: int = 1, *, feat_dim: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in (32, 64, 128):
            layers += _conv_bn(c_in, c_out, nn.PReLU(c_out))
            layers += _conv_bn(c_out, c_out, nn.PReLU(c_out))
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(128 * 3 * 3, feat_dim)
        self.out_dim = feat_dim

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, 28, 28) -> (N, D)."""
        return self.fc(self.features(x))


class CNN28(nn.Module):
    """A compact VGG-style network for 28x28 grey images: (N, 1, 28, 28) -> (N, D).

    One 3x3 convolution of ``width`` channels at 28x28, then two stages of two
    (2 ``width``, then 4 ``width`` channels), each stage after a 2x2 max-pool
    (28 -> 14 -> 7); batch norm and ReLU after every convolution; global average
    pooling; dropout; linear to D (64 by default).

    Built for training throughput on a CPU: a second convolution at 28x28 would
    cost about a quarter more time per image. Forward + backward + SGD step at
    batch 128, measured on one core of the development machine while it was
    shared: about 400 images per CPU-second at width 24 (163k parameters),
    about 270 at width 32 (286k), about 700 at width 16 (74k).
    """

    def __init__(
        self, in_channels: int = 1, *, feat_dim: int = 64, width: int = 24, dropout: float = 0.2
    ) -> None:
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w1, nn.ReLU(inplace=True)),
            nn.MaxPool2d(2),
            *_conv_bn(w1, w2, nn.ReLU(inplace=True)),
            *_conv_bn(w2, w2, nn.ReLU(inplace=True)),
            nn.MaxPool2d(2),
            *_conv_bn(w2, w3, nn.ReLU(inplace=True)),
            *_conv_bn(w3, w3, nn.ReLU(inplace=True)),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
        )
        self.fc = nn.Linear(w3, feat_dim)
        self.out_dim = feat_dim

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, 28, 28) -> (N, D)."""
        return self.fc(self.features(x))


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (He et al. 2016, option A).

    When the block halves the size and doubles the channels, the shortcut
    subsamples by 2 and pads the new channels with zeros (no parameters), as in
    the paper's CIFAR experiments.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride = stride
        self.extra = c_out - c_in

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.extra:
            pad = self.extra // 2
            shortcut = nn.functional.pad(shortcut, (0, 0, 0, 0, pad, self.extra - pad))
        return torch.relu(out + shortcut)


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20: (N, C, 32, 32) -> (N, D), D = 64 natively.

    A 3x3 convolution to 16 channels, three stages of three basic blocks (16, 32,
    64 channels; the last two stages start with stride 2), global average pooling.
    A linear projection to ``feat_dim`` is added only when it differs from 64.

    References:
        K. He, X. Zhang, S. Ren, J. Sun. Deep Residual Learning for Image
        Recognition. CVPR 2016, section 4.2.
    """

    def __init__(self, in_channels: int = 3, *, feat_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = _conv_bn(in_channels, 16, nn.ReLU(inplace=True))
        c_in = 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(_BasicBlock(c_in, c_out, stride if i == 0 else 1))
                c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Identity() if feat_dim in (None, 64) else nn.Linear(64, feat_dim)
        self.out_dim = 64 if feat_dim is None else feat_dim

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, 32, 32) -> (N, D)."""
        return self.proj(self.features(x))


class TorchvisionBackbone(nn.Module):
    """A torchvision classification model whose last layer is replaced by Identity.

    Its penultimate features (N, D0) feed the head, through a linear projection to
    ``feat_dim`` when that is given and differs from D0. Grey inputs (N, 1, H, W)
    are repeated to 3 channels, as every torchvision classifier takes RGB.
    Weights are never loaded: the model starts from its random initialisation.
    """

    def __init__(
        self, model: nn.Module, *, in_channels: int, native_dim: int, feat_dim: int | None
    ) -> None:
        super().__init__()
        self.model = model
        self.repeat = 3 if in_channels == 1 else 1
        self.proj = (
            nn.Identity() if feat_dim in (None, native_dim) else nn.Linear(native_dim, feat_dim)
        )
        self.out_dim = native_dim if feat_dim is None else feat_dim

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, D)."""
        if self.repeat > 1:
            x = x.expand(-1, self.repeat, -1, -1)
        return self.proj(self.model(x))


# An unusual class count marks the final layer of a torchvision model.
_MARK_CLASSES = 997


def _strip_classifier(model: nn.Module, name: str) -> int:
    """Replace the layer that outputs the class scores by Identity; return its input width."""
    found = [
        (qualname, m)
        for qualname, m in model.named_modules()
        if (isinstance(m, nn.Linear) and m.out_features == _MARK_CLASSES)
        or (isinstance(m, nn.Conv2d) and m.out_channels == _MARK_CLASSES)
    ]
    if len(found) != 1:
        raise GmcliError(
            f"backbone: cannot find the classification layer of torchvision model {name!r} "
            f"({len(found)} candidates); use another model"
        )
    qualname, layer = found[0]
    parent = model.get_submodule(qualname.rpartition(".")[0]) if "." in qualname else model
    setattr(parent, qualname.rpartition(".")[2], nn.Identity())
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _build_torchvision(
    name: str, input_shape: tuple[int, int, int], feat_dim: int | None
) -> TorchvisionBackbone:
    import torchvision

    model_name = name[len(TV_PREFIX):]
    known = torchvision.models.list_models(module=torchvision.models)
    if model_name not in known:
        close = difflib.get_close_matches(model_name, known, n=3)
        hint = f"; did you mean {', '.join(TV_PREFIX + c for c in close)}?" if close else ""
        raise GmcliError(
            f"backbone: unknown torchvision classification model {model_name!r} in {name!r}; "
            f"accepted: tv:<name> with a name of torchvision.models.list_models(){hint}"
        )
    if input_shape[0] not in (1, 3):
        raise GmcliError(
            f"backbone: {name!r} takes 1 or 3 input channels, got input_shape {input_shape}"
        )

    extra = {"aux_logits": False} if model_name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(
        model_name, weights=None, num_classes=_MARK_CLASSES, **extra
    )
    native_dim = _strip_classifier(model, model_name)
    backbone = TorchvisionBackbone(
        model, in_channels=input_shape[0], native_dim=native_dim, feat_dim=feat_dim
    )

    # A dry run on two blank images checks that the model accepts this input size.
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros(2, *input_shape))
    except (RuntimeError, ValueError) as exc:
        raise GmcliError(
            f"backbone: {name!r} does not accept input_shape {input_shape} ({exc})"
        ) from exc
    finally:
        backbone.train(was_training)
    if out.shape != (2, backbone.out_dim):
        raise GmcliError(
            f"backbone: {name!r} gives features of shape {tuple(out.shape[1:])}, "
            f"expected ({backbone.out_dim},)"
        )
    return backbone


def build_backbone(
    name: str, *, input_shape: tuple[int, int, int], feat_dim: int | None = None
) -> nn.Module:
    """Build a feature extractor by name.

    Args:
        name: one of ``BACKBONES`` or ``tv:<torchvision model name>``.
        input_shape: (C, H, W) of the (normalised) inputs.
        feat_dim: D, the feature dimension; by default 32 (digits-cnn), 2 (convnet6),
            64 (cnn28), 64 (resnet20, native) or the torchvision model's own.

    Returns:
        an ``nn.Module`` mapping (N, C, H, W) to (N, D), with ``out_dim`` = D.
    """
    if not isinstance(name, str):
        raise GmcliError(f"backbone: expected a name, got {name!r}")
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise GmcliError(f"input_shape: expected (C, H, W) of positive sizes, got {input_shape}")
    if feat_dim is not None and (
        isinstance(feat_dim, bool) or not isinstance(feat_dim, int) or feat_dim < 1
    ):
        raise GmcliError(f"feat_dim: expected a positive integer, got {feat_dim!r}")

    if name.startswith(TV_PREFIX):
        backbone = _build_torchvision(name, shape, feat_dim)
    elif name in BACKBONES:
        need = _INPUT_SHAPES[name]
        if (need[0] is not None and shape[0] != need[0]) or shape[1:] != need[1:]:
            accepted = f"({'C' if need[0] is None else need[0]}, {need[1]}, {need[2]})"
            raise GmcliError(
                f"backbone: {name!r} needs input_shape {accepted}, got {shape}"
            )
        dim = feat_dim if feat_dim is not None else _DEFAULT_FEAT_DIM.get(name)
        if name == "digits-cnn":
            backbone = DigitsCNN(shape[0], feat_dim=dim)
        elif name == "convnet6":
            backbone = ConvNet6(shape[0], feat_dim=dim)
        elif name == "cnn28":
            backbone = CNN28(shape[0], feat_dim=dim)
        else:
            backbone = ResNet20(shape[0], feat_dim=dim)
    else:
        raise GmcliError(
            f"backbone: unknown backbone {name!r}; accepted: {', '.join(BACKBONES)} "
            f"or tv:<torchvision model name> (for example tv:resnet18)"
        )

    n_params = sum(p.numel() for p in backbone.parameters())
    logger.debug("built backbone %s for %s: D=%d, %d parameters", name, shape, backbone.out_dim,
                 n_params)
    return backbone
