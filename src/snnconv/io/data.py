"""Datasets as uint8 tensors: CIFAR-10, CIFAR-100 and MNIST in their authors' file formats.

``load`` reads, under a root folder, either the extracted folders (``cifar-10-batches-py/``,
``cifar-100-python/``, ``MNIST/raw/``) or the CIFAR archives in place (``.tar.gz``/``.tar.xz``;
a multi-block ``.xz`` has its blocks decoded in parallel, ``snnconv.io.xz``), and can download
the official files (md5-checked) when none is there. Every problem with the data raises
``DataError``. Images stay uint8 [N, C, H, W] until ``normalize``; ``augment``,
``train_val_split`` and ``batches`` work on those tensors.

Invariant: a data file is data. A CIFAR pickle can build nothing but builtin containers and plain
integer numpy arrays (``_Unpickler``); an MNIST IDX header (magic, 28 x 28, matching counts) is
checked before its payload is decompressed, and no more than the header's size is read; an
archive holding a wanted member twice is refused.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import lzma
import math
import os
import pickle
import posixpath
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from snnconv.exceptions import DataError
from snnconv.io import xz

NAMES = ("cifar10", "cifar100", "mnist")
SPLITS = ("train", "test")

# per-channel mean and std of the training split's pixels, on the [0, 1] scale
MEAN_STD = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
}

# download sources: base URLs tried in order, and the published md5 of each file
MIRRORS = {
    "cifar10": ["https://www.cs.toronto.edu/~kriz/"],
    "cifar100": ["https://www.cs.toronto.edu/~kriz/"],
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
}
MD5 = {
    "cifar10": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    "cifar100": {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """``images`` uint8 [N, C, H, W] (contiguous), ``labels`` int64 [N] indexing ``classes``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    split: str  # "train", "test", or "val" for a split carved out of train

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"Dataset({self.name}/{self.split}, {len(self)} x {list(self.images.shape[1:])})"


def default_root() -> Path:
    """``$SNNCONV_DATA`` if set, else ``($XDG_CACHE_HOME or ~/.cache)/snnconv/data``."""
    if os.environ.get("SNNCONV_DATA"):
        return Path(os.environ["SNNCONV_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "snnconv" / "data"


def num_classes(name: str) -> int:
    _check_name(name)
    return 100 if name == "cifar100" else 10


def load(
    name: str, split: str, root: str | os.PathLike | None = None, download: bool = False
) -> Dataset:
    """Load a split from ``root`` (default: ``default_root()``); fresh tensors on every call."""
    _check_name(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {name}; choose one of {', '.join(SPLITS)}")
    root = Path(root).expanduser() if root is not None else default_root()
    files, looked_for = _find(name, split, root)
    if files is None and download:
        _download(name, split, root)
        files, looked_for = _find(name, split, root)
    if files is None:
        raise DataError(
            f"no local copy of {name} {split} under {root}; looked for:\n  "
            + "\n  ".join(map(str, looked_for))
            + "\nPass download=True to fetch it, or point root (or the SNNCONV_DATA variable) at a "
            "folder holding it."
        )
    key = tuple((str(p.resolve()), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])
    images, labels, classes = _read(name, split, key)
    return Dataset(
        torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), classes, name, split
    )


def normalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float32 ``(x / 255 - mean) / std`` with ``name``'s train statistics."""
    _check_name(name)
    mean, std = (torch.tensor(v, device=images.device).view(-1, 1, 1) for v in MEAN_STD[name])
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != len(mean):
        raise ValueError(
            f"expected uint8 [N, {len(mean)}, H, W] images for {name}, "
            f"got {images.dtype} {list(images.shape)}"
        )
    return images.float().div_(255).sub_(mean).div_(std)


# training augmentation per dataset: crop padding and horizontal flips (digits must not be mirrored)
AUGMENT = {
    "cifar10": dict(pad=4, flip=True),
    "cifar100": dict(pad=4, flip=True),
    "mnist": dict(pad=2, flip=False),
}


def augment(
    images: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop of the ``pad``-zero-padded image back to H x W, then (if ``flip``) a horizontal
    flip with p=1/2.

    Each image of the [N, C, H, W] batch draws its own offsets and flip from ``generator``;
    the same generator state gives the same output.
    """
    n, _, h, w = images.shape
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=generator.device)
    flip = (torch.rand(n, 1, generator=generator, device=generator.device) < 0.5) & flip
    rows = dy + torch.arange(h, device=generator.device)  # [N, H] rows of the padded image
    cols = dx + torch.arange(w, device=generator.device)  # [N, W]
    cols = torch.where(flip, cols.flip(1), cols)
    rows, cols = rows.to(images.device), cols.to(images.device)
    padded = F.pad(images, (pad, pad, pad, pad))
    idx = torch.arange(n, device=images.device)[:, None, None]
    out = padded[idx, :, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def train_val_split(ds: Dataset, val_size: int, seed: int) -> tuple[Dataset, Dataset]:
    """Disjoint (rest, val) parts of ``ds``, fixed by ``seed``; both keep the original order."""
    if not 0 < val_size < len(ds):
        raise ValueError(f"val_size must be in 1..{len(ds) - 1}, got {val_size}")
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    val, rest = perm[:val_size].sort().values, perm[val_size:].sort().values
    return (
        replace(ds, images=ds.images[rest], labels=ds.labels[rest]),
        replace(ds, images=ds.images[val], labels=ds.labels[val], split="val"),
    )


def batches(
    ds: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
):
    """Yield ``(images, labels)`` batches covering ``ds`` once; a shuffled order comes from
    ``generator``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(ds)
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs a torch.Generator (for a reproducible order)")
        order = torch.randperm(n, generator=generator, device=generator.device).to(ds.images.device)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size] if shuffle else slice(i, i + batch_size)
        yield ds.images[idx], ds.labels[idx]


# ----------------------------------------------------------------------------- locating files


class _Cifar(NamedTuple):
    folder: str  # extracted folder, also the members' prefix inside the archive
    archive: str  # archive file name without .tar.gz / .tar.xz
    meta: str
    names_key: str
    labels_key: str
    splits: dict[str, tuple[str, ...]]


_CIFAR = {
    "cifar10": _Cifar(
        "cifar-10-batches-py",
        "cifar-10-python",
        "batches.meta",
        "label_names",
        "labels",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    ),
    "cifar100": _Cifar(
        "cifar-100-python",
        "cifar-100-python",
        "meta",
        "fine_label_names",
        "fine_labels",
        {"train": ("train",), "test": ("test",)},
    ),
}


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")


def _mnist_files(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find(name: str, split: str, root: Path) -> tuple[tuple[Path, ...] | None, list[Path]]:
    """The files to read, in order of preference (None if absent), and every path looked for."""
    if name == "mnist":
        raw = root / "MNIST" / "raw"
        options = [(raw / f, raw / f"{f}.gz") for f in _mnist_files(split)]
        found = [next((p for p in pair if p.is_file()), None) for pair in options]
        return (None if None in found else tuple(found)), [p for pair in options for p in pair]
    c = _CIFAR[name]
    folder = tuple(root / c.folder / f for f in (c.meta, *c.splits[split]))
    archives = [root / f"{c.archive}{ext}" for ext in (".tar.gz", ".tar.xz")]
    if all(p.is_file() for p in folder):
        return folder, [*folder, *archives]
    found = next(((p,) for p in archives if p.is_file()), None)
    return found, [*folder, *archives]


# ----------------------------------------------------------------------------- decoding


@functools.lru_cache(maxsize=4)
def _read(name: str, split: str, key: tuple[tuple[str, int, int], ...]):
    """Decode once per (path, size, mtime) key; the cached arrays are read-only."""
    paths = [Path(p) for p, _, _ in key]
    images, labels, classes = (
        _read_mnist(*paths) if name == "mnist" else _read_cifar(name, split, paths)
    )
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels, classes


def _read_cifar(name: str, split: str, paths: list[Path]):
    c = _CIFAR[name]
    wanted = [f"{c.folder}/{f}" for f in (c.meta, *c.splits[split])]
    if len(paths) > 1:  # extracted folder, same order as `wanted`
        decoded = {}
        for member, path in zip(wanted, paths):
            with open(path, "rb") as f:
                decoded[member] = _unpickle(f, str(path))
    else:
        decoded = _read_archive(paths[0], wanted, f"the {name} {split} split")
    meta, *parts = (decoded[m] for m in wanted)
    source = paths[0].parent if len(paths) > 1 else paths[0]
    classes = meta.get(c.names_key)
    n_classes = num_classes(name)
    if not (
        isinstance(classes, list)
        and len(classes) == n_classes
        and all(isinstance(s, (str, bytes)) for s in classes)
    ):
        raise DataError(
            f"{source}: {c.meta} must hold {c.names_key} with {n_classes} names; "
            "the file is not in the CIFAR format, replace it"
        )
    classes = tuple(s.decode("latin1") if isinstance(s, bytes) else s for s in classes)
    images, labels = zip(
        *(
            _cifar_batch(d, c.labels_key, n_classes, f"{source}:{m}")
            for d, m in zip(parts, wanted[1:])
        )
    )
    return np.concatenate(images).reshape(-1, 3, 32, 32), np.concatenate(labels), classes


def _cifar_batch(d: dict, labels_key: str, n_classes: int, where: str):
    data, labels = d.get("data"), d.get(labels_key)
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3072
    ):
        raise DataError(
            f"{where}: 'data' must be a uint8 array of shape [N, 3072]; "
            "the file is corrupt, replace it"
        )
    problem = _label_problem(labels, len(data), n_classes)
    if problem:
        raise DataError(
            f"{where}: {labels_key!r} must be {len(data)} integers in 0..{n_classes - 1}, "
            f"{problem}; the file is corrupt, replace it"
        )
    return data, np.asarray(labels, dtype=np.int64)


def _label_problem(labels, n: int, n_classes: int) -> str | None:
    """What is wrong with CIFAR labels (a list of ints, or an integer array), or None.

    Checked before any conversion: a float is not truncated, 2**70 does not overflow int64.
    """
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            return f"got a {labels.dtype} array of shape {list(labels.shape)}"
        values = labels
    elif isinstance(labels, list):
        odd = next((v for v in labels if type(v) is not int), None)
        if odd is not None:
            return f"got a {type(odd).__name__} ({_short(odd)})"
        values = labels
    else:
        return f"got a {type(labels).__name__}"
    if len(values) != n:
        return f"got {len(values)} labels"
    low, high = (min(values), max(values)) if n else (0, 0)
    if low < 0 or high >= n_classes:
        return f"got {_short(int(low if low < 0 else high))}"
    return None


def _read_archive(path: Path, members: list[str], what: str) -> dict[str, dict]:
    """Stream through the whole tar once, unpickling just ``members``.

    An archive naming one of ``members`` twice is refused: ``tar x`` keeps the last copy, this
    reader would have to choose, and a genuine CIFAR archive never has two.
    """
    decoded, seen = {}, {}  # seen: every entry name, in order (a dict for O(1) lookups)
    try:
        # a multi-block .xz decodes its blocks in PyTorch's threads (io.xz); anything else streams
        parallel = xz.open_parallel(path, torch.get_num_threads())
        with (
            parallel or contextlib.nullcontext(),
            tarfile.open(None if parallel else path, "r|*", fileobj=parallel) as tar,
        ):
            for info in tar:
                member = posixpath.normpath(info.name)
                if member in members and member in seen:
                    raise DataError(
                        f"{path} holds {member} twice; a genuine archive has one copy, "
                        "download it again"
                    )
                seen[member] = None
                if member in members and info.isfile():
                    decoded[member] = _unpickle(tar.extractfile(info), f"{path}:{member}")
    except (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError) as e:
        raise DataError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {e}); "
            "delete it and download it again"
        ) from e
    missing = [m for m in members if m not in decoded]
    if missing:
        held = ", ".join(list(seen)[:10]) + (", ..." if len(seen) > 10 else "")
        raise DataError(
            f"{what} is missing from {path}: it has no {', '.join(missing)} "
            f"(it holds {held or 'nothing'}); use a complete copy of the archive"
        )
    return decoded


# ---------------------------------------------------------------------------- restricted unpickling
#
# A pickle is a program; a CIFAR file may only run the few calls a pickled uint8/int array makes:
#   _reconstruct(ndarray, (0,), b"b")  BUILD (1, shape, dtype, fortran, raw bytes)
#   dtype("u1", False, True)           BUILD (3, "|", None, None, None, -1, -1, 0)
# and _codecs.encode(text, "latin1") for bytes written by protocol <= 2. Neither numpy nor its
# dtypes are ever handed to the pickle: the calls return inert placeholders whose __setstate__
# accepts exactly the state numpy writes for a plain integer dtype, then builds the array with
# numpy's own immutable dtype object. Any other dtype, any other state (a structured or object
# dtype, cleared flags, a second BUILD) and any other global is refused with DataError.

# integer dtypes a CIFAR file may hold (images are u1, labels ints), each with the byte orders
# numpy writes for it, mapped to numpy's own dtype object
_DTYPES = {
    (code, order): np.dtype(order + code)
    for code in ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8")
    for order in (("|",) if code[1] == "1" else ("<", ">"))
}
_DTYPE_CODES = frozenset(code for code, _ in _DTYPES)


def _short(obj) -> str:
    """``repr(obj)`` cut to 60 characters: a forged state can be as large as the file."""
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(where: str, what: str) -> DataError:
    return DataError(
        f"refusing {what} in {where}: a CIFAR file holds only uint8 images and integer labels "
        "(plain numpy integer arrays); the file is not genuine, delete it"
    )


class _PickledDtype:
    """What ``numpy.dtype(code, False, True)`` gives the pickle: a code waiting for its state."""

    def __init__(self, where: str, code):
        self.where, self.code, self.dtype = where, code, None

    def __setstate__(self, state) -> None:
        order = state[1] if isinstance(state, tuple) and len(state) == 8 else None
        dtype = _DTYPES.get((self.code, order)) if isinstance(order, str) else None
        if (
            self.dtype is not None
            or dtype is None
            or state != (3, order, None, None, None, -1, -1, 0)
        ):
            raise _refuse(self.where, f"the state {_short(state)} for the dtype {self.code!r}")
        self.dtype = dtype


class _PickledArray:
    """What ``_reconstruct(ndarray, ...)`` gives the pickle: an array waiting for its state."""

    def __init__(self, where: str):
        self.where, self.array = where, None

    def __setstate__(self, state) -> None:
        if self.array is not None or not (isinstance(state, tuple) and len(state) == 5):
            raise _refuse(self.where, "an array state numpy does not write")
        version, shape, dtype, fortran, raw = state
        if isinstance(raw, str):  # a protocol <= 2 pickle from Python 2, decoded as latin1
            raw = raw.encode("latin1")
        if not (
            version == 1
            and isinstance(shape, tuple)
            and all(type(n) is int and n >= 0 for n in shape)
            and isinstance(dtype, _PickledDtype)
            and dtype.dtype is not None
            and type(fortran) in (bool, int)
            and isinstance(raw, bytes)
        ):
            raise _refuse(self.where, "an array that is not a plain integer numpy array")
        if len(raw) != math.prod(shape) * dtype.dtype.itemsize:
            raise DataError(
                f"{self.where}: an array of shape {list(shape)} ({dtype.dtype}) holds "
                f"{len(raw)} bytes; the file is corrupt, replace it"
            )
        order = "F" if fortran else "C"
        self.array = np.frombuffer(raw, dtype.dtype).reshape(shape, order=order)


class _Ndarray:
    """Stands for ``numpy.ndarray`` in a pickle: only ``_reconstruct`` may use it."""


def _reconstruct(where: str, cls, shape, typecode) -> _PickledArray:
    if cls is not _Ndarray:
        raise _refuse(where, f"_reconstruct of {_short(cls)}")
    return _PickledArray(where)


def _dtype(where: str, code, align=False, copy=True) -> _PickledDtype:
    if not (isinstance(code, str) and code in _DTYPE_CODES) or (align, copy) != (False, True):
        raise _refuse(where, f"the dtype {_short(code)}")
    return _PickledDtype(where, code)


def _latin1(where: str, text, encoding) -> bytes:
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise _refuse(where, f"_codecs.encode with the encoding {_short(encoding)}")
    return text.encode("latin1")


class _Unpickler(pickle.Unpickler):
    """Admits only the globals a pickled integer numpy array needs, whichever numpy and protocol
    wrote it, each replaced by a checking stand-in (above)."""

    allowed = {
        ("_codecs", "encode"): _latin1,  # how protocol <= 2 pickles from Python 3 store bytes
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "dtype"): _dtype,
    }

    def __init__(self, file: IO[bytes], where: str):
        super().__init__(file, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) == ("numpy", "ndarray"):
            return _Ndarray
        if (module, name) not in self.allowed:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.where}: a CIFAR file holds only "
                "numpy arrays and builtin containers; the file is not genuine, delete it"
            )
        return functools.partial(self.allowed[module, name], self.where)


def _unpickle(file: IO[bytes], where: str) -> dict:
    """A CIFAR pickle as a dict with str keys (files written by Python 2 or 3); its arrays are
    plain read-only numpy arrays."""
    try:
        d = _Unpickler(file, where).load()
    except DataError:
        raise
    except Exception as e:  # garbage can make pickle fail in many ways; all mean the same here
        raise DataError(
            f"{where} is truncated or corrupt ({type(e).__name__}: {e}); replace it"
        ) from e
    if not isinstance(d, dict):
        raise DataError(
            f"{where} holds a {type(d).__name__}, not the dict of a CIFAR file; replace it"
        )
    return {
        (k.decode("latin1") if isinstance(k, bytes) else k): _value(v, where) for k, v in d.items()
    }


def _value(v, where: str):
    """A top-level value with its array placeholder swapped for the array it built."""
    if isinstance(v, _PickledArray):
        if v.array is None:
            raise _refuse(where, "an array without its state")
        return v.array
    if isinstance(v, _PickledDtype):
        raise _refuse(where, "a bare dtype")
    return v


# The loader reads MNIST's own files: 28 x 28 digits. A header is checked before anything else is
# decompressed, and the count it gives bounds what is read: at most MAX_MNIST_IMAGES images
# (784 MB of uint8), 10x MNIST's 70,000 and above EMNIST's largest split (697,932), so a forged
# header cannot make a small .gz inflate into gigabytes.
MNIST_SIDE = 28
MAX_MNIST_IMAGES = 1_000_000


def _read_mnist(images_path: Path, labels_path: Path):
    with _open_idx(images_path) as fi, _open_idx(labels_path) as fl:
        shape = _idx_header(fi, images_path, 3)
        (count,) = _idx_header(fl, labels_path, 1)
        if shape[1:] != (MNIST_SIDE, MNIST_SIDE):
            raise DataError(
                f"{images_path}: the IDX header gives {shape[1]}x{shape[2]} images, MNIST's are "
                f"{MNIST_SIDE}x{MNIST_SIDE}; replace the file"
            )
        if shape[0] != count or count > MAX_MNIST_IMAGES:
            raise DataError(
                f"{images_path} and {labels_path} do not match: {shape[0]} images, {count} labels "
                f"(at most {MAX_MNIST_IMAGES:,} each); replace them"
            )
        images = _idx_data(fi, images_path, shape)
        labels = _idx_data(fl, labels_path, (count,)).astype(np.int64)
    if labels.max(initial=0) > 9:
        raise DataError(
            f"{images_path} and {labels_path} do not match: {len(images)} images, "
            f"{len(labels)} labels, largest label {labels.max(initial=0)}; replace them"
        )
    return images[:, None], labels, tuple(str(d) for d in range(10))


def _open_idx(path: Path) -> IO[bytes]:
    """The IDX file at ``path``, decompressed as it is read if it ends in .gz."""
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot open {path} ({e}); replace it") from e


def _idx_read(f: IO[bytes], path: Path, n: int) -> bytes:
    try:
        return f.read(n)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {e}); replace it"
        ) from e


def _idx_header(f: IO[bytes], path: Path, ndim: int) -> tuple[int, ...]:
    """IDX: magic 0x0000 0x08 (uint8) ``ndim``, then ``ndim`` big-endian int32 sizes."""
    magic, size = bytes((0, 0, 8, ndim)), 4 + 4 * ndim
    raw = _idx_read(f, path, size)
    if len(raw) < size or raw[:4] != magic:
        raise DataError(
            f"{path}: bad IDX header {raw[:4].hex()}, expected magic {magic.hex()}; "
            "the file is not an MNIST IDX file, replace it"
        )
    shape = tuple(np.frombuffer(raw, ">i4", ndim, offset=4).tolist())
    if min(shape) < 0:
        raise DataError(f"{path}: the IDX header gives a negative size {list(shape)}; replace it")
    return shape


def _idx_data(f: IO[bytes], path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The ``prod(shape)`` bytes after the header, and nothing after them."""
    n = math.prod(shape)
    raw = _idx_read(f, path, n)
    if len(raw) != n or _idx_read(f, path, 1):
        more = "fewer" if len(raw) < n else "more"
        raise DataError(
            f"{path}: {more} data bytes than the IDX shape {list(shape)} gives ({n:,}); "
            "they do not match the IDX shape: the file is truncated or corrupt, replace it"
        )
    return np.frombuffer(raw, np.uint8).reshape(shape)


# ----------------------------------------------------------------------------- downloading


def _download(name: str, split: str, root: Path) -> None:
    """Fetch the missing official files of ``name``/``split`` into ``root``."""
    if name == "mnist":
        raw = root / "MNIST" / "raw"
        wanted = [raw / f"{f}.gz" for f in _mnist_files(split) if not (raw / f).is_file()]
    else:
        wanted = [root / f"{_CIFAR[name].archive}.tar.gz"]
    for dest in wanted:
        if not dest.is_file():
            _fetch([base + dest.name for base in MIRRORS[name]], MD5[name][dest.name], dest)


def _fetch(urls: list[str], md5: str, dest: Path) -> None:
    """Download to a temp file beside ``dest``, check its md5, then move it into place
    atomically."""
    errors = []
    for url in urls:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        except OSError as e:
            raise DataError(
                f"cannot write the download into {dest.parent} ({e}); "
                "pass a writable root or set SNNCONV_DATA"
            ) from e
        try:
            digest = hashlib.md5()
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != md5:
                raise DataError(f"md5 mismatch: got {digest.hexdigest()}, expected {md5}")
            os.replace(tmp, dest)
            return
        except (OSError, DataError) as e:  # URLError is an OSError; try the next mirror
            errors.append(f"{url}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(
        f"could not download {dest.name} into {dest.parent}:\n  "
        + "\n  ".join(errors)
        + f"\nDownload it by hand into {dest.parent}, or point SNNCONV_DATA at a copy."
    )
