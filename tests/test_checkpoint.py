"""Tests for snnconv.io.checkpoint and snnconv.zoo.shipped: clear errors for damaged or incomplete
model files, weights that would turn into NaN, checksums, and local folders shadowing shipped
names. Every file is forged in tmp_path."""

import hashlib
import math

import pytest
import torch
from torch import nn

from snnconv.exceptions import CheckpointError
from snnconv.io import checkpoint
from snnconv.zoo import models, shipped

ARCH = dict(name="cnn", in_channels=1, image_size=28, num_classes=10)


def model_file(seed=0, **changes):
    """An snnconv model file's dict for a small MNIST CNN (random weights from ``seed``)."""
    torch.manual_seed(seed)
    model = models.build(**ARCH)
    ckpt = {
        "format": checkpoint.FORMAT,
        "arch": dict(ARCH),
        "dataset": "mnist",
        "state_dict": model.state_dict(),
    }
    ckpt.update(changes)
    return ckpt


def write(tmp_path, ckpt, name="model.pt"):
    path = tmp_path / name
    checkpoint.save(ckpt, path)
    return path


def test_round_trip(tmp_path):
    path = write(tmp_path, model_file())
    ckpt = checkpoint.load(path)
    assert ckpt["path"] == str(path) and ckpt["arch"] == ARCH
    model = checkpoint.build_model(ckpt)
    assert not model.training
    for k, v in model_file()["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v), k


def test_missing_state_dict_names_file_and_key(tmp_path):
    """Issue 16, defect 8: was a bare KeyError('state_dict') from build_model."""
    ckpt = model_file()
    del ckpt["state_dict"]
    path = write(tmp_path, ckpt)
    with pytest.raises(CheckpointError, match=r"model\.pt: the model file has no 'state_dict'"):
        checkpoint.build_model(checkpoint.load(path))


@pytest.mark.parametrize(
    "changes,problem",
    [
        (dict(arch=["cnn"]), "'arch' must be a dict"),
        (dict(state_dict={"0.weight": [1.0, 2.0]}), "'state_dict' must map parameter names to"),
    ],
)
def test_malformed_records(tmp_path, changes, problem):
    path = write(tmp_path, model_file(**changes))
    with pytest.raises(CheckpointError, match=problem) as err:
        checkpoint.load(path)
    assert str(path) in str(err.value)


def test_empty_file_says_it_is_empty(tmp_path):
    """Issue 16, defect 8: was 'cannot read checkpoint ...: ' with an empty reason."""
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    with pytest.raises(
        CheckpointError, match=r"cannot read checkpoint .*model\.pt: the file is empty"
    ):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match="the file is empty"):
        checkpoint.read(path)  # what a resumed training reads last.pt with


def test_truncated_file(tmp_path):
    path = write(tmp_path, model_file())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .* it is truncated") as err:
        checkpoint.load(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "field,value,problem",
    [
        ("image_size", 10**9, r"image_size must be at most 1,024 \(the zoo's models are for small"),
        ("num_classes", 10**9, r"num_classes must be at most 100,000"),
        ("image_size", 2**31, r"image_size must be at most"),
    ],
)
def test_absurd_arch_refused_before_building(tmp_path, field, value, problem):
    """Issue 16, defect 8: an absurd size used to try to allocate it (RuntimeError or worse)."""
    path = write(tmp_path, model_file(arch={**ARCH, field: value}))
    with pytest.raises(CheckpointError, match=problem) as err:
        checkpoint.build_model(checkpoint.load(path))
    assert str(path) in str(err.value) and "bad architecture record" in str(err.value)


def test_negative_running_var_refused_naming_the_layer(tmp_path):
    """Issue 16, defect 6: a negative BN variance passed every check, and BN folding then divided
    by sqrt(var + eps) = NaN; evaluate wrote NaN into results.json."""
    ckpt = model_file()
    var = ckpt["state_dict"]["5.running_var"]  # cnn: conv 4, BN 5 (the second conv's BN)
    var[5] = -0.5
    bn = nn.BatchNorm2d(len(var)).eval()
    bn.running_var.copy_(var)
    folded_scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # what folding does
    assert math.isnan(folded_scale[5])
    path = write(tmp_path, ckpt)
    with pytest.raises(CheckpointError, match=r"BatchNorm layer '5' has a negative running_var"):
        checkpoint.build_model(checkpoint.load(path))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weight_refused(tmp_path, bad):
    ckpt = model_file()
    ckpt["state_dict"]["9.weight"][0, 0] = bad
    path = write(tmp_path, ckpt)
    with pytest.raises(CheckpointError, match=r"9\.weight holds 1 non-finite value"):
        checkpoint.build_model(checkpoint.load(path))


def test_check_finite_weights_after_folding():
    """For the converter after BN folding: parameters and buffers, the first bad one named."""
    model = models.build(**ARCH)
    checkpoint.check_finite_weights(model, "folded cnn")  # a sound model passes
    with torch.no_grad():
        model[5].running_mean[2] = math.nan
    with pytest.raises(CheckpointError, match=r"folded cnn: 5\.running_mean holds 1 non-finite"):
        checkpoint.check_finite_weights(model, "folded cnn")


def test_sha256(tmp_path):
    path = tmp_path / "blob"
    blob = bytes(range(256)) * (3 * 2**12 + 7)  # ~3 MiB: more than one 1 MiB block
    path.write_bytes(blob)
    assert checkpoint.sha256(path) == hashlib.sha256(blob).hexdigest()
    path.write_bytes(blob[:-1] + b"\x00")
    assert checkpoint.sha256(path) != hashlib.sha256(blob).hexdigest()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    checkpoint.save_json({"a": 1}, path)

    def fail(f):
        f.write(b"half of a new file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoint.atomic_write(path, fail)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


# ----------------------------------------------------------------------------- shipped names


def test_local_folder_shadows_shipped_name(tmp_path, monkeypatch):
    """Issue 16, defect 4: with a local training folder cnn-mnist/, `cnn-mnist` and `./cnn-mnist`
    are that folder's model, never the shipped model of the same name."""
    assert "cnn-mnist" in shipped.names()
    local = tmp_path / "cnn-mnist"
    local.mkdir()
    write(local, model_file(seed=1))
    monkeypatch.chdir(tmp_path)
    expected = (local / "model.pt").resolve()
    local_weights = model_file(seed=1)["state_dict"]["0.weight"]
    shipped_weights = shipped.load_pretrained(shipped.PRETRAINED_DIR / "cnn-mnist.pt")[0].weight
    assert not torch.equal(local_weights, shipped_weights)
    for name in ("cnn-mnist", "./cnn-mnist", "cnn-mnist/", "cnn-mnist/model.pt"):
        assert shipped.resolve(name) == expected, name
        assert shipped.load_checkpoint(name)["path"] == str(expected), name
        assert torch.equal(shipped.load_pretrained(name)[0].weight, local_weights), name


def test_local_folder_without_model_is_an_error_not_the_shipped_model(tmp_path, monkeypatch):
    (tmp_path / "cnn-mnist").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint 'cnn-mnist': not a file"):
        shipped.resolve("cnn-mnist")
    with pytest.raises(CheckpointError, match="no checkpoint './resnet20-cifar10'"):
        shipped.resolve("./resnet20-cifar10")  # a path, though a shipped model has that name


def test_shipped_name_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    assert shipped.resolve("cnn-mnist") == shipped.PRETRAINED_DIR / "cnn-mnist.pt"
    assert shipped.resolve("cnn-mnist").is_absolute()
