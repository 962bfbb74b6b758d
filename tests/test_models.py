"""Tests for snnconv.models: shapes, fx-traceability, one activation module per site, BN
placement, ResNet-20, size bounds."""

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from snnconv.activations import ThresholdReLU
from snnconv.zoo import shipped
from snnconv.zoo.models import (
    MAX_PARAMETERS,
    NAMES,
    ShortcutA,
    activation,
    build,
    count_parameters,
)

ALLOWED_MODULES = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.BatchNorm1d,
    nn.Linear,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.ReLU,
    ThresholdReLU,
)
ALLOWED_FUNCTIONS = (operator.add, operator.getitem, F.pad)

# 10 classes, 3x32x32 inputs, default batch_norm; resnet20 is He et al.'s well-known 0.27M.
PARAMS = {
    "cnn": 266_162,
    "cifarnet": 45_003_018,
    "vgg16": 14_986_698,
    "vgg16-paper": 35_211_082,
    "resnet20": 269_722,
    "resnet20-paper": 11_253_440,
}


class LeafActTracer(fx.Tracer):
    """Keeps ThresholdReLU as one call_module node (as the converter sees it) instead of tracing
    into clamp."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, ThresholdReLU) or super().is_leaf_module(m, qualname)


def leaf_graph(model):
    graph = LeafActTracer().trace(model)
    modules = dict(model.named_modules())
    return graph, modules


def test_names():
    assert NAMES == ("cnn", "cifarnet", "vgg16", "vgg16-paper", "resnet20", "resnet20-paper")


# The small CNN stays in the quick subset; the rest of the zoo (1-5 s per model) is slow.
ZOO = [n if n == "cnn" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES]
BIG = ("cifarnet", "vgg16-paper")  # 35-45 M parameters: ~0.5 s a build, so slow where built twice
SIZED = [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in NAMES]


@pytest.mark.parametrize("act", ["relu", "threshold"])
@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", ZOO)
def test_shape_and_fx_trace(name, num_classes, act):
    torch.manual_seed(0)
    model = build(name, num_classes=num_classes, act=act).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        traced = fx.symbolic_trace(model)
        assert y.shape == (2, num_classes)
        torch.testing.assert_close(traced(x), y)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "vgg16"])
def test_mnist_size(name):
    model = build(name, in_channels=1, image_size=28, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_vgg16_rejects_too_small_images():
    with pytest.raises(ValueError, match="image_size >= 32"):
        build("vgg16", image_size=28)


@pytest.mark.parametrize("name", NAMES)
def test_one_threshold_relu_per_site(name):
    model = build(name, act="threshold", y_th=0.7)
    acts = [
        m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, ThresholdReLU)
    ]
    assert acts and all(a.y_th == 0.7 for a in acts)
    assert len({id(a) for a in acts}) == len(acts), "an activation module is shared"
    assert not any(isinstance(m, (nn.ReLU, nn.MaxPool2d, nn.MaxPool1d)) for m in model.modules())

    graph, modules = leaf_graph(model)
    sites = [
        n.target
        for n in graph.nodes
        if n.op == "call_module" and isinstance(modules[n.target], ThresholdReLU)
    ]
    assert len(sites) == len(set(sites)) == len(acts), (
        "each ThresholdReLU must be called exactly once"
    )
    for n in graph.nodes:
        if n.op == "call_module":
            assert isinstance(modules[n.target], ALLOWED_MODULES), n.format_node()
        elif n.op == "call_function":
            assert n.target in ALLOWED_FUNCTIONS, n.format_node()
        else:
            assert n.op in ("placeholder", "output"), n.format_node()

    plain = fx.symbolic_trace(
        model
    ).graph  # default tracing too: no relu or max pooling hidden anywhere
    for n in plain.nodes:
        assert n.target not in (F.relu, torch.relu, F.max_pool2d, torch.max_pool2d), n.format_node()
        assert not (n.op == "call_method" and "relu" in n.target), n.format_node()


@pytest.mark.parametrize("name", ["cnn", "resnet20"])
def test_relu_sites_are_distinct_modules(name):
    model = build(name, act="relu")
    relus = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert relus and len({id(r) for r in relus}) == len(relus)
    assert not any(isinstance(m, ThresholdReLU) for m in model.modules())


@pytest.mark.parametrize("name", NAMES)
def test_batch_norm_follows_conv(name):
    model = build(name, batch_norm=True)
    graph, modules = leaf_graph(model)
    bns = [
        n
        for n in graph.nodes
        if n.op == "call_module" and isinstance(modules[n.target], nn.BatchNorm2d)
    ]
    convs = [
        n for n in graph.nodes if n.op == "call_module" and isinstance(modules[n.target], nn.Conv2d)
    ]
    assert len(bns) == len(convs) > 0
    for bn in bns:
        conv = bn.args[0]
        assert conv.op == "call_module" and isinstance(modules[conv.target], nn.Conv2d)
        assert list(conv.users) == [bn], "BN must be the conv's only consumer so it folds"
        assert modules[conv.target].bias is None


@pytest.mark.parametrize(
    "name, default",
    [
        ("cnn", True),
        pytest.param("cifarnet", False, marks=pytest.mark.slow),
        ("vgg16", True),
        pytest.param("vgg16-paper", False, marks=pytest.mark.slow),
        ("resnet20", True),
        ("resnet20-paper", False),
    ],
)
def test_batch_norm_default_and_switch(name, default):
    def has_bn(m):
        return any(isinstance(x, nn.BatchNorm2d) for x in m.modules())

    assert has_bn(build(name)) == default
    assert has_bn(build(name, batch_norm=not default)) == (not default)


@pytest.mark.slow  # builds every model
def test_parameter_counts():
    for name in NAMES:
        n = count_parameters(build(name))
        print(f"{name:15s} {n:>12,d} parameters")
        assert n == PARAMS[name], name
    assert count_parameters(build("resnet20", num_classes=10)) == 269_722


def test_resnet20_structure():
    model = build("resnet20")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(m.kernel_size == (3, 3) and m.bias is None for m in convs)
    assert [len(model.layer1), len(model.layer2), len(model.layer3)] == [3, 3, 3]
    shortcuts = [b.shortcut for stage in (model.layer1, model.layer2, model.layer3) for b in stage]
    assert [type(s).__name__ for s in shortcuts].count("ShortcutA") == 2
    assert all(count_parameters(s) == 0 for s in shortcuts)


def option_a_reference(x, planes):
    """Brute force: out[n, c + planes // 4, i, j] = x[n, c, 2i, 2j], all other channels zero."""
    n, c, h, w = x.shape
    pad = planes // 4
    out = torch.zeros(n, c + 2 * pad, (h + 1) // 2, (w + 1) // 2)
    for b in range(n):
        for ch in range(c):
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    out[b, ch + pad, i, j] = x[b, ch, 2 * i, 2 * j]
    return out


@pytest.mark.parametrize("shape", [(2, 4, 6, 6), (1, 4, 5, 7)])
def test_option_a_shortcut_matches_reference(shape):
    x = torch.randn(shape)
    torch.testing.assert_close(
        ShortcutA(2 * shape[1])(x), option_a_reference(x, 2 * shape[1]), rtol=0, atol=0
    )


def test_resnet20_downsampling_block_uses_option_a():
    block = build("resnet20").layer2[0]
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(block.shortcut(x), option_a_reference(x, 32), rtol=0, atol=0)
    assert block.residual(x).shape == (2, 32, 4, 4)


@pytest.mark.parametrize("name", SIZED)
def test_same_seed_same_weights(name):
    torch.manual_seed(123)
    a = build(name).state_dict()
    torch.manual_seed(123)
    b = build(name).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_different_seed_different_weights():
    torch.manual_seed(0)
    a = build("cnn").state_dict()
    torch.manual_seed(1)
    b = build("cnn").state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_activation_factory():
    assert isinstance(activation("relu", 1.0), nn.ReLU)
    t = activation("threshold", 0.5)
    assert isinstance(t, ThresholdReLU) and t.y_th == 0.5
    assert activation("threshold", 0.5) is not t
    with pytest.raises(ValueError, match=r"unknown activation 'gelu'.*relu.*threshold"):
        activation("gelu", 1.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown model 'resnet18'.*cnn.*resnet20-paper"):
        build("resnet18")
    with pytest.raises(ValueError, match=r"unknown activation 'tanh'.*relu.*threshold"):
        build("cnn", act="tanh")
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="num_classes must be a positive int"):
            build("cnn", num_classes=bad)
    with pytest.raises(ValueError, match="in_channels"):
        build("cnn", in_channels=0)
    with pytest.raises(ValueError, match="y_th"):
        build("cnn", y_th=0.0)


@pytest.mark.parametrize(
    "kwargs,problem",
    [
        (dict(image_size=10**9), r"image_size must be at most 1,024 \(the zoo's models are for"),
        (dict(num_classes=10**9), r"num_classes must be at most 100,000 \(over 4x the 21,841"),
        (dict(in_channels=10**6), r"in_channels must be at most 16 \(images have 1 to 4"),
    ],
)
def test_absurd_sizes_refused_before_allocating(kwargs, problem):
    """Issue 16, defect 8: sizes from a damaged arch record are refused by bound, with the reason,
    instead of trying to allocate petabytes."""
    with pytest.raises(ValueError, match=problem):
        build("cnn", **kwargs)


def test_parameter_limit_counted_on_meta_device():
    """vgg16-paper at 1024 x 1024 passes each size bound but would hold 8.6 G parameters (34 GB);
    it is counted without memory on the meta device and refused. Near the limit still builds."""
    with pytest.raises(ValueError, match=r"8,616,757,066 parameters, above the limit of 1,073,"):
        build("vgg16-paper", image_size=1024)
    assert count_parameters(build("cnn", num_classes=100_000)) < MAX_PARAMETERS


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_converts_and_simulates(name):
    """Random weights; threshold activations need no data. The SNN runs and, at T=1 with the
    membrane shift, every IF layer fires at most once per neuron."""
    import snnconv

    torch.manual_seed(0)
    model = build(name, num_classes=7).eval()
    snn = snnconv.convert(model, shift="membrane")
    n_act = sum(isinstance(m, ThresholdReLU) for m in model.modules())
    assert len(snn.layers) == n_act
    out = snn(torch.randn(1, 3, 32, 32), 2)
    assert out.shape == (2, 1, 7) and torch.isfinite(out).all()
    assert all(m.spike_count.max() <= 2 for m in snn.layers.values())


RESNETS = ("resnet20-cifar10", "resnet20-cifar10-qcfs", "resnet20-cifar10-relu")
# ResNet-20: 269,722 parameters; the QCFS one adds its 19 learnt thresholds.
SHIPPED_PARAMS = {"resnet20-cifar10": 269_722, "resnet20-cifar10-relu": 269_722}
SHIPPED_PARAMS["resnet20-cifar10-qcfs"] = 269_722 + 19


@pytest.mark.parametrize("name,n_params", [("cnn-mnist", None), *SHIPPED_PARAMS.items()])
def test_load_pretrained_and_card(name, n_params):

    model = shipped.load_pretrained(name)
    assert not model.training
    assert "test accuracy" in shipped.card(name)
    assert name in shipped.names()
    assert (shipped.PRETRAINED_DIR / f"{name}.pt").stat().st_size < 5 * 2**20
    if n_params:
        assert sum(p.numel() for p in model.parameters()) == n_params


def _cifar_snn(name, model, root):
    """The shipped model converted as its card says (the ReLU one with percentile thresholds
    from the first 1,024 unaugmented training images, as on its card)."""
    import snnconv
    from snnconv.io import data

    if name.endswith("-relu"):
        train = data.load("cifar10", "train", root=root)
        cal = [data.normalize(train.images[:1024], "cifar10")]
        return snnconv.convert(model, calibration=cal, threshold="percentile", shift="membrane")
    return snnconv.convert(model, shift="membrane")


@pytest.mark.slow  # decompresses the real CIFAR-10 archive, then 2,000 ANN and 256 SNN images
@pytest.mark.parametrize("name", RESNETS)
def test_shipped_resnet20s_classify_cifar10(name):
    """Each shipped model is the trained one: 2,000 real test images for the ANN; the SNN (T=32;
    T=64 for the ReLU model, which needs it) on the first 256 of them, compared with the ANN on
    the same 256."""
    from conftest import SHARED_DATA
    from snnconv.io import data

    test = data.load("cifar10", "test", root=SHARED_DATA)
    x, y = data.normalize(test.images[:2000], "cifar10"), test.labels[:2000]
    model = shipped.load_pretrained(name)
    with torch.no_grad():
        ann_hit = model(x).argmax(1) == y
        steps = 64 if name.endswith("-relu") else 32
        snn_hit = _cifar_snn(name, model, SHARED_DATA)(x[:256], steps)[-1].argmax(1) == y[:256]
    ann, ann256, snn = ann_hit.float().mean(), ann_hit[:256].float().mean(), snn_hit.float().mean()
    print(f"{name}: ANN {ann:.4f} (2000 images); first 256: ANN {ann256:.4f}, SNN {snn:.4f}")
    # every card's full-test figure is >= 88 %; on 2,000 images the binomial s.d. is ~0.7 point,
    # so 86 % is ~3 s.d. below. On the full test set the threshold and QCFS SNNs lose about a
    # point at T=32, the ReLU one 6 points at T=64 (cards; 9.8 points on these 256 images, on
    # the Zen 4 machine); 5 (15) points on 256 images leave room for sampling and for rounding
    # that differs between CPUs, while a broken conversion scores ~10 %.
    assert ann >= 0.86
    assert snn >= ann256 - (0.15 if name.endswith("-relu") else 0.05)


def test_unknown_pretrained_name():

    with pytest.raises(ValueError, match="no shipped model"):
        shipped.card("alexnet-imagenet")
