"""Train the source ANN the paper's way: threshold ReLU, SGD with momentum, a warm-up then a
cosine (or step) schedule, random-crop (+ flip for CIFAR) augmentation, model selection on a
validation split carved from the training data (the test split is never read here). Optionally
distilled from a teacher model's logits (``--teacher``; ``distillation_loss``).

Resumable: every epoch ends with an atomic checkpoint of model, optimizer, scheduler, RNG and
epoch, and each epoch's data order and augmentation come from a generator seeded by (seed, epoch),
so an interrupted run resumed from its last checkpoint ends with the same weights, bit for bit.
Runs on CPU (channels_last), CUDA (bf16 autocast) and under ``torchrun`` (DistributedDataParallel,
each rank a disjoint share of every batch, BN statistics averaged across ranks every epoch).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from snnconv import options
from snnconv.activations import QCFS
from snnconv.exceptions import CheckpointError
from snnconv.io import checkpoint, data
from snnconv.progress import Progress
from snnconv.zoo import models, shipped


def _option(default=dataclasses.MISSING, help: str = "", *, choices=None, check=None):
    """A TrainConfig field: its default, its help line, and how a value is checked (``choices``
    or ``check(value, what) -> value``; None is always allowed where the default is None). The
    command line builds ``snnconv train``'s options from these fields."""
    return field(default=default, metadata={"help": help, "choices": choices, "check": check})


_count = options.check_count
_at_least_0 = lambda v, what: options.check_number(v, what)
_fraction = lambda v, what: options.check_number(v, what, 0.0, 1.0)
_positive = lambda v, what: options.check_number(v, what, 1e-6)


@dataclass
class TrainConfig:
    out: str = _option(help="run folder (created; resumed if it has last.pt)")
    model: str = _option("resnet20", "zoo model", choices=models.NAMES)
    dataset: str = _option("cifar10", "dataset", choices=data.NAMES)
    act: str = _option("threshold", "activation at every site", choices=models.ACTS)
    y_th: float = _option(1.0, "upper bound of the threshold ReLU / QCFS (V_th after conversion)")
    levels: int | None = _option(None, "quantisation levels L of --act qcfs (default 8)")
    batch_norm: bool | None = _option(None, "BatchNorm layers (default: the model's own)")
    epochs: int = _option(40, "training epochs", check=_count)
    batch_size: int = _option(128, "global batch, split evenly across ranks", check=_count)
    lr: float = _option(0.1, "base learning rate", check=_at_least_0)
    momentum: float = _option(0.9, "SGD momentum", check=_at_least_0)
    nesterov: bool = _option(True, "Nesterov momentum")
    weight_decay: float = _option(
        5e-4, "on conv/linear weights only, never on BN parameters or biases", check=_at_least_0
    )
    schedule: options.Schedule = _option(
        "cosine",
        "LR after warm-up: cosine, or step (x0.1 at 50 % and 75 %)",
        choices=options.SCHEDULES,
    )
    warmup_epochs: float = _option(1.0, "linear LR warm-up (epochs)", check=_at_least_0)
    label_smoothing: float = _option(0.0, "cross-entropy label smoothing", check=_fraction)
    val_size: int = _option(5000, "validation images carved from the training split", check=_count)
    limit_train: int | None = _option(
        None, "use only the first N training images (smoke tests)", check=_count
    )
    seed: int = _option(0, "seed of initialisation, data order and augmentation")
    data_root: str | None = _option(
        None, "dataset folder (default: $SNNCONV_DATA or the per-user cache)"
    )
    device: options.Device = _option("auto", "auto: CUDA if there is one", choices=options.DEVICES)
    channels_last: bool = _option(True, "channels_last memory format (faster convolutions)")
    threads: int | None = _option(None, "CPU threads (default: PyTorch's)", check=_count)
    init: str | None = _option(
        None, "start from these weights (a model file or shipped name of the same architecture)"
    )
    teacher: str | None = _option(
        None, "distil from this model's logits (a model file or shipped name, same dataset)"
    )
    distill_weight: float = _option(
        0.9, "share of the distillation term in the loss (with --teacher)", check=_fraction
    )
    distill_temperature: float = _option(
        4.0, "softmax temperature of the distillation term (with --teacher)", check=_positive
    )

    def __post_init__(self):
        check_config(vars(self))
        models.activation(self.act, self.y_th, self.levels)  # checks y_th and levels

    def arch(self, ds: data.Dataset) -> dict:
        arch = dict(
            name=self.model,
            num_classes=len(ds.classes),
            act=self.act,
            y_th=self.y_th,
            in_channels=ds.images.shape[1],
            image_size=ds.images.shape[2],
            batch_norm=self.batch_norm,
        )
        if self.act == "qcfs" or self.levels is not None:
            arch["levels"] = self.levels
        return arch


def check_config(values: dict, flag: Callable[[str], str] = str) -> None:
    """OptionError for the first value in ``values`` (TrainConfig field name -> value) its field
    refuses; ``flag(name)`` names the option in the message (the command line passes "--name")."""
    for f in fields(TrainConfig):
        value = values.get(f.name)
        if value is None and (f.default is None or f.name not in values):
            continue
        if f.metadata["choices"] is not None:
            options.choice(flag(f.name), value, f.metadata["choices"])
        if f.metadata["check"] is not None:
            f.metadata["check"](value, flag(f.name))


ACT_KEYS = ("act", "y_th", "levels")  # the activation's settings, which a fine-tune may change


def load_init(model: nn.Module, path: str, arch: dict) -> None:
    """Copy the weights of model file ``path`` into ``model`` (fine-tuning). The architecture must
    match, except that a fine-tune may change the activation's settings (act, y_th, levels: e.g.
    threshold ReLU -> QCFS, or QCFS with L=8 -> L=4); parameters the source lacks (the
    thresholds of a QCFS model started from a threshold-ReLU one) keep their initial values,
    learnt QCFS thresholds are copied."""
    start = shipped.load_checkpoint(path)
    keys = ACT_KEYS
    same = {k: v for k, v in arch.items() if k not in keys}
    theirs = {k: v for k, v in start["arch"].items() if k not in keys}
    if same != theirs:
        raise ValueError(f"--init {path} is a {start['arch']} model, not {arch}")
    state = checkpoint.build_model(start).state_dict()
    own = model.state_dict()
    missing = own.keys() - state.keys()
    if any(not isinstance(model.get_submodule(k.rpartition(".")[0]), QCFS) for k in missing):
        raise ValueError(f"--init {path} lacks weights {sorted(missing)[:3]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def read_log(path: Path, epochs: int) -> list[dict]:
    """The first ``epochs`` records of a JSON-lines log (for checkpoints from before the history
    was kept in last.pt)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:epochs]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base LR at optimizer step ``step``: linear warm-up over ``warmup`` steps,
    then cosine decay to 0 at ``total``, or x0.1 at 50 % and again at 75 % for "step"."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    return 0.1 ** ((step >= 0.5 * total) + (step >= 0.75 * total))


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices/kernels (ndim > 1) and QCFS thresholds (as Bu et al.);
    none on BN scales/shifts and biases."""
    lams = {id(m.threshold) for m in model.modules() if isinstance(m, QCFS)}
    decay = [p for p in model.parameters() if p.ndim > 1 or id(p) in lams]
    rest = [p for p in model.parameters() if p.ndim <= 1 and id(p) not in lams]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def distillation_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    weight: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Knowledge distillation (Hinton et al. 2015): with p^τ = softmax(z/τ),

        loss = (1 - w)·CE(z_student, y) + w·τ²·KL(p^τ_teacher ‖ p^τ_student)

    averaged over the batch; τ² keeps the soft term's gradient scale independent of τ. w = 0 is
    plain (label-smoothed) cross-entropy; the KL term is 0 when the student's logits equal the
    teacher's up to a constant."""
    hard = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if weight == 0.0:
        return hard
    t = temperature
    soft = F.kl_div(
        F.log_softmax(logits.float() / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - weight) * hard + weight * t * t * soft


def load_teacher(path: str, arch: dict, dataset: str) -> nn.Module:
    """The teacher of ``--teacher`` in eval mode, its parameters frozen; ValueError when it was
    trained on another dataset or has another number of classes than the student."""
    start = shipped.load_checkpoint(path)
    theirs = start.get("dataset"), start["arch"].get("num_classes")
    if theirs != (dataset, arch["num_classes"]):
        raise ValueError(
            f"--teacher {path} is a {theirs[0]} model with {theirs[1]} classes, "
            f"not {dataset} with {arch['num_classes']}"
        )
    teacher = checkpoint.build_model(start).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1_009 + rank)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    ds: data.Dataset,
    device: torch.device,
    batch_size: int = 1000,
    channels_last: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on a uint8 dataset."""
    model.eval()
    correct = 0
    for images, labels in data.batches(ds, batch_size):
        x = data.normalize(images.to(device), ds.name)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device):
            correct += (model(x).argmax(1).cpu() == labels).sum().item()
    return correct / len(ds)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the process group torchrun describes if not yet joined."""
    if (
        dist.is_available()
        and not dist.is_initialized()
        and int(os.environ.get("WORLD_SIZE", 1)) > 1
    ):
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _average_buffers(model: nn.Module, world: int) -> None:
    """Make BN running statistics equal on every rank (their mean)."""
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(world)


@dataclass
class _Session:
    """What one training run works with, set up once by ``_setup``."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    memory_format: torch.memory_format
    train: data.Dataset
    val: data.Dataset
    arch: dict
    model: nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int
    out: Path
    teacher: nn.Module | None = None


def _datasets(cfg: TrainConfig) -> tuple[data.Dataset, data.Dataset, data.Dataset]:
    """(the whole training split, its training part, its validation part)."""
    full = data.load(cfg.dataset, "train", cfg.data_root)
    train, val = data.train_val_split(full, cfg.val_size, cfg.seed)
    if cfg.limit_train is not None:
        n = cfg.limit_train
        train = data.Dataset(
            train.images[:n], train.labels[:n], train.classes, train.name, train.split
        )
    return full, train, val


def _setup(cfg: TrainConfig) -> _Session:
    device = pick_device(cfg.device)
    rank, world = _distributed(device)
    if cfg.batch_size % world:
        raise options.OptionError(f"batch_size {cfg.batch_size} is not divisible by {world} ranks")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    full, train, val = _datasets(cfg)
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise options.OptionError(
            f"{len(train)} training images are fewer than one batch of {cfg.batch_size}"
        )
    arch = cfg.arch(full)
    torch.manual_seed(cfg.seed)
    model = models.build(**arch)
    if cfg.init:
        load_init(model, cfg.init, arch)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=memory_format)
    teacher = None
    if cfg.teacher:
        teacher = load_teacher(cfg.teacher, arch, cfg.dataset)
        teacher = teacher.to(device).to(memory_format=memory_format)
    opt = torch.optim.SGD(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    total, warmup = steps_per_epoch * cfg.epochs, int(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, cfg.schedule)
    )
    return _Session(
        cfg,
        device,
        rank,
        world,
        memory_format,
        train,
        val,
        arch,
        model,
        opt,
        sched,
        steps_per_epoch,
        out,
        teacher,
    )


STATE_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "best", "config")


def load_state(path: Path) -> dict:
    """The training state in ``path`` (last.pt), weights-only; CheckpointError naming the file
    when it is unreadable (empty, truncated by a full disk, ...) or not a training state."""
    try:
        state = checkpoint.read(path)
    except CheckpointError as err:
        raise CheckpointError(
            f"cannot resume from {path}: {err}. To start over, delete it or use a new --out"
        ) from err
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"cannot resume from {path}: not a training state (no {missing})")
    return state


def _saved_state(cfg: TrainConfig) -> dict | None:
    """The state in ``cfg.out/last.pt`` to resume from (None: a fresh run), checked before any
    data is loaded: readable, and written with the same settings."""
    last = Path(cfg.out) / "last.pt"
    if not last.exists():
        return None
    state = load_state(last)
    # options added after last.pt was written ran at their default
    saved = {f.name: f.default for f in fields(TrainConfig)} | state["config"]
    now = asdict(cfg)
    if saved != now:
        changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        raise options.OptionError(
            f"{last} was written with different settings ({changed}); "
            "resume with the same options or use a new --out"
        )
    return state


def _resume(s: _Session, state: dict | None) -> tuple[int, dict, list[dict]]:
    """(first epoch to run, best so far, history) from ``state``, or a fresh start."""
    if state is None:
        if s.rank == 0:
            checkpoint.save_json(asdict(s.cfg), s.out / "config.json")
        return 0, {"val_accuracy": -1.0, "epoch": -1}, []
    s.model.load_state_dict(state["model"])
    s.opt.load_state_dict(state["optimizer"])
    s.sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    start = state["epoch"] + 1
    history = state["history"] if "history" in state else read_log(s.out / "log.jsonl", start)
    return start, state["best"], history


def _train_epoch(s: _Session, net: nn.Module, epoch: int, progress: bool) -> tuple[float, int]:
    """One epoch of SGD; (last loss, images this rank saw)."""
    cfg, world, rank = s.cfg, s.world, s.rank
    gen = epoch_generator(cfg.seed, epoch)
    order = torch.randperm(len(s.train), generator=gen)[: s.steps_per_epoch * cfg.batch_size]
    aug_gen = epoch_generator(cfg.seed, epoch, 1 + rank)
    net.train()
    bar = Progress(
        s.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=progress and rank == 0
    )
    t0, seen = time.perf_counter(), 0
    for step in range(s.steps_per_epoch):
        idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size][rank::world]
        images = data.augment(s.train.images[idx], aug_gen, **data.AUGMENT[s.train.name])
        x = data.normalize(images.to(s.device, non_blocking=True), s.train.name)
        x = x.contiguous(memory_format=s.memory_format)
        y = s.train.labels[idx].to(s.device, non_blocking=True)
        with _autocast(s.device):
            logits = net(x)
            if s.teacher is None:
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            else:
                with torch.no_grad():
                    teacher_logits = s.teacher(x)
                loss = distillation_loss(
                    logits,
                    teacher_logits,
                    y,
                    cfg.distill_weight,
                    cfg.distill_temperature,
                    cfg.label_smoothing,
                )
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        s.opt.step()
        s.sched.step()
        seen += len(idx)
        if step % 10 == 0 or step == s.steps_per_epoch - 1:  # .item() syncs: not every step
            batch_acc = (logits.argmax(1) == y).float().mean().item()
            rate = seen * world / (time.perf_counter() - t0)
            bar.update(
                step + 1 - bar.done,
                loss=f"{loss.item():.3f}",
                acc=f"{100 * batch_acc:.1f}%",
                **{"img/s": f"{rate:.0f}"},
            )
    return loss.item(), seen


def _save_epoch(s: _Session, epoch: int, best: dict, history: list[dict]) -> None:
    """Rank 0: model.pt when validation improved, last.pt and log.jsonl every epoch."""
    if best["epoch"] == epoch + 1:
        checkpoint.save(model_file(s.model, s.arch, s.cfg, best), s.out / "model.pt")
    state = {
        "model": s.model.state_dict(),
        "optimizer": s.opt.state_dict(),
        "scheduler": s.sched.state_dict(),
        "rng": torch.get_rng_state(),
        "epoch": epoch,
        "best": best,
        "history": history,
        "config": asdict(s.cfg),
    }
    checkpoint.save(state, s.out / "last.pt")
    lines = "".join(json.dumps(r) + "\n" for r in history)
    checkpoint.save_text(lines, s.out / "log.jsonl")  # rewritten whole: never a torn line


def run(cfg: TrainConfig, progress: bool = True) -> nn.Module:
    """Train per ``cfg``; resumes from ``cfg.out/last.pt`` if it exists. Returns the final model.

    Writes into ``cfg.out`` (each file atomically): config.json, log.jsonl (one line per epoch),
    last.pt (training state, every epoch) and model.pt (the weights of the best validation
    epoch)."""
    state = _saved_state(cfg)
    s = _setup(cfg)
    start_epoch, best, history = _resume(s, state)
    net = s.model
    if s.world > 1:
        ids = [s.device.index] if s.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(s.model, device_ids=ids)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        loss, seen = _train_epoch(s, net, epoch, progress)
        if s.world > 1:
            _average_buffers(s.model, s.world)
        seconds = time.perf_counter() - t0
        val_acc = accuracy(s.model, s.val, s.device, channels_last=cfg.channels_last)
        record = {
            "epoch": epoch + 1,
            "lr": s.opt.param_groups[0]["lr"],
            "train_loss": loss,
            "val_accuracy": val_acc,
            "seconds": round(seconds, 2),
            "images_per_second": round(seen * s.world / seconds, 1),
        }
        history.append(record)
        if s.rank == 0:
            if val_acc > best["val_accuracy"]:
                best = {"val_accuracy": val_acc, "epoch": epoch + 1}
            _save_epoch(s, epoch, best, history)
            print(json.dumps(record), flush=True)
    return s.model


def model_file(model: nn.Module, arch: dict, cfg: TrainConfig, best: dict) -> dict:
    """The inference checkpoint: architecture, weights (contiguous, CPU) and provenance."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {
        "format": checkpoint.FORMAT,
        "arch": arch,
        "dataset": cfg.dataset,
        "state_dict": state,
        "val_accuracy": best["val_accuracy"],
        "epoch": best["epoch"],
        "train_config": asdict(cfg),
    }


def config_from_args(args) -> TrainConfig:
    """The TrainConfig of parsed command-line options; OptionError names the --option."""
    names = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    check_config(values, options.flag)
    return TrainConfig(**values)
