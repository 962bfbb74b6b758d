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
