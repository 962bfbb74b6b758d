"""Post-conversion calibration (snnconv.calibrate): it lowers the error it fits, on real data
it raises accuracy at short T, it leaves the ANN and the source model alone, it is deterministic,
its state saves and loads, bad input is refused before anything changes."""

import copy
import json

import pytest
import torch
from torch import nn

import snnconv
from conftest import SHARED_DATA
from nets import random_nets
from snnconv import QCFS, ConversionError, OptionError, cli
from snnconv.evaluation import evaluate
from snnconv.evaluation.results import Results
from snnconv.io import data
from snnconv.zoo import shipped


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _net(name: str):
    return next((m, shape) for n, m, shape in random_nets() if n == name)


@pytest.mark.parametrize("name", ["chain", "residual", "concat"])
def test_potential_lowers_the_mean_error_and_leaves_the_ann_alone(name):
    model, shape = _net(name)
    images = torch.randn(64, *shape)
    source = _snapshot(model)
    snn = snnconv.convert(model, shift="membrane")
    ann = _snapshot(snn.ann)
    record = snnconv.calibrate(snn, images, 4, method="potential", passes=2)
    # The mean error per unit is what the correction cancels: it must fall in total (one
    # layer can rise a little, as its input changes when the layers before it are calibrated).
    assert record.error("mean", "after") < record.error("mean", "before")
    assert _same(source, _snapshot(model)) and _same(ann, _snapshot(snn.ann))
    assert any("calibrated (potential" in n for n in snn.notes) and snn.calibration is record
    # The fast path and the reference loop agree on the calibrated network (v_init in both).
    x = torch.randn(8, *shape)
    torch.testing.assert_close(snn(x, 4), snn.stepwise(x, 4), rtol=1e-5, atol=1e-5)


def test_bias_and_mse_leave_the_ann_and_source_model_alone():
    model, shape = _net("chain")
    images = torch.randn(64, *shape)
    source = _snapshot(model)
    for method, kind in (("bias", "mean"), ("mse", "squared")):
        snn = snnconv.convert(model, shift="membrane")
        ann = _snapshot(snn.ann)
        record = snnconv.calibrate(snn, images, 4, method=method)
        # bias cancels the mean error; mse fits the squared error per sample, and in the first
        # layer (whose input no calibration changes) it cannot end above where it started
        assert record.error(kind, "after") < record.error(kind, "before"), method
        first = record.layers[0]
        assert getattr(first, f"{kind}_error_after") <= getattr(first, f"{kind}_error_before")
        assert _same(source, _snapshot(model)) and _same(ann, _snapshot(snn.ann))
    x = torch.randn(4, *shape)
    assert not torch.equal(snn(x, 4)[-1], snnconv.convert(model, shift="membrane")(x, 4)[-1])


@pytest.mark.parametrize("neuron", ["if", "signed"])
def test_threshold_scales_each_channel_and_the_fast_path_agrees(neuron):
    """Method "threshold": every layer's V_th becomes one value per channel, each the
    conversion's V_th times a factor of THRESHOLD_SCALES; the squared error it fits falls; the
    compiled kernels (per-channel thresholds in channels_last) and the reference loop simulate
    the calibrated network alike; its state (thresholds included) reproduces it."""
    from snnconv.conversion.calibrate import THRESHOLD_SCALES

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(24, 10),
    ).eval().to(memory_format=torch.channels_last)  # fmt: skip
    shape = (3, 8, 8)  # channels_last maps: the compiled per-channel kernels run
    images = 2 * torch.randn(64, *shape).contiguous(memory_format=torch.channels_last)
    kw = dict(calibration=[images[:32]], threshold="percentile", shift="membrane", neuron=neuron)
    snn = snnconv.convert(model, **kw)
    before = {n: m.v_th.clone() for n, m in snn.layers.items()}
    record = snnconv.calibrate(snn, images, 4, method="threshold")
    assert record.error("squared", "after") < record.error("squared", "before")
    first = record.layers[0]  # its input no calibration changes: it cannot end worse
    assert first.squared_error_after <= first.squared_error_before
    for e in record.layers:
        v_th = snn.layers[e.name].v_th
        assert v_th.dim() == 1  # one per channel
        factors = (v_th / before[e.name]).tolist()
        assert all(min(abs(f - s) for s in THRESHOLD_SCALES) < 1e-6 for f in factors)
    assert any(snn.layers[e.name].v_th.unique().numel() > 1 for e in record.layers), (
        "channels differ"
    )
    x = torch.randn(8, *shape).contiguous(memory_format=torch.channels_last)
    # float32 in both, summed in different orders by the kernels and the reference convs
    torch.testing.assert_close(snn(x, 4), snn.stepwise(x, 4), rtol=1e-5, atol=1e-5)
    state = snnconv.calibration_state(snn)
    fresh = snnconv.convert(model, **kw)
    snnconv.apply_calibration(fresh, state)
    assert torch.equal(fresh(x, 4), snn(x, 4))
    with pytest.raises(ConversionError, match="V_th must be finite and > 0"):
        name = next(iter(snn.layers))
        snnconv.apply_calibration(fresh, {f"v_th.{name}": -state[f"v_th.{name}"]})


def test_bias_is_refused_where_no_conv_feeds_a_layer_and_nothing_changes():
    model, shape = _net("residual")  # its last IF layer is fed by an add of two IF outputs
    snn = snnconv.convert(model, shift="membrane")
    before = _snapshot(snn.graph)
    with pytest.raises(OptionError, match="fed by a conv or linear layer"):
        snnconv.calibrate(snn, torch.randn(16, *shape), 4, method="bias")
    assert _same(before, _snapshot(snn.graph)) and snn.calibration is None


def test_deterministic_and_state_round_trip():
    model, shape = _net("residual")
    images = torch.randn(40, *shape)
    states = []
    for _ in range(2):
        snn = snnconv.convert(model, shift="membrane")
        snnconv.calibrate(snn, images, 6, method="potential", batch_size=16)
        states.append(snnconv.calibration_state(snn))
    assert _same(states[0], states[1])
    chain, cshape = _net("chain")
    snn = snnconv.convert(chain, shift="membrane")
    snnconv.calibrate(snn, torch.randn(32, *cshape), 4, method="mse")
    state = snnconv.calibration_state(snn)
    assert any(k.startswith("bias.") for k in state) and any(k.startswith("v_init.") for k in state)
    fresh = snnconv.convert(chain, shift="membrane")
    snnconv.apply_calibration(fresh, state)
    x = torch.randn(8, *cshape)
    assert torch.equal(fresh(x, 4), snn(x, 4))


def test_state_saves_with_weights_only(tmp_path):
    model, shape = _net("chain")
    snn = snnconv.convert(model, shift="membrane")
    snnconv.calibrate(snn, torch.randn(32, *shape), 4, method="mse")
    torch.save(snnconv.calibration_state(snn), tmp_path / "calibration.pt")
    state = torch.load(tmp_path / "calibration.pt", weights_only=True)
    fresh = snnconv.convert(model, shift="membrane")
    snnconv.apply_calibration(fresh, state)
    x = torch.randn(4, *shape)
    assert torch.equal(fresh(x, 4), snn(x, 4))


def test_foreign_or_misshaped_state_is_refused_before_anything_changes():
    model, _ = _net("chain")
    snn = snnconv.convert(model, shift="membrane")
    before = _snapshot(snn.graph)
    layer = next(iter(snn.layers))
    good = {f"v_init.{layer}": torch.zeros(8, 1, 1)}
    with pytest.raises(ConversionError, match="names no IF layer"):
        snnconv.apply_calibration(snn, {**good, "v_init.nope": torch.zeros(1)})
    with pytest.raises(ConversionError, match="does not fit"):
        snnconv.apply_calibration(snn, {**good, "bias.c1": torch.zeros(3)})
    assert _same(before, _snapshot(snn.graph))
    assert all(m.v_init is None for m in snn.layers.values())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"T": 0}, OptionError, "T must be an integer >= 1"),
        ({"method": "magic"}, OptionError, "method must be one of"),
        ({"method": "none"}, OptionError, "method must be one of"),
        ({"method": "bias", "granularity": "neuron"}, OptionError, "granularity 'channel'"),
        ({"passes": 0}, OptionError, "passes"),
        ({"images": torch.full((4, 3, 12, 12), float("nan"))}, ValueError, "NaN"),
        ({"images": torch.randn(4, 3, 9, 9)}, ValueError, "input shape"),
        ({"images": torch.zeros(0, 3, 12, 12)}, ValueError, "none given"),
        ({"images": torch.zeros(4, 3, 12, 12, dtype=torch.uint8)}, ValueError, "float tensor"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(kwargs, error, match):
    model, shape = _net("chain")
    snn = snnconv.convert(model, shift="membrane", calibration=[torch.randn(8, *shape)])
    before = _snapshot(snn.graph)
    args = {"images": torch.randn(8, *shape), "T": 4, **kwargs}
    with pytest.raises(error, match=match):
        snnconv.calibrate(snn, **{k: v for k, v in args.items()})
    assert _same(before, _snapshot(snn.graph)) and snn.calibration is None


@pytest.mark.slow  # keeps the quick subset under 30 s
def test_qcfs_and_percentile_networks_calibrate():
    torch.manual_seed(0)
    qcfs = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), QCFS(4, 1.0), nn.Conv2d(6, 6, 3), QCFS(4, 1.0),
        nn.Flatten(), nn.Linear(6 * 6 * 6, 3),
    ).eval()  # fmt: skip
    relu = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 3)
    ).eval()
    for model, kw, strict in [
        (qcfs, {}, True),
        (relu, {"threshold": "percentile", "calibration": [torch.randn(32, 3, 8, 8)]}, False),
    ]:
        snn = snnconv.convert(model, **kw)
        record = snnconv.calibrate(snn, torch.randn(32, 3, 8, 8), 4, method="mse")
        before, after = record.error("squared", "before"), record.error("squared", "after")
        # Never worse: "no correction" is one of mse's candidates, and the first layer's input
        # does not depend on the calibration. On the one-layer ReLU net (random weights) no
        # correction helps; on the QCFS net (T = L, a second layer) one must.
        assert after < before if strict else after <= before


def test_results_json_records_the_calibration():
    model, shape = _net("chain")
    snn = snnconv.convert(model, shift="membrane")
    record = snnconv.calibrate(snn, torch.randn(16, *shape), 4, method="potential")
    batches = [(torch.randn(8, *shape), torch.randint(0, 10, (8,)))]
    results = evaluate.evaluate(snn, batches, [2, 4], progress=False)
    assert results.calibration == record
    back = Results.from_json(results.to_json())
    assert back.calibration == record and back == results
    assert json.loads(results.to_json())["calibration"]["T"] == 4


@pytest.mark.slow
def test_calibration_raises_mnist_accuracy_at_short_T():
    """Real data: the shipped MNIST CNN at T=4 (paper's bias shift) on 2,000 test digits,
    calibrated on 512 unaugmented training digits (measured: 59 % -> 97-98 %)."""
    model = shipped.load_pretrained("cnn-mnist")
    train = data.load("mnist", "train", root=SHARED_DATA)
    test = data.load("mnist", "test", root=SHARED_DATA)
    xc = data.normalize(train.images[:512], "mnist")
    xt, yt = data.normalize(test.images[:2000], "mnist"), test.labels[:2000]
    plain = snnconv.convert(model)
    base = (plain(xt, 4)[-1].argmax(-1) == yt).double().mean().item()
    for method in ("bias", "potential", "mse"):
        snn = copy.deepcopy(plain)
        snnconv.calibrate(snn, xc, 4, method=method)
        acc = (snn(xt, 4)[-1].argmax(-1) == yt).double().mean().item()
        # 20 points is far below the measured gain (38-39 points) and far above the
        # sampling noise of 2,000 images (a standard error of about 1 point at 60 %).
        assert acc > base + 0.20, (method, base, acc)


@pytest.mark.slow
def test_cli_calibrates_and_records_it(tmp_path):
    out = tmp_path / "ev"
    code = cli.main([
        "evaluate", "--checkpoint", "cnn-mnist", "--dataset", "mnist",
        "--data-root", str(SHARED_DATA), "--T", "2,4", "--limit", "300",
        "--calibrate", "potential", "--calibration-images", "128", "--calibrate-T", "4",
        "--plots", "false", "--quiet", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    record = json.loads((out / "results.json").read_text())["calibration"]
    assert (record["method"], record["T"], record["images"]) == ("potential", 4, 128)
    assert "Calibrated (potential" in (out / "report.md").read_text()


@pytest.mark.slow  # 9 calibrations; keeps the quick subset under 30 s
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_every_method_runs_at_the_shortest_T(steps):
    """T = 1 gives mse one equation (T/2 = T): it must still calibrate, and not worsen the
    squared error it minimises."""
    model, shape = _net("chain")
    for method in ("bias", "potential", "mse"):
        snn = snnconv.convert(model, shift="membrane")
        record = snnconv.calibrate(snn, torch.randn(16, *shape), steps, method=method)
        assert record.T == steps and len(record.layers) == len(snn.layers)
        if method == "mse":
            assert record.layers[0].squared_error_after <= record.layers[0].squared_error_before
