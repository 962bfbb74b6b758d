"""The ANNs to convert: a small CPU CNN, the paper's CIFAR-Net / VGG-16 / ResNet-20, standard
VGG-16 / ResNet-20.

Rules every builder keeps, because the converter relies on them:
- each activation site gets its own module from ``activation(act, y_th)`` (one IF layer each
  after conversion);
- only Conv2d, BatchNorm, Linear, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, activations,
  residual ``+``, strided slicing and zero ``F.pad`` are used, so every model traces with
  ``torch.fx``;
- BN sits conv -> BN -> activation, so it folds into the conv.
``build`` checks its sizes against ``LIMITS`` and ``MAX_PARAMETERS`` before allocating anything.

"-paper" models follow the authors' code, Jackn0/snn_optimal_conversion_pipeline on GitHub (file
named in each builder), with ``num_classes``/``act``/``y_th`` in place of their hard-coded heads
and activations.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from snnconv.activations import QCFS, ThresholdReLU, check_levels

ACTS = ("relu", "threshold", "qcfs")
MakeAct = Callable[[], nn.Module]


def activation(act: str, y_th: float, levels: int | None = None) -> nn.Module:
    """A fresh activation module: "relu" -> nn.ReLU(), "threshold" -> ThresholdReLU(y_th),
    "qcfs" -> QCFS(levels, y_th) (``levels`` only for "qcfs")."""
    if levels is not None and act != "qcfs":
        raise ValueError(f"levels is an option of act='qcfs' only, not of {act!r}")
    if act == "relu":
        return nn.ReLU()
    if act == "threshold":
        return ThresholdReLU(y_th)
    if act == "qcfs":
        return QCFS(check_levels(8 if levels is None else levels), y_th)
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTS}")


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters())


def _conv(
    cin: int, cout: int, k: int, bn: bool, stride: int = 1, bias: bool | None = None
) -> list[nn.Module]:
    """k x k conv with 'same' padding, then BN if ``bn``; the conv has a bias only without BN
    unless told."""
    conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=not bn if bias is None else bias)
    return [conv, nn.BatchNorm2d(cout)] if bn else [conv]


def _conv_act(
    cin: int,
    cout: int,
    k: int,
    make_act: MakeAct,
    bn: bool,
    stride: int = 1,
    bias: bool | None = None,
) -> list[nn.Module]:
    return [*_conv(cin, cout, k, bn, stride, bias), make_act()]


def _side(image_size: int, factor: int, name: str) -> int:
    """Feature-map side after downsampling by ``factor`` (floor, as AvgPool2d does); must stay
    >= 1."""
    if image_size // factor < 1:
        raise ValueError(f"{name} needs image_size >= {factor}, got {image_size}")
    return image_size // factor


def cnn(c: int, s: int, n: int, make_act: MakeAct, bn: bool) -> nn.Module:
    """Small CPU CNN for MNIST/CIFAR: 8C3-AP2-32C3-AP2-128FC-nFC (each conv -> BN -> act by
    default).

    Kept narrow at full resolution so an MNIST epoch trains in about 20 s on 2 CPU cores.
    """
    return nn.Sequential(
        *_conv_act(c, 8, 3, make_act, bn),
        nn.AvgPool2d(2),
        *_conv_act(8, 32, 3, make_act, bn),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * _side(s, 4, "cnn") ** 2, 128),
        make_act(),
        nn.Linear(128, n),
    )


def cifarnet(c: int, s: int, n: int, make_act: MakeAct, bn: bool) -> nn.Module:
    """CIFAR-Net: 128C3-256C3-AP2-512C3-AP2-1024C3-512C3-1024FC-512FC-nFC (no dropout; no BN by
    default).

    Follows models/CifarNet.py (CIFARNet) of the authors' repo.
    """
    return nn.Sequential(
        *_conv_act(c, 128, 3, make_act, bn),
        *_conv_act(128, 256, 3, make_act, bn),
        nn.AvgPool2d(2),
        *_conv_act(256, 512, 3, make_act, bn),
        nn.AvgPool2d(2),
        *_conv_act(512, 1024, 3, make_act, bn),
        *_conv_act(1024, 512, 3, make_act, bn),
        nn.Flatten(),
        nn.Linear(512 * _side(s, 4, "cifarnet") ** 2, 1024),
        make_act(),
        nn.Linear(1024, 512),
        make_act(),
        nn.Linear(512, n),
    )


def _vgg_features(c: int, cfg: list, make_act: MakeAct, bn: bool) -> list[nn.Module]:
    """cfg items: int = 3x3 conv to that width, (width, k) = k x k conv, "A" = AvgPool2d(2)."""
    layers = []
    for item in cfg:
        if item == "A":
            layers.append(nn.AvgPool2d(2))
            continue
        width, k = item if isinstance(item, tuple) else (item, 3)
        layers += _conv_act(c, width, k, make_act, bn)
        c = width
    return layers


def vgg16_paper(c: int, s: int, n: int, make_act: MakeAct, bn: bool) -> nn.Module:
    """VGG-16 (paper): 64C3-64C3-AP2-128C3-128C3-AP2-256C3-256C3-256C1-AP2-512C3-512C3-512C1-AP2-
    512C3-512C3-512C1-4096FC-4096FC-nFC (no 5th pool, no BN by default).

    Follows models/VGG16.py (VGG16) of the authors' repo.
    """
    cfg = [
        64,
        64,
        "A",
        128,
        128,
        "A",
        256,
        256,
        (256, 1),
        "A",
        512,
        512,
        (512, 1),
        "A",
        512,
        512,
        (512, 1),
    ]
    return nn.Sequential(
        *_vgg_features(c, cfg, make_act, bn),
        nn.Flatten(),
        nn.Linear(512 * _side(s, 16, "vgg16-paper") ** 2, 4096),
        make_act(),
        nn.Linear(4096, 4096),
        make_act(),
        nn.Linear(4096, n),
    )


def vgg16(c: int, s: int, n: int, make_act: MakeAct, bn: bool) -> nn.Module:
    """Standard VGG-16 (config D, AvgPool2 for max pooling):
    64,64,A,128,128,A,256x3,A,512x3,A,512x3,A (all 3x3 convs -> BN -> act by default), then
    512FC-nFC as is usual for CIFAR-size inputs."""
    cfg = [64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A"]
    return nn.Sequential(
        *_vgg_features(c, cfg, make_act, bn),
        nn.Flatten(),
        nn.Linear(512 * _side(s, 32, "vgg16") ** 2, 512),
        make_act(),
        nn.Linear(512, n),
    )


class ShortcutA(nn.Module):
    """He et al. (2016) option A shortcut: take every 2nd pixel, zero-pad planes // 4 channels on
    each side.

    For ``planes`` = 2 x input channels it maps (N, C, H, W) to (N, 2C, ceil(H/2), ceil(W/2));
    no parameters.
    """

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """act(residual(x) + shortcut(x)),
    residual = conv3x3(stride) [-BN] - act [-dropout] - conv3x3 [-BN].

    The shortcut is the identity when shapes match, else option A (``ShortcutA``) or a 1x1
    strided conv [-BN].
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        make_act: MakeAct,
        bn: bool,
        *,
        option_a: bool,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.residual = nn.Sequential(
            *_conv_act(cin, cout, 3, make_act, bn, stride, bias=False),
            *([nn.Dropout(dropout)] if dropout else []),
            *_conv(cout, cout, 3, bn, bias=False),
        )
        if stride == 1 and cin == cout:
            self.shortcut = nn.Sequential()  # identity; fx traces it to no node at all
        elif option_a:
            self.shortcut = ShortcutA(cout)
        else:
            self.shortcut = nn.Sequential(*_conv(cin, cout, 1, bn, stride, bias=False))
        self.act = make_act()

    def forward(self, x):
        return self.act(self.residual(x) + self.shortcut(x))


def _stage(cin: int, cout: int, blocks: int, stride: int, **block_kw) -> nn.Sequential:
    return nn.Sequential(
        *[
            BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, **block_kw)
            for i in range(blocks)
        ]
    )


def resnet20(c: int, s: int, n: int, make_act: MakeAct, bn: bool) -> nn.Module:
    """He et al. (2016) CIFAR ResNet-20: 16C3-BN-act, 3 stages x 3 basic blocks (16, 32, 64
    channels, stride 2 at stages 2 and 3, option-A shortcuts), global average pool, nFC.
    269,722 parameters for n = 10."""
    kw = dict(make_act=make_act, bn=bn, option_a=True)
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(*_conv_act(c, 16, 3, make_act, bn, bias=False)),
            layer1=_stage(16, 16, 3, 1, **kw),
            layer2=_stage(16, 32, 3, 2, **kw),
            layer3=_stage(32, 64, 3, 2, **kw),
            head=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n)),
        )
    )


def resnet20_paper(c: int, s: int, n: int, make_act: MakeAct, bn: bool) -> nn.Module:
    """The paper's "ResNet-20": 64C3-D-64C3-D-64C3-AP2, 4 stages x 2 basic blocks (64, 128, 256,
    512 channels, stride 2 at stages 2-4, 1x1-conv shortcuts, dropout 0.2 inside blocks), flatten,
    nFC; bias-free, no BN by default.

    Follows models/ResNet20.py (ResNet/BasicBlock, num_blocks=[2, 2, 2, 2]) of the authors' repo.
    """
    kw = dict(make_act=make_act, bn=bn, option_a=False, dropout=0.2)
    side = -(
        -_side(s, 2, "resnet20-paper") // 8
    )  # three stride-2 convs with padding give ceil(side / 2) each
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(
                *_conv_act(c, 64, 3, make_act, bn, bias=False),
                nn.Dropout(0.2),
                *_conv_act(64, 64, 3, make_act, bn, bias=False),
                nn.Dropout(0.2),
                *_conv_act(64, 64, 3, make_act, bn, bias=False),
                nn.AvgPool2d(2),
            ),
            layer1=_stage(64, 64, 2, 1, **kw),
            layer2=_stage(64, 128, 2, 2, **kw),
            layer3=_stage(128, 256, 2, 2, **kw),
            layer4=_stage(256, 512, 2, 2, **kw),
            head=nn.Sequential(nn.Flatten(), nn.Linear(512 * side**2, n, bias=False)),
        )
    )


_MODELS = {  # name: (builder, default batch_norm)
    "cnn": (cnn, True),
    "cifarnet": (cifarnet, False),
    "vgg16": (vgg16, True),
    "vgg16-paper": (vgg16_paper, False),
    "resnet20": (resnet20, True),
    "resnet20-paper": (resnet20_paper, False),
}
NAMES: tuple[str, ...] = tuple(_MODELS)


# Bounds on build()'s sizes, checked before anything is allocated (an arch record comes from a
# checkpoint file, which may be damaged): the zoo's models are for small images (MNIST 28, CIFAR
# 32) and the first Linear layer of cnn, cifarnet and vgg16-paper grows with image_size**2.
LIMITS = {
    "in_channels": (16, "images have 1 to 4 channels"),
    "image_size": (1024, "the zoo's models are for small images: MNIST's 28, CIFAR's 32 pixels"),
    "num_classes": (100_000, "over 4x the 21,841 classes of ImageNet-21k"),
}
# 4 GiB of float32 weights: 30x the largest zoo model at 32x32 (vgg16-paper, 35 M parameters)
MAX_PARAMETERS = 2**30


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    limit, why = LIMITS[what]
    if value > limit:
        raise ValueError(f"{what} must be at most {limit:,} ({why}), got {value:,}")
    return value


def _check_size(builder, *args) -> None:
    """Build on the meta device (no memory) and refuse more than MAX_PARAMETERS parameters."""
    with torch.device("meta"):
        n = count_parameters(builder(*args))
    if n > MAX_PARAMETERS:
        raise ValueError(
            f"these sizes give a model of {n:,} parameters, above the limit of "
            f"{MAX_PARAMETERS:,} (4 GiB of float32 weights)"
        )


# With threshold activations BN scales start at 0.3 * y_th, so few pre-activations start out
# clipped (zero gradient). Measured: ResNet-20 on CIFAR-10, 150 SGD steps, loss 1.70 with this
# and 1.97 with scale 1 (plain ReLU: 1.64).
THRESHOLD_BN_SCALE = 0.3


def _init(model: nn.Module, bn_scale: float) -> None:
    """Kaiming-normal (fan_out, as He et al. and the authors' ResNet) convs with zero bias, BN
    scales ``bn_scale``; Linear keeps PyTorch defaults. Deterministic given torch.manual_seed."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.constant_(m.weight, bn_scale)


def build(
    name: str,
    *,
    num_classes: int = 10,
    act: str = "threshold",
    y_th: float = 1.0,
    in_channels: int = 3,
    image_size: int = 32,
    batch_norm: bool | None = None,
    levels: int | None = None,
) -> nn.Module:
    """Build model ``name`` (one of NAMES) for ``in_channels`` x ``image_size`` x ``image_size``
    inputs.

    ``act``/``y_th`` choose the activation at every site; ``batch_norm=None`` keeps the model's
    default (True for cnn, vgg16, resnet20; False for the paper models, as in the authors' code).
    Sizes beyond ``LIMITS``, or a model above ``MAX_PARAMETERS``, raise ValueError before any
    weight is allocated.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {NAMES}")
    activation(act, y_th, levels)  # validate act, y_th and levels before building anything
    builder, default_bn = _MODELS[name]
    args = (
        _positive_int(in_channels, "in_channels"),
        _positive_int(image_size, "image_size"),
        _positive_int(num_classes, "num_classes"),
        partial(activation, act, y_th, levels),
        default_bn if batch_norm is None else bool(batch_norm),
    )
    _check_size(builder, *args)
    model = builder(*args)
    _init(model, THRESHOLD_BN_SCALE * y_th if act in ("threshold", "qcfs") else 1.0)
    return model
