"""Evaluation: exact SOP counts, the error split, results.json, the CLI's errors."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

import snnconv
from conftest import SHARED_DATA
from snnconv import ThresholdReLU, cli
from snnconv.evaluation import evaluate
from snnconv.measures import cost, error_split
from snnconv.zoo import shipped


class OddNet(nn.Module):
    """Odd input size, strides, padding and a pooling that drops the last row/column."""

    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(2, 3, 3, stride=2, padding=1), ThresholdReLU(1.0)
        self.c2, self.a2 = nn.Conv2d(3, 4, 2, stride=1), ThresholdReLU(0.8)
        self.pool, self.fc = nn.AvgPool2d(2), nn.Linear(4 * 1 * 2, 5)

    def forward(self, x):
        x = self.a2(self.c2(self.a1(self.c1(x))))
        return self.fc(self.pool(x).flatten(1))


def brute_fan_out(fn, shape):
    """Fan-out per input element: non-zeros in each column of the Jacobian of a linear map."""
    j = jacobian(fn, torch.rand(1, *shape, dtype=torch.float64))
    return (j.reshape(-1, int(torch.tensor(shape).prod())) != 0).sum(0).double().reshape(shape)


def test_sop_count_equals_brute_force():
    torch.manual_seed(0)
    net = OddNet().double().eval()
    with torch.no_grad():
        net.c2.weight[1, 2, 0, 1] = 0.0  # a zero weight is no synapse
    snn = snnconv.convert(net)
    x = torch.rand(6, 2, 7, 9, dtype=torch.float64) * 3
    y = torch.zeros(6, dtype=torch.long)
    res = evaluate.evaluate(snn, [(x, y)], [8, 13], progress=False)
    fans = {
        "input": brute_fan_out(net.c1, (2, 7, 9)),
        "a1": brute_fan_out(net.c2, (3, 4, 5)),
        "a2": brute_fan_out(lambda s: net.fc(net.pool(s).flatten(1)), (4, 3, 4)),
    }
    assert fans["a2"][:, 2, :].sum() == 0 and fans["a2"][:, :, :].sum() > 0  # dropped by pooling
    assert res.cost.first_layer_macs == fans["input"].sum().item()
    assert res.cost.ann_macs == sum(f.sum().item() for f in fans.values())
    rows = {r.name: r for r in res.cost.layers}
    assert rows["input"].snn_macs == fans["input"].sum().item()
    for t in (8, 13):
        snn(x, t)
        for name in ("a1", "a2"):
            count = snn.layers[name].spike_count
            want = (count * fans[name]).sum().item() / len(x)
            assert rows[name].sops[t] == want, (name, t)
            assert rows[name].ann_macs == fans[name].sum().item()
        assert res.cost.per_T[t].sops == pytest.approx(  # float sums in another order
            sum(r.sops[t] for r in rows.values()), rel=1e-12
        )


class UpNet(nn.Module):
    """Upsampling after spiking layers: a transposed convolution, bilinear interpolation at a
    non-integer scale, nearest upsampling (the U-Net ops whose fan-out crashed evaluate)."""

    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(2, 3, 3, padding=1), ThresholdReLU(1.0)
        self.up, self.a2 = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1), ThresholdReLU(1.0)
        self.c3, self.a3 = nn.Conv2d(4, 3, 1), ThresholdReLU(1.0)
        self.near, self.a4 = nn.Upsample(scale_factor=2), ThresholdReLU(1.0)
        self.fc = nn.Linear(3 * 26 * 20, 5)

    def interp(self, s):
        return nn.functional.interpolate(s, scale_factor=1.5, mode="bilinear")

    def forward(self, x):
        h = self.a3(self.c3(self.interp(self.a2(self.up(self.a1(self.c1(x)))))))
        return self.fc(self.a4(self.near(h)).flatten(1))


def test_sop_count_through_transposed_convs_and_upsampling_equals_brute_force():
    torch.manual_seed(0)
    net = UpNet().double().eval()
    snn = snnconv.convert(net)
    x = torch.rand(3, 2, 5, 4, dtype=torch.float64) * 3
    res = evaluate.evaluate(snn, [(x, torch.zeros(3, dtype=torch.long))], [8], progress=False)
    # the brute force counts non-zero entries of the composite map, the fan-out counts paths:
    # equal here because no two paths between consecutive IF layers meet in one output
    fans = {
        "input": brute_fan_out(net.c1, (2, 5, 4)),
        "a1": brute_fan_out(net.up, (3, 5, 4)),
        "a2": brute_fan_out(lambda s: net.c3(net.interp(s)), (4, 9, 7)),
        "a3": brute_fan_out(net.near, (3, 13, 10)),
    }
    rows = {r.name: r for r in res.cost.layers}
    snn(x, 8)
    assert rows["a3"].sops[8] > 0
    for name in ("a1", "a2", "a3"):
        want = (snn.layers[name].spike_count * fans[name]).sum().item() / len(x)
        assert rows[name].sops[8] == want, name
        assert rows[name].ann_macs == fans[name].sum().item(), name


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((2, 5, 4), dict(scale_factor=1.5, mode="bilinear")),
        ((2, 5, 4), dict(scale_factor=2, mode="bilinear", align_corners=True)),
        ((2, 5, 4), dict(size=(7, 11), mode="bicubic")),
        ((2, 5, 4), dict(size=(3, 2), mode="bilinear", antialias=True)),
        ((2, 6, 5), dict(size=(4, 3), mode="area")),
        ((2, 5, 4), dict(scale_factor=(1.7, 2.5), mode="nearest")),
        ((2, 7), dict(scale_factor=2.2, mode="linear")),
        ((1, 3, 4, 2), dict(size=(5, 6, 3), mode="trilinear", align_corners=True)),
    ],
)
def test_interpolation_fan_out_counts_the_non_zero_weights(shape, kwargs):
    fn = lambda s: nn.functional.interpolate(s, **kwargs)  # noqa: E731
    ones = torch.ones(1, *shape, dtype=torch.float64, requires_grad=True)
    cost._interpolate_indicator(ones, **kwargs).sum().backward()
    assert torch.equal(ones.grad[0], brute_fan_out(fn, shape))


def test_error_parts_add_up_and_behave():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    ).eval()
    x = torch.randn(16, 1, 8, 8)
    for shift in ("bias", "membrane", "none"):
        snn = snnconv.convert(
            net, calibration=[x], threshold="percentile", percentile=90, shift=shift
        )
        res = evaluate.evaluate(
            snn, [(x, torch.zeros(16, dtype=torch.long))], [4, 16], progress=False
        )
        for row in res.layers:
            for e in row.error.values():  # float64 means: parts add up to rounding
                assert e.clipping + e.quantisation + e.unevenness == pytest.approx(
                    e.total, abs=1e-12
                )
        first = res.layers[0].error
        assert all(first[t].unevenness == pytest.approx(0, abs=1e-12) for t in first), (
            "a constant input current is quantised exactly"
        )
        assert all(first[t].clipping > 0 for t in first), "90th percentile clips"
    snn = snnconv.convert(nn.Sequential(nn.Linear(3, 4), ThresholdReLU(0.5)))
    res = evaluate.evaluate(
        snn, [(torch.randn(8, 3), torch.zeros(8, dtype=torch.long))], [4], progress=False
    )
    assert res.layers[0].error[4].clipping == 0  # V_th = y_th: nothing to clip


def test_quantise_matches_the_neuron():
    c = torch.rand(1000) * 1.2
    layer = snnconv.IFNeurons(0.7, "membrane")
    layer.reset(9)
    layer.scan(c, 9, constant=True)
    want = error_split.quantise(
        torch.minimum(c, torch.tensor(0.7)), torch.tensor(0.7), 9, "membrane"
    )
    assert torch.allclose(layer.spike_count * 0.7 / 9, want)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "snnconv", *args], capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_evaluate_shipped_mnist_model_and_results_schema(tmp_path):
    out = tmp_path / "eval"
    r = run_cli(
        "evaluate",
        "--checkpoint",
        "cnn-mnist",
        "--dataset",
        "mnist",
        "--T",
        "64",
        "--data-root",
        str(SHARED_DATA),
        "--out",
        str(out),
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    res = json.loads((out / "results.json").read_text())
    for key, kind in {
        "schema": str,
        "dataset": str,
        "model": str,
        "checkpoint": dict,
        "environment": dict,
        "n_images": int,
        "ann_accuracy": float,
        "shift": str,
        "threshold": str,
        "snn_accuracy": dict,
        "seconds": float,
        "layers": list,
        "cost": dict,
    }.items():
        assert isinstance(res[key], kind), key
    assert res["n_images"] == 10_000 and res["dataset"] == "mnist"
    assert res["checkpoint"]["name"] == "cnn-mnist" and len(res["checkpoint"]["sha256"]) == 64
    assert all(0 <= a <= 1 for a in [res["ann_accuracy"], *res["snn_accuracy"].values()])
    assert abs(res["snn_accuracy"]["64"] - res["ann_accuracy"]) <= 0.005
    assert res["ann_accuracy"] > 0.98
    for name in (
        "report.md",
        "accuracy_vs_T.png",
        "layer_error.png",
        "firing_rate.png",
        "max_activation.png",
    ):
        assert (out / name).read_bytes()[:4] in (b"\x89PNG", b"# sn"), name
    assert "SOPs/img" in r.stdout and "error grows most at layer" in r.stdout


@pytest.mark.parametrize("case", ["classes", "shape", "architecture", "unwritable", "missing"])
def test_evaluate_errors_exit_2_and_write_nothing(tmp_path, capsys, case):
    out = tmp_path / "out"
    ckpt = "cnn-mnist"
    dataset = {"classes": "cifar100", "shape": "cifar10"}.get(case, "mnist")
    if case == "architecture":
        other = shipped.load_checkpoint("cnn-mnist")
        other["arch"] = dict(other["arch"], name="resnet20")
        ckpt = str(tmp_path / "other.pt")
        torch.save(other, ckpt)
    if case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    if case == "missing":
        ckpt = str(tmp_path / "nope.pt")
    code = cli.main(
        [
            "evaluate",
            "--checkpoint",
            ckpt,
            "--dataset",
            dataset,
            "--T",
            "4",
            "--limit",
            "10",
            "--data-root",
            str(SHARED_DATA),
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("snnconv: error:") and len(err.strip().splitlines()) == 1
    expected = {
        "classes": "100 classes",
        "shape": "takes 1x28x28",
        "architecture": "do not fit",
        "unwritable": "not a writable folder",
        "missing": "no checkpoint",
    }[case]
    assert expected in err
    assert not out.exists()


@pytest.mark.slow
def test_shift_scan_first_layer_prefers_half_step(tmp_path, capsys):
    """A constant current is best rounded, i.e. shifted by V_th/(2T): error(0.5) is minimal."""
    code = cli.main(
        [
            "shift-scan",
            "--checkpoint",
            "cnn-mnist",
            "--dataset",
            "mnist",
            "--T",
            "8",
            "--limit",
            "200",
            "--data-root",
            str(SHARED_DATA),
            "--out",
            str(tmp_path / "scan"),
        ]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in stdout.splitlines() if line.startswith("_")]
    first = rows[0]
    assert float(first[2]) == float(first[3]) <= float(first[4])  # best == at 0.5 <= at 0
    assert "network accuracy: no shift" in stdout
    saved = json.loads((tmp_path / "scan" / "shift_scan.json").read_text())
    assert saved["T"] == 8 and saved["checkpoint"]["name"] == "cnn-mnist"
    assert saved["layers"][0]["error"]["0.5"] == saved["layers"][0]["best_error"]


@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (5, 1, 4, 6), (5, 3, 1, 1), (1, 3, 4, 4), (7, 10)])
def test_sum_over_batch_is_sum0_in_every_layout(shape):
    """The per-position spike totals read in memory order equal x.sum(0) exactly, whatever the
    layout (channels_last counts, a transposed view that falls back to sum(0))."""
    x = torch.randint(0, 5, shape).float()
    layouts = [x, x.transpose(0, -1)]
    if x.dim() == 4:
        layouts.append(x.contiguous(memory_format=torch.channels_last))
    for y in layouts:
        total = evaluate.sum_over_batch(y)
        assert total.shape == y.sum(0).shape and torch.equal(total, y.sum(0))
