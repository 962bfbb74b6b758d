"""Train the source ANN the paper's way: threshold ReLU, SGD with momentum, a warm-up then a cosine
(or step) schedule, random-crop (+ flip for CIFAR) augmentation, model selection on a validation split carved
from the training data (the test split is never read here).

Resumable: every epoch ends with an atomic checkpoint of model, optimizer, scheduler, RNG and
epoch, and each epoch's data order and augmentation come from a generator seeded by (seed, epoch),
so an interrupted run resumed from its last checkpoint ends with the same weights, bit for bit.
Runs on CPU (channels_last), CUDA (bf16 autocast) and under ``torchrun`` (DistributedDataParallel,
each rank a disjoint share of every batch, BN statistics averaged across ranks every epoch).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from snnconv.activations import QCFS
from snnconv.io import checkpoint, data
from snnconv.progress import Progress
from snnconv.zoo import models, shipped


@dataclass
class TrainConfig:
    out: str
    model: str = "resnet20"
    dataset: str = "cifar10"
    act: str = "threshold"
    y_th: float = 1.0
    levels: int | None = None  # quantisation levels L of act="qcfs" (default 8)
    batch_norm: bool | None = None
    epochs: int = 40
    batch_size: int = 128  # global batch, split evenly across ranks
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # on conv/linear weights only, never on BN parameters or biases
    schedule: str = "cosine"  # "cosine" | "step" (x0.1 at 50 % and 75 % of training)
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    val_size: int = 5000
    limit_train: int | None = None  # use only the first N training images (smoke tests)
    seed: int = 0
    data_root: str | None = None
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    channels_last: bool = True
    threads: int | None = None
    init: str | None = None  # start from this model file's weights (fine-tuning)

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


ACT_KEYS = ("act", "y_th", "levels")  # what a fine-tune (--init) to another activation may change


def load_init(model: nn.Module, path: str, arch: dict) -> None:
    """Copy the weights of model file ``path`` into ``model`` (fine-tuning). The architecture must
    match, except that a fine-tune to another activation may change act, y_th and levels; parameters the source lacks (the thresholds of
    a QCFS model started from a threshold-ReLU one) keep their initial values."""
    start = shipped.load_checkpoint(path)
    keys = ACT_KEYS if start["arch"].get("act") != arch.get("act") else ()  # a new activation
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
    """The first ``epochs`` records of a JSON-lines log (checkpoints from before history was kept)."""
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


def run(cfg: TrainConfig, progress: bool = True) -> nn.Module:
    """Train per ``cfg``; resumes from ``cfg.out/last.pt`` if it exists. Returns the final model.

    Writes into ``cfg.out`` (each file atomically): config.json, log.jsonl (one line per epoch),
    last.pt (training state, every epoch) and model.pt (the weights of the best validation
    epoch)."""
    if cfg.schedule not in ("cosine", "step"):
        raise ValueError(f"schedule must be 'cosine' or 'step', got {cfg.schedule!r}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    device = pick_device(cfg.device)
    rank, world = _distributed(device)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} ranks")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    full = data.load(cfg.dataset, "train", cfg.data_root)
    train, val = data.train_val_split(full, cfg.val_size, cfg.seed)
    if cfg.limit_train:
        train = data.Dataset(
            train.images[: cfg.limit_train],
            train.labels[: cfg.limit_train],
            train.classes,
            train.name,
            train.split,
        )
    arch = cfg.arch(full)
    torch.manual_seed(cfg.seed)
    model = models.build(**arch)
    if cfg.init:
        load_init(model, cfg.init, arch)
    model = model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.SGD(
        parameter_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
    )
    per_rank = cfg.batch_size // world
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(train)} training images are fewer than one batch of {cfg.batch_size}"
        )
    total = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, warmup, cfg.schedule)
    )

    start_epoch, best, history = 0, {"val_accuracy": -1.0, "epoch": -1}, []
    last = out / "last.pt"
    if last.exists():
        state = torch.load(last, map_location="cpu", weights_only=True)
        saved = {f.name: f.default for f in fields(TrainConfig)} | state[
            "config"
        ]  # options added later
        if saved != asdict(cfg):  # ran at their default
            changed = {
                k for k in saved.keys() | asdict(cfg).keys() if saved.get(k) != asdict(cfg).get(k)
            }
            raise ValueError(
                f"{last} was written with different settings ({sorted(changed)}); "
                "resume with the same options or use a new --out"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        history = (
            state["history"] if "history" in state else read_log(out / "log.jsonl", start_epoch)
        )
    elif rank == 0:
        checkpoint.save_json(asdict(cfg), out / "config.json")

    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    for epoch in range(start_epoch, cfg.epochs):
        gen = epoch_generator(cfg.seed, epoch)
        order = torch.randperm(len(train), generator=gen)[: steps_per_epoch * cfg.batch_size]
        aug_gen = epoch_generator(cfg.seed, epoch, 1 + rank)
        net.train()
        bar = Progress(
            steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=progress and rank == 0
        )
        t0, seen = time.perf_counter(), 0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size][rank::world]
            images = data.augment(train.images[idx], aug_gen, **data.AUGMENT[train.name])
            x = data.normalize(images.to(device, non_blocking=True), train.name)
            x = x.contiguous(memory_format=memory_format)
            y = train.labels[idx].to(device, non_blocking=True)
            with _autocast(device):
                logits = net(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += per_rank
            if step % 10 == 0 or step == steps_per_epoch - 1:  # .item() syncs: not every step
                batch_acc = (logits.argmax(1) == y).float().mean().item()
                rate = seen * world / (time.perf_counter() - t0)
                bar.update(
                    step + 1 - bar.done,
                    loss=f"{loss.item():.3f}",
                    acc=f"{100 * batch_acc:.1f}%",
                    **{"img/s": f"{rate:.0f}"},
                )
        if world > 1:
            _average_buffers(model, world)
        seconds = time.perf_counter() - t0
        val_acc = accuracy(model, val, device, channels_last=cfg.channels_last)
        record = {
            "epoch": epoch + 1,
            "lr": opt.param_groups[0]["lr"],
            "train_loss": loss.item(),
            "val_accuracy": val_acc,
            "seconds": round(seconds, 2),
            "images_per_second": round(seen * world / seconds, 1),
        }
        history.append(record)
        if rank == 0:
            if val_acc > best["val_accuracy"]:
                best = {"val_accuracy": val_acc, "epoch": epoch + 1}
                checkpoint.save(model_file(model, arch, cfg, best), out / "model.pt")
            checkpoint.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": torch.get_rng_state(),
                    "epoch": epoch,
                    "best": best,
                    "history": history,
                    "config": asdict(cfg),
                },
                last,
            )
            checkpoint.save_text(
                "".join(json.dumps(r) + "\n" for r in history), out / "log.jsonl"
            )  # rewritten whole: never a torn line
            print(json.dumps(record), flush=True)
    return model


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
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
