"""Real data end to end: train a small threshold-ReLU CNN on MNIST, convert, simulate all 10,000
test digits."""
import time

import torch
import torch.nn.functional as F

import snnconv
from snnconv import data, models
from conftest import SHARED_DATA


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).double().mean().item()


def test_mnist_snn_matches_ann_at_short_T():
    torch.manual_seed(0)
    train = data.load("mnist", "train", root=SHARED_DATA)
    test = data.load("mnist", "test", root=SHARED_DATA)
    model = models.build("cnn", in_channels=1, image_size=28, act="threshold", y_th=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.train()
    for images, labels in data.batches(train, 128, shuffle=True, generator=gen):
        loss = F.cross_entropy(model(data.normalize(images, "mnist")), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_seconds = time.perf_counter() - start
    assert train_seconds <= 60, f"training took {train_seconds:.0f} s"

    model.eval()
    x = data.normalize(test.images, "mnist")
    with torch.no_grad():
        ann = accuracy(torch.cat([model(b) for b in x.split(1000)]), test.labels)
    snn = snnconv.convert(model, threshold="activation")
    assert set(snn.thresholds.values()) == {1.0}  # V_th = y_th, no data needed
    snn_acc = {}
    for steps in (32, 64):
        out = torch.cat([snn(b, steps)[-1] for b in x.split(1000)])
        snn_acc[steps] = accuracy(out, test.labels)
    print(f"\nMNIST (10,000 test digits), trained {train_seconds:.0f} s: ANN {100 * ann:.2f}%, "
          f"SNN T=32 {100 * snn_acc[32]:.2f}%, T=64 {100 * snn_acc[64]:.2f}%")
    assert ann > 0.97
    assert abs(snn_acc[32] - ann) <= 0.010
    assert abs(snn_acc[64] - ann) <= 0.005
