"""Conversion: which graph forms are accepted, BN folding, thresholds, and errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import snnconv
from nets import random_nets
from snnconv import ConversionError, ThresholdReLU
from snnconv.conversion import thresholds


class Wrap(nn.Module):
    """conv -> <activation form> -> linear; ``act`` is a module or a function of x."""

    def __init__(self, act):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.act = act if isinstance(act, nn.Module) else None
        self.fn = None if isinstance(act, nn.Module) else act
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        x = self.conv(x)
        x = self.act(x) if self.act is not None else self.fn(x)
        return self.fc(x.flatten(1))


FORMS = {  # name: (activation, V_th it implies or None for "from calibration")
    "nn.ReLU": (nn.ReLU(), None),
    "nn.ReLU(inplace)": (nn.ReLU(inplace=True), None),
    "F.relu": (lambda x: F.relu(x), None),
    "F.relu(inplace)": (lambda x: F.relu(x, inplace=True), None),
    "torch.relu": (lambda x: torch.relu(x), None),
    "Tensor.relu": (lambda x: x.relu(), None),
    "nn.ReLU6": (nn.ReLU6(), 6.0),
    "F.relu6": (lambda x: F.relu6(x), 6.0),
    "nn.Hardtanh(0,2)": (nn.Hardtanh(0.0, 2.0), 2.0),
    "F.hardtanh(0,0.5)": (lambda x: F.hardtanh(x, 0.0, 0.5), 0.5),
    "torch.clamp(x,0,1.5)": (lambda x: torch.clamp(x, 0, 1.5), 1.5),
    "torch.clamp(min=0)": (lambda x: torch.clamp(x, min=0), None),
    "Tensor.clamp(0,0.7)": (lambda x: x.clamp(0, 0.7), 0.7),
    "Tensor.clamp(min=0)": (lambda x: x.clamp(min=0.0), None),
    "torch.clip": (lambda x: torch.clip(x, 0, 1.1), 1.1),
    "ThresholdReLU(0.9)": (ThresholdReLU(0.9), 0.9),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_each_activation_form_becomes_an_if_layer(form):
    act, v_th = FORMS[form]
    model = Wrap(act).eval()
    x = torch.rand(8, 2, 5, 5) * 2 - 0.5
    snn = snnconv.convert(model, calibration=[x], threshold="activation", percentile=100)
    assert len(snn.layers) == 1
    (got,) = snn.thresholds.values()
    want = v_th if v_th is not None else F.relu(model.conv(x)).max().item()
    assert got == pytest.approx(want, rel=1e-6)
    # the converted network reproduces the ANN (max threshold: no clipping), error ~ V_th/T
    out = snn(x, 1024)[-1]
    assert (out - model(x)).abs().max().item() < 0.02 * max(1.0, model(x).abs().max().item())


def test_reused_module_gives_one_layer_per_call_site():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 4), relu, nn.Linear(4, 4), relu, nn.Linear(4, 2))
    x = torch.randn(10, 3)
    snn = snnconv.convert(model, calibration=[x], threshold="max")
    assert list(snn.layers) == ["_1", "_1_1"]  # fx names the second call of module '1' '_1_1'
    h = F.relu(model[0](x))
    assert snn.thresholds["_1"] == pytest.approx(h.max().item())
    assert snn.thresholds["_1_1"] == pytest.approx(F.relu(model[2](h)).max().item())


def test_plain_relu_without_data_is_a_clear_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="calibration data is required.*unbounded ReLU"):
        snnconv.convert(model)
    with pytest.raises(ValueError, match="calibration data is required"):
        snnconv.convert(nn.Sequential(nn.Linear(3, 2), ThresholdReLU()), threshold="max")


def test_sigmoid_is_refused_naming_the_node():
    class Sig(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.sigmoid(self.fc(x))

    with pytest.raises(
        ConversionError,
        match=r"node 'sigmoid' \(call_function torch.sigmoid\).*"
        r"replace it by nn.ReLU",
    ):
        snnconv.convert(Sig())


def test_other_unsupported_forms():
    cases = {
        "leaky": nn.Sequential(nn.Linear(3, 3), nn.LeakyReLU()),
        "clamp(-1,1)": Wrap(lambda x: x.clamp(-1, 1)),
        "cat on batch": Wrap(lambda x: torch.cat([x, x], 0)[:4]),
        "product": Wrap(lambda x: F.relu(x) * x),
        "tuple output": nn.ModuleList([nn.Linear(2, 2)]),
    }

    class TwoOut(nn.Module):
        def forward(self, x):
            return x.relu(), x

    cases["tuple output"] = TwoOut()
    for model in cases.values():
        with pytest.raises(ConversionError, match="node '"):
            snnconv.convert(model, calibration=[torch.rand(2, 2, 5, 5)])


def test_maxpool_errors_by_default_and_is_replaced_on_request():
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        ThresholdReLU(1.0),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 2),
    )
    with pytest.raises(
        ConversionError, match=r"node '_2' \(call_module nn.MaxPool2d\).*maxpool='avg'"
    ):
        snnconv.convert(model)
    snn = snnconv.convert(model, maxpool="avg")
    assert any("max pooling '_2' replaced by average pooling" in n for n in snn.notes)
    assert isinstance(snn.ann.get_submodule("2"), nn.AvgPool2d)
    x = torch.rand(3, 1, 8, 8)
    assert (snn(x, 1024)[-1] - snn.ann(x)).abs().max() < 0.01


def test_inspect_lists_every_node_with_its_handling():
    for _, model, _ in random_nets():
        cov = snnconv.inspect(model)
        traced = [n.name for n in fx.symbolic_trace(model).graph.nodes]
        # ThresholdReLU is a leaf for snnconv's tracer; plain fx traces into its clamp
        assert [r[0] for r in cov.rows] == [
            n.name for n in snnconv.conversion.graph.trace(model).graph.nodes
        ]
        assert len(cov.rows) >= len([t for t in traced if t])
        assert cov.supported
        text = str(cov)
        for name, _, kind, _ in cov.rows:
            assert name in text and kind in text
    cov = snnconv.inspect(nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.BatchNorm1d(2)))
    assert not cov.supported
    kinds = {r[0]: r[2] for r in cov.rows}
    assert kinds == {
        "input_1": "input",
        "_0": "linear",
        "_1": "unsupported",
        "_2": "linear",
        "output": "output",
    }
    folded = snnconv.inspect(random_nets()[0][1])
    assert ("b1", "folded") in {(r[0], r[2]) for r in folded.rows}


def test_batchnorm_folding_and_dropout_removal_keep_outputs():
    """Folding rewrites w' = w g/sqrt(var+eps), b' = (b - mean) g/sqrt(var+eps) + beta; the only
    change is float32 rounding of these products (relative ~1e-7 per op, a few ops deep)."""
    for name, model, shape in random_nets():
        snn = snnconv.convert(model)
        x = torch.randn(16, *shape)
        assert torch.allclose(snn.ann(x), model.eval()(x), rtol=1e-5, atol=1e-6), name
        kinds = {type(m) for m in snn.ann.modules()}
        assert (
            nn.BatchNorm2d not in kinds and nn.BatchNorm1d not in kinds and nn.Dropout not in kinds
        )


def test_conversion_does_not_touch_the_user_model():
    name, model, shape = random_nets()[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snnconv.convert(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.b1, nn.BatchNorm2d)


def test_bad_inputs_give_clear_errors():
    name, model, shape = random_nets()[0]
    snn = snnconv.convert(model, calibration=[torch.rand(4, *shape)])
    x = torch.rand(2, *shape)
    for steps in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="T must be an integer"):
            snn(x, steps)
    with pytest.raises(ValueError, match="does not match the traced model"):
        snn(torch.rand(2, 3, 10, 10), 4)
    with pytest.raises(TypeError, match="dtype"):
        snn(x.double(), 4)
    with pytest.raises(TypeError, match="normalise"):
        snn((x * 255).to(torch.uint8), 4)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        snn(bad, 4)
    # without calibration the shape is unknown up front: the failing node is named instead
    plain = snnconv.convert(model)
    with pytest.raises(snnconv.SimulationError, match="node 'c1'"):
        plain(torch.rand(2, 5, 12, 12), 4)
    broken = random_nets()[0][1]
    broken.c2.weight.data[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="parameter 'c2.weight'"):
        snnconv.convert(broken)
    for kwargs in (
        {"threshold": "mean"},
        {"shift": "half"},
        {"readout": "logits"},
        {"maxpool": "min"},
        {"percentile": 0},
    ):
        with pytest.raises(ValueError):
            snnconv.convert(model, **kwargs)
    with pytest.raises(ConversionError, match="nn.Module"):
        snnconv.convert(lambda x: x)


def test_fixed_batch_reshape_is_reported():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(4, 4), ThresholdReLU(1.0), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)).reshape(3, 4))

    snn = snnconv.convert(Fixed())
    with pytest.raises(snnconv.SimulationError, match="batch dimension|failed"):
        snn(torch.rand(3, 4), 8)


def nearest_rank(values: torch.Tensor, p: float) -> float:
    v = values.flatten().double().sort().values
    return v[max(1, math.ceil(p / 100 * v.numel())) - 1].item()


@pytest.mark.parametrize("gather", [1 << 20, 50])
def test_percentile_is_exact_over_all_batches(monkeypatch, gather):
    """Against sorting all values; a tiny gather limit forces the histogram refinement passes."""
    monkeypatch.setattr(thresholds, "GATHER", gather)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 7), ThresholdReLU(0.4))
    batches = [torch.randn(n, 5) for n in (13, 40, 7)]
    gm = snnconv.conversion.graph.trace(model)
    acts1 = torch.cat([F.relu(model[0](b)) for b in batches]).detach()
    acts2 = torch.cat([model[3](model[2](F.relu(model[0](b)))) for b in batches]).detach()
    for p in (50.0, 90.0, 99.0, 99.99, 100.0):
        got = thresholds.layer_statistic(gm, ["_1", "_3"], batches, p)
        assert got["_1"] == nearest_rank(acts1, p)  # zeros are a point mass here
        assert got["_3"] == nearest_rank(acts2, p)  # values saturated at 0.4 are another
    with pytest.raises(ValueError, match="one-shot iterator"):
        thresholds.layer_statistic(gm, ["_1"], iter(batches), 90.0)


def test_threshold_modes_use_calibration_data():
    model = nn.Sequential(nn.Linear(5, 7), ThresholdReLU(3.0), nn.Linear(7, 2))
    batches = [torch.randn(20, 5) for _ in range(3)]
    acts = torch.cat([model[1](model[0](b)) for b in batches]).detach()
    assert snnconv.convert(model).thresholds == {"_1": 3.0}
    got_max = snnconv.convert(model, calibration=batches, threshold="max").thresholds["_1"]
    assert got_max == pytest.approx(acts.max().item())
    got_p = snnconv.convert(
        model, calibration=batches, threshold="percentile", percentile=90
    ).thresholds["_1"]
    assert got_p == pytest.approx(nearest_rank(acts, 90.0))


def test_functional_and_adaptive_max_pooling_on_request():
    forms = {
        "F.max_pool2d": (lambda x: F.max_pool2d(x, 2), lambda x: F.avg_pool2d(x, 2)),
        "F.max_pool2d(3, 2, 1)": (
            lambda x: F.max_pool2d(x, 3, 2, 1),
            lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
        ),
        "nn.AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d(2), nn.AdaptiveAvgPool2d(2)),
    }
    for name, (pool, avg) in forms.items():

        class P(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.act = nn.Conv2d(1, 2, 3, padding=1), ThresholdReLU(1.0)
                self.pool = pool if isinstance(pool, nn.Module) else None

            def forward(self, x):
                x = self.act(self.conv(x))
                return (self.pool(x) if self.pool is not None else pool(x)).flatten(1)

        model = P().eval()
        with pytest.raises(ConversionError, match="maxpool='avg'"):
            snnconv.convert(model)
        snn = snnconv.convert(model, maxpool="avg")
        x = torch.rand(2, 1, 6, 6)
        want = avg(model.act(model.conv(x))).flatten(1)
        assert torch.allclose(snn.ann(x), want, atol=1e-6), name
    dilated = nn.Sequential(nn.Conv2d(1, 2, 3), ThresholdReLU(), nn.MaxPool2d(2, dilation=2))
    with pytest.raises(ConversionError, match="dilation"):
        snnconv.convert(dilated, maxpool="avg")
