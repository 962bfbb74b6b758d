"""Small random networks covering every supported graph form (shared by the conversion tests)."""

import torch
import torch.nn.functional as F
from torch import nn

from snnconv import ThresholdReLU


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so that folding is actually exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.1)
    return model.eval()


class ConvChain(nn.Module):
    """conv-BN-act, strided/grouped/dilated convs, avgpool, linear-BN1d-act, linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.a1 = (
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            ThresholdReLU(0.8),
        )
        self.c2, self.a2 = (
            nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2),
            ThresholdReLU(1.3),
        )
        self.pool = nn.AvgPool2d(2)
        self.fc1, self.bn, self.a3 = (
            nn.Linear(8 * 3 * 3, 24),
            nn.BatchNorm1d(24),
            ThresholdReLU(0.6),
        )
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(24, 5)

    def forward(self, x):
        x = self.pool(self.a2(self.c2(self.a1(self.b1(self.c1(x))))))
        x = x.view(x.size(0), -1)
        return self.fc2(self.drop(self.a3(self.bn(self.fc1(x)))))


class Residual(nn.Module):
    """Residual add (+ and torch.add), one activation module reused at several sites, clamp."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.act = ThresholdReLU(1.0)  # reused three times
        self.c1, self.c2 = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = self.act(self.bn(self.stem(x)))
        y = self.act(self.c1(x))
        x = self.act(x + self.c2(y))
        z = torch.clamp(self.c1(x), 0, 0.7)
        x = torch.add(x, z).clamp(min=0, max=1.5)
        return self.fc(torch.flatten(self.gap(x), 1))


class Concat(nn.Module):
    """Two branches concatenated on channels, ReLU6, Hardtanh(0, a), functional pooling."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 3, 5, padding=2, stride=1)
        self.act6, self.ht = nn.ReLU6(), nn.Hardtanh(0.0, 2.0)
        self.mix = nn.Conv2d(7, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        x = torch.cat([self.act6(self.a(x)), self.ht(self.b(x))], dim=1)
        x = F.avg_pool2d(F.hardtanh(self.mix(x), 0.0, 1.2), 2)
        return self.fc(x.flatten(1))


def random_nets():
    """(name, model, input shape) for the three families, in eval mode with random BN stats."""
    torch.manual_seed(0)
    return [
        ("chain", _randomise_bn(ConvChain()), (3, 12, 12)),
        ("residual", _randomise_bn(Residual()), (3, 8, 8)),
        ("concat", Concat().eval(), (2, 8, 8)),
    ]


def _channel_shuffle(x, groups: int):
    """torchvision's ShuffleNetV2 channel shuffle (shapes from x.size(), traced as meta)."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(batch, -1, height, width)


class Shuffle(nn.Module):
    """ShuffleNetV2 unit: channel split by Tensor.chunk (unpacked), a branch with a depthwise
    conv, cat and channel shuffle; then torch.split, torch.chunk indexed, Tensor.unbind with
    torch.stack."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.branch = nn.Sequential(
            nn.Conv2d(4, 4, 1, bias=False),
            nn.BatchNorm2d(4),
            ThresholdReLU(1.2),
            nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
            nn.BatchNorm2d(4),
            nn.Conv2d(4, 4, 1, bias=False),
            nn.BatchNorm2d(4),
            ThresholdReLU(0.9),
        )
        self.mix = nn.Conv2d(8, 6, 3, stride=2, padding=1)
        self.act = ThresholdReLU(1.0)
        self.fc = nn.Linear(6 * 2 + 4, 4)

    def forward(self, x):
        x = self.stem(x)
        x1, x2 = x.chunk(2, dim=1)
        x = _channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)
        a, b = torch.split(x, [3, 5], dim=1)
        y = self.act(self.mix(torch.cat([b, a], 1)))
        rows = torch.stack(y.unbind(2), 2)  # [B, 6, H, W] again, from its rows
        half = torch.chunk(x, 2, 1)[1]  # indexing the tuple of pieces
        pooled = [F.adaptive_avg_pool2d(rows, (2, 1)).flatten(1), half.mean((2, 3))]
        return self.fc(torch.cat(pooled, 1))


class UNet(nn.Module):
    """U-Net style: down by average pooling, up by nn.ConvTranspose2d (+ BatchNorm, folded),
    F.conv_transpose2d with a Parameter weight, nn.Upsample (nearest) and F.interpolate
    (bilinear, align_corners False and True), skip connections concatenated."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU6())
        self.down = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU6())
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 6, 2, stride=2), nn.BatchNorm2d(6))
        self.w_up = nn.Parameter(torch.randn(8, 4, 3, 3) * 0.3)
        self.act = ThresholdReLU(2.0)
        self.nearest = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(6 + 6 + 4 + 8 + 8, 3, 1)

    def forward(self, x):
        skip = self.enc(x)
        low = self.down(skip)
        up = self.act(self.up(low))
        up2 = self.act(F.conv_transpose2d(low, self.w_up, stride=2, padding=1, output_padding=1))
        size = skip.shape[2:]
        a = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        b = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=True)
        c = self.nearest(low)
        y = self.head(torch.cat([skip, up, up2, a + c, b], 1))
        return F.adaptive_avg_pool2d(y, 2).flatten(1)


class LayerScale(nn.Module):
    """Learnt per-channel scales: Parameter * activation, activation * buffer, a scale computed
    from a Parameter (softplus, view), division by a buffer, a learnt bias added, and a
    per-feature scale after a linear layer."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.act = ThresholdReLU(1.0)
        self.gamma = nn.Parameter(torch.rand(6, 1, 1) + 0.5)
        self.register_buffer("beta", torch.rand(6, 1, 1) + 0.5)
        self.raw = nn.Parameter(torch.randn(6))
        self.bias = nn.Parameter(torch.randn(6, 1, 1) * 0.1)
        self.fc1, self.fc2 = nn.Linear(6 * 4, 10), nn.Linear(10, 3)
        self.feature_scale = nn.Parameter(torch.rand(10) + 0.5)

    def forward(self, x):
        h = self.act(self.c1(x))
        y = self.gamma * self.c2(h) + h * self.beta
        y = self.act(F.softplus(self.raw).view(1, -1, 1, 1) * y / self.beta + self.bias)
        z = self.act(self.fc1(F.avg_pool2d(y, 4).flatten(1)) * self.feature_scale)
        return self.fc2(z)


def coverage_nets():
    """(name, model, input shape) for the ops added for issue 16: split/chunk/unbind,
    transposed convs and upsampling, learnt scales."""
    torch.manual_seed(0)
    return [
        ("shuffle", _randomise_bn(Shuffle()), (3, 6, 6)),
        ("unet", _randomise_bn(UNet()), (2, 8, 8)),
        ("layerscale", LayerScale().eval(), (3, 8, 8)),
    ]
