"""Training: schedule, parameter groups, bitwise resume after SIGKILL, two-rank DDP on CPU."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import snnconv
from conftest import SHARED_DATA
from snnconv import cli, train
from snnconv.exceptions import CheckpointError
from snnconv.io import checkpoint
from snnconv.zoo import models, shipped

SMALL = [
    "--model",
    "cnn",
    "--dataset",
    "mnist",
    "--limit-train",
    "3072",
    "--val-size",
    "500",
    "--batch-size",
    "64",
    "--lr",
    "0.05",
    "--threads",
    "1",
    "--data-root",
    str(SHARED_DATA),
]


def test_lr_factor_warmup_cosine_and_step():
    f = [train.lr_factor(s, 100, 10, "cosine") for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[9:], f[10:]))  # non-increasing after warm-up
    assert f[-1] < 0.001
    g = [train.lr_factor(s, 100, 0, "step") for s in range(100)]
    assert g[49] == 1.0 and g[50] == pytest.approx(0.1) and g[75] == pytest.approx(0.01)


def test_no_weight_decay_on_batchnorm_and_biases():
    model = models.build("resnet20")
    decay, rest = train.parameter_groups(model, 5e-4)
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 5e-4
    bn = {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters()
    }
    assert bn <= {id(p) for p in rest["params"]} and rest["weight_decay"] == 0.0


def run_cli(args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "snnconv", *args], capture_output=True, text=True, timeout=600, **kw
    )


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = run_cli(["train", *SMALL, "--epochs", "3", "--out", str(full)])
    assert done.returncode == 0, done.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "snnconv", "train", *SMALL, "--epochs", "3", "--out", str(cut)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stderr:  # progress lines; kill as soon as epoch 2 is under way
        if line.startswith("epoch 2/3"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    interrupted = torch.load(cut / "last.pt", weights_only=True)
    assert interrupted["epoch"] == 0, "killed in the middle of epoch 2: last checkpoint is epoch 1"
    assert not list(cut.glob("*.tmp")) or all(p.name.startswith(".") for p in cut.glob("*.tmp"))

    resumed = run_cli(["train", *SMALL, "--epochs", "3", "--out", str(cut)])
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["rng"], b["rng"])
    log = (cut / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [
        1,
        2,
        3,
    ]  # epoch 2 logged once, after the resume


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "run"
    assert run_cli(["train", *SMALL, "--epochs", "1", "--out", str(out)]).returncode == 0
    again = run_cli(["train", *SMALL, "--epochs", "1", "--lr", "0.2", "--out", str(out)])
    assert again.returncode == 2 and "different settings" in again.stderr and "lr" in again.stderr


@pytest.mark.slow
def test_resume_a_checkpoint_from_before_later_options(tmp_path):
    """A last.pt written before an option (here --init) and the kept history existed resumes when
    the new option is at its default; the log's earlier epochs are kept."""
    out = tmp_path / "run"
    assert run_cli(["train", *SMALL, "--epochs", "1", "--out", str(out)]).returncode == 0
    state = torch.load(out / "last.pt", weights_only=True)
    del state["config"]["init"], state["history"]
    torch.save(state, out / "last.pt")
    r = run_cli(["train", *SMALL, "--epochs", "2", "--out", str(out)])
    # --epochs differs, which is a real change of settings; same epochs but a new default option
    # is not
    assert r.returncode == 2 and "epochs" in r.stderr
    state["config"]["epochs"] = 2
    torch.save(state, out / "last.pt")
    r = run_cli(["train", *SMALL, "--epochs", "2", "--out", str(out)])
    assert r.returncode == 0, r.stderr
    log = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def _rank(rank, world, port, out, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = train.TrainConfig(
        out=str(out),
        model="cnn",
        dataset="mnist",
        epochs=1,
        batch_size=64,
        lr=0.05,
        limit_train=1024,
        val_size=500,
        data_root=str(SHARED_DATA),
    )
    model = train.run(cfg, progress=False)
    torch.save(model.state_dict(), result / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_with_gloo_end_with_equal_weights(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, tmp_path / "run", tmp_path), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # parameters via DDP all-reduce, BN stats averaged
    torch.manual_seed(0)
    init = models.build("cnn", in_channels=1, image_size=28).state_dict()
    assert not torch.equal(init["0.weight"], a["0.weight"]), "training changed the weights"
    ckpt = checkpoint.load(tmp_path / "run" / "model.pt")  # rank 0 wrote the model file
    assert ckpt["arch"]["name"] == "cnn"


def _main(capsys, *argv) -> tuple[int, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    return code, capsys.readouterr().err


def test_train_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    code, err = _main(
        capsys,
        "train",
        *SMALL[:-1],
        str(tmp_path / "nowhere"),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 2 and "snnconv: error: no local copy of mnist train" in err
    code, err = _main(capsys, "train", "--model", "alexnet", "--out", str(tmp_path / "y"))
    assert code == 2 and "invalid choice" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a state"])
def test_resume_from_a_damaged_last_pt_names_the_file(tmp_path, capsys, damage):
    """A last.pt cut short (full disk, copy interrupted) is a one-line error naming it."""
    out = tmp_path / "run"
    out.mkdir()
    state = {"model": {"w": torch.zeros(1000)}, "epoch": 0}
    torch.save(state if damage == "not a state" else {**state, "x": torch.ones(10)}, out / "x.pt")
    blob = (out / "x.pt").read_bytes()
    cut = {"truncated": blob[: len(blob) // 2], "empty": b"", "not a state": blob}[damage]
    (out / "last.pt").write_bytes(cut)
    code, err = _main(capsys, "train", *SMALL, "--epochs", "1", "--out", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"snnconv: error: cannot resume from {out / 'last.pt'}" in err
    assert (out / "last.pt").read_bytes() == cut  # left as it was


def test_limit_train_must_be_positive():
    for bad in (0, -5):
        with pytest.raises(snnconv.OptionError, match="limit_train must be an integer >= 1"):
            train.TrainConfig(out="x", limit_train=bad)


def test_checkpoints_load_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    bad = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "arch": {}, "x": Evil()}, bad)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoint.load(bad)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing.pt")


@pytest.mark.slow
def test_init_from_a_model_file(tmp_path):
    """--init starts from given weights; a model of another architecture is refused."""
    r = run_cli(
        [
            "train",
            *SMALL,
            "--epochs",
            "1",
            "--lr",
            "0.0",
            "--warmup-epochs",
            "0",
            "--init",
            "cnn-mnist",
            "--out",
            str(tmp_path / "a"),
        ]
    )
    assert r.returncode == 0, r.stderr
    got = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    want = shipped.load_checkpoint("cnn-mnist")["state_dict"]
    # lr 0: weights unchanged; BN running statistics keep moving in train mode, so compare weights
    assert all(torch.equal(got[k], want[k]) for k in want if k.endswith("weight"))
    r = run_cli(
        [
            "train",
            *SMALL,
            "--batch-norm",
            "false",
            "--epochs",
            "1",
            "--init",
            "cnn-mnist",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert r.returncode == 2 and "--init" in r.stderr


def test_distillation_loss_is_cross_entropy_at_weight_0_and_adds_the_kl_term():
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    ce = torch.nn.functional.cross_entropy(z, y, label_smoothing=0.1)
    assert torch.equal(train.distillation_loss(z, t, y, 0.0, 4.0, 0.1), ce)
    # a teacher equal to the student up to a constant shift adds nothing: KL = 0
    same = train.distillation_loss(z, z + 3.0, y, 0.9, 4.0, 0.1)
    assert same.item() == pytest.approx(0.1 * ce.item(), abs=1e-6)  # float32 rounding only
    # the soft term's gradient is τ·(p_student - p_teacher)/B with p = softmax(z/τ)
    zz = z.clone().requires_grad_(True)
    train.distillation_loss(zz, t, y, 1.0, 4.0).backward()
    want = 4.0 * (torch.softmax(z / 4, 1) - torch.softmax(t / 4, 1)) / 8
    torch.testing.assert_close(zz.grad, want)


def test_a_teacher_of_another_dataset_is_refused():
    arch = {"num_classes": 10}
    with pytest.raises(ValueError, match="--teacher cnn-mnist is a mnist model"):
        train.load_teacher("cnn-mnist", arch, "cifar10")
    teacher = train.load_teacher("cnn-mnist", arch, "mnist")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.slow
def test_train_with_a_teacher_records_it_and_resumes_only_with_it(tmp_path):
    out = str(tmp_path / "kd")
    args = ["train", *SMALL, "--epochs", "1", "--teacher", "cnn-mnist", "--out", out]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "kd" / "config.json").read_text())
    assert cfg["teacher"] == "cnn-mnist" and cfg["distill_weight"] == 0.9
    r = run_cli(["train", *SMALL, "--epochs", "2", "--distill-weight", "0.5", "--out", out])
    assert r.returncode == 2 and "distill_weight" in r.stderr
