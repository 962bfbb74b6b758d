import gzip
import hashlib
import io
import os
import pickle
import pickletools
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from snnconv.io import data
from snnconv.io.data import DataError

try:  # numpy >= 2 keeps the array internals in numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # real datasets, read-only
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@pytest.fixture(scope="module")
def cifar10_train():
    return data.load("cifar10", "train", root=DATA)  # ~6 s of xz decompression, once


# ----------------------------------------------------------------------------- fake files


def fake_split(n, seed, shape=(3, 32, 32), n_classes=10):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, n_classes, n)


def write_cifar10_folder(folder, n=3, protocol=4):
    """A cifar-10-batches-py folder in the authors' format; returns {split: (images, labels)}."""
    folder.mkdir(parents=True)
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": list(CIFAR10_CLASSES)}, protocol)
    )
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    splits, seed = {}, 0
    for split, names in files.items():
        parts = [fake_split(n, seed=seed + i) for i in range(len(names))]
        seed += len(names)
        for f, (images, labels) in zip(names, parts):
            batch = {
                "batch_label": f,
                "data": images.reshape(n, 3072),
                "labels": labels.tolist(),
                "filenames": [f"{f}_{i}.png" for i in range(n)],
            }
            (folder / f).write_bytes(pickle.dumps(batch, protocol))
        splits[split] = tuple(np.concatenate(a) for a in zip(*parts))
    return splits


def idx_bytes(array):
    return bytes((0, 0, 8, array.ndim)) + np.array(array.shape, ">i4").tobytes() + array.tobytes()


def write_mnist(raw, split, images, labels, compress):
    raw.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
        path = raw / f"{prefix}-{kind}-ubyte"
        if compress:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            path.write_bytes(idx_bytes(array))


def assert_matches(ds, images, labels):
    assert torch.equal(ds.images, torch.from_numpy(images))
    assert torch.equal(ds.labels, torch.from_numpy(labels).long())


def small_dataset(n):
    """Image i is filled with the value i, so rows can be traced through a split or a shuffle."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return data.Dataset(images, torch.arange(n), CIFAR10_CLASSES, "cifar10", "train")


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow  # ~6 s: decompresses the whole CIFAR-10 archive (8 blocks, 2 at a time)
def test_cifar10_train(cifar10_train):
    ds = cifar10_train
    assert (len(ds), ds.name, ds.split) == (50_000, "cifar10", "train")
    assert ds.images.shape == (50_000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous() and ds.labels.dtype == torch.int64
    assert ds.labels.bincount().tolist() == [5000] * 10
    assert ds.classes == CIFAR10_CLASSES
    means = ds.images.double().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(
        means, torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.double), atol=1e-3
    )


@pytest.mark.slow  # ~5 s: test_batch is the archive's last member
def test_cifar10_test():
    ds = data.load("cifar10", "test", root=DATA)
    assert ds.images.shape == (10_000, 3, 32, 32) and ds.split == "test"
    assert ds.labels.bincount().tolist() == [1000] * 10
    assert ds.classes == CIFAR10_CLASSES


@pytest.mark.slow  # the cifar10_train fixture
def test_normalize_cifar10_train(cifar10_train):
    x = data.normalize(cifar10_train.images, "cifar10")
    assert x.dtype == torch.float32 and x.shape == cifar10_train.images.shape
    # MEAN_STD holds the train statistics rounded to 4 decimals, which moves the normalised mean by
    # < 1e-3 and the std by < 1e-3 relative; 1e-2 leaves room for that and float32 sums while still
    # catching a wrong constant or channel order (R and B means differ by ~0.18 after normalising).
    std, mean = torch.std_mean(x, dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-2)
    assert torch.allclose(std, torch.ones(3), atol=1e-2)


@pytest.mark.slow  # 1.5 s (a subprocess / the CIFAR-100 archive): the quick subset stays < 30 s
def test_cifar100_test_and_cache():
    hits = data._read.cache_info().hits
    ds = data.load("cifar100", "test", root=DATA)
    assert ds.images.shape == (10_000, 3, 32, 32) and data.num_classes("cifar100") == 100
    assert len(ds.classes) == 100 and ds.classes[:3] == ("apple", "aquarium_fish", "baby")
    assert ds.labels.bincount().tolist() == [100] * 100
    expected = ds.images.clone()
    ds.images.zero_()  # a caller scribbling on its tensors must not reach the cache
    again = data.load("cifar100", "test", root=DATA)
    assert data._read.cache_info().hits > hits  # decoded once, not decompressed again
    assert torch.equal(again.images, expected)


@pytest.mark.slow  # reads the CIFAR-100 archive again (test_cifar100_test_and_cache stays quick)
def test_cifar100_train_is_missing_from_archive():
    with pytest.raises(DataError, match=r"train split is missing from .*cifar-100-python\.tar\.xz"):
        data.load("cifar100", "train", root=DATA)


@pytest.mark.parametrize("split,n", [("train", 60_000), ("test", 10_000)])
def test_mnist(split, n):
    ds = data.load("mnist", split, root=DATA)
    assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.unique().tolist() == list(range(10)) and ds.classes == tuple("0123456789")


# ----------------------------------------------------------------------------- other formats


def test_extracted_cifar_folder(tmp_path):
    expected = write_cifar10_folder(tmp_path / "cifar-10-batches-py")
    for split in ("train", "test"):
        ds = data.load("cifar10", split, root=tmp_path)
        assert_matches(ds, *expected[split])
        assert ds.classes == CIFAR10_CLASSES


def test_extracted_folder_preferred_over_archive(tmp_path):
    expected = write_cifar10_folder(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not an archive")
    assert_matches(data.load("cifar10", "test", root=tmp_path), *expected["test"])


def test_python2_style_pickles(tmp_path):
    """The official files: protocol 2, bytes keys and label names, numpy.core.multiarray globals."""
    folder = tmp_path / "cifar-10-batches-py"
    expected = write_cifar10_folder(folder)
    images, labels = expected["test"]
    batch = {b"data": images.reshape(len(images), 3072), b"labels": labels.tolist()}
    raw = pickle.dumps(batch, 2)
    raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in raw
    (folder / "test_batch").write_bytes(raw)
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [s.encode() for s in CIFAR10_CLASSES]}, 2)
    )
    ds = data.load("cifar10", "test", root=tmp_path)
    assert_matches(ds, images, labels)
    assert ds.classes == CIFAR10_CLASSES


def test_cifar_tar_gz_archive(tmp_path):
    expected = write_cifar10_folder(tmp_path / "src" / "cifar-10-batches-py")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    assert_matches(data.load("cifar10", "train", root=tmp_path), *expected["train"])


def test_uncompressed_mnist(tmp_path):
    images, labels = fake_split(5, seed=0, shape=(28, 28))
    write_mnist(tmp_path / "MNIST" / "raw", "test", images, labels.astype(np.uint8), compress=False)
    ds = data.load("mnist", "test", root=tmp_path)
    assert_matches(ds, images[:, None], labels)


# ----------------------------------------------------------------------------- errors


class Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_malicious_pickle_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_folder(folder)
    pwned = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Evil(pwned), "labels": [0]}))
    with pytest.raises(DataError, match=r"refusing to unpickle \w+\.system from .*test_batch"):
        data.load("cifar10", "test", root=tmp_path)
    assert not pwned.exists()


class Forged:
    """Pickles as ``func(*args)`` then BUILD ``state``: any call and state a file can ask for."""

    def __init__(self, func, args, state):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return self.func, self.args, self.state


def forged_labels(dtype_args, dtype_state, n, pointer):
    """An ndarray pickle as numpy writes one, with the dtype's args and BUILD state forged; the
    raw bytes repeat ``pointer`` (8 bytes): for an object dtype numpy would take each as a
    PyObject*. ``pointer`` 0 keeps the old, broken loader alive (NULL reads as None)."""
    dtype = Forged(np.dtype, dtype_args, dtype_state)
    raw = pointer.to_bytes(8, "little") * n
    return Forged(_reconstruct, (np.ndarray, (0,), b"b"), (1, (n,), dtype, False, raw))


OBJECT = np.dtype("O")
FORGED_DTYPES = {  # (dtype args, BUILD state), each a way to make numpy read bytes as pointers
    # a V8 dtype made structured with an object field, flags claiming "no objects"
    "structured-V8": (("V8", False, True), (3, "|", None, ("a",), {"a": (OBJECT, 0)}, 8, 1, 0)),
    # an object dtype whose flags (63: holds references) are cleared
    "O8-cleared-flags": (("O8", False, True), (3, "|", None, None, None, -1, -1, 0)),
    # an allowed integer code with the structured state of the first variant
    "i8-structured-state": (
        ("i8", False, True),
        (3, "|", None, ("a",), {"a": (OBJECT, 0)}, 8, 1, 0),
    ),
    # an allowed code, a state numpy writes, but BUILD twice: a second state is never applied
    "u1-second-build": (("u1", False, True), (3, "|", None, None, None, -1, -1, 0)),
}


def forged_batch(variant, n=2, pointer=0):
    args, state = FORGED_DTYPES[variant]
    labels = forged_labels(args, state, n, pointer)
    batch = pickle.dumps({"data": np.zeros((n, 3072), np.uint8), "labels": labels}, 2)
    if variant == "u1-second-build":  # after the dtype's BUILD: its state again, BUILD again
        first_build = next(p for op, _, p in pickletools.genops(batch) if op.name == "BUILD")
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, 2)
        pickler.fast = True  # no memo entries, so the file's own memo indices stay valid
        pickler.dump(state)
        again = buf.getvalue()[2:-1] + pickle.BUILD  # without PROTO and STOP
        batch = batch[: first_build + 1] + again + batch[first_build + 1 :]
    return batch


@pytest.mark.parametrize("archive", [False, True], ids=["folder", "tar.gz"])
@pytest.mark.parametrize("variant", list(FORGED_DTYPES))
def test_forged_dtype_is_refused(tmp_path, variant, archive):
    """Issue 16, defect 1: a pickle must never build a dtype with state of its choosing."""
    folder = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar10_folder(folder)
    (folder / "test_batch").write_bytes(forged_batch(variant))
    if archive:
        with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
    root = tmp_path if archive else tmp_path / "src"
    with pytest.raises(DataError, match=r"refusing .*dtype.* in .*test_batch") as err:
        data.load("cifar10", "test", root=root)
    assert "not genuine" in str(err.value)


@pytest.mark.slow  # a fresh interpreter importing torch: ~3 s
@pytest.mark.parametrize("variant", ["structured-V8", "O8-cleared-flags"])
def test_forged_pointers_do_not_crash(tmp_path, variant):
    """With non-NULL forged pointers the old loader died with SIGSEGV; now: a DataError."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_folder(folder)
    (folder / "test_batch").write_bytes(forged_batch(variant, n=4, pointer=0x4141414141414141))
    code = (
        "import sys\nfrom snnconv.io import data\n"
        f"try:\n    data.load('cifar10', 'test', root={str(tmp_path)!r})\n"
        "except data.DataError as e:\n    print(e)\n    sys.exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(data.__file__).parents[2])}  # this snnconv
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 3, (r.returncode, r.stderr[-2000:])
    assert "refusing" in r.stdout and "test_batch" in r.stdout


def test_genuine_integer_arrays_still_load(tmp_path):
    """The stand-ins build what numpy would: labels as a big-endian int32 array, Fortran data."""
    folder = tmp_path / "cifar-10-batches-py"
    expected = write_cifar10_folder(folder)
    images, labels = expected["test"]
    flat = np.asfortranarray(images.reshape(len(images), 3072))
    for protocol in (2, 4):
        batch = {"data": flat, "labels": labels.astype(">i4")}
        (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol))
        data._read.cache_clear()
        assert_matches(data.load("cifar10", "test", root=tmp_path), images, labels)


def test_duplicate_tar_member_is_refused(tmp_path):
    """tar x keeps the last copy of a member; rather than pick one, the loader refuses both."""
    folder = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar10_folder(folder)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        tar.add(folder / "batches.meta", arcname="./cifar-10-batches-py/test_batch")
    with pytest.raises(DataError, match=r"holds cifar-10-batches-py/test_batch twice"):
        data.load("cifar10", "test", root=tmp_path)


def test_truncated_archive(tmp_path):
    real = (DATA / "cifar-100-python.tar.xz").read_bytes()
    path = tmp_path / "cifar-100-python.tar.xz"
    path.write_bytes(real[: len(real) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        data.load("cifar100", "test", root=tmp_path)
    assert str(path) in str(err.value)


def test_garbage_archive(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(np.random.default_rng(0).bytes(10_000))
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        data.load("cifar10", "test", root=tmp_path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "batch,problem",
    [
        ({"data": np.zeros((2, 3071), np.uint8), "labels": [0, 1]}, "3072"),
        ({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}, "uint8"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, "labels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}, "labels"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 2**70]}, r"labels.*got 11805"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0.0, 1.5]}, r"labels.*got a float"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, True]}, r"labels.*got a bool"),
        ({"data": np.zeros((2, 3072), np.uint8), "labels": np.ones(2, np.float64)}, "dtype 'f8'"),
        (["not", "a", "dict"], "dict"),
    ],
)
def test_malformed_batch(tmp_path, batch, problem):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_folder(folder)
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=problem) as err:
        data.load("cifar10", "test", root=tmp_path)
    assert "test_batch" in str(err.value)


@pytest.mark.parametrize(
    "corrupt,problem",
    [
        (lambda b: b"\x00\x00\x08\x04" + b[4:], "bad IDX header"),
        (lambda b: b[:-1], "do not match the IDX shape"),
        (lambda b: b[:3], "bad IDX header"),
    ],
)
def test_corrupt_idx(tmp_path, corrupt, problem):
    raw = tmp_path / "MNIST" / "raw"
    images, labels = fake_split(4, seed=1, shape=(28, 28))
    write_mnist(raw, "train", images, labels.astype(np.uint8), compress=True)
    path = raw / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(corrupt(gzip.decompress(path.read_bytes()))))
    with pytest.raises(DataError, match=problem) as err:
        data.load("mnist", "train", root=tmp_path)
    assert str(path) in str(err.value)


class CountingGzip:
    """Wraps gzip.open: records how many decompressed bytes the loader asked for and got."""

    def __init__(self, monkeypatch):
        self.read = {}
        real = gzip.open

        def counting_open(path, mode="rb"):
            f = real(path, mode)
            inner = f.read

            def read(n=-1):
                out = inner(n)
                self.read[Path(path).name] = self.read.get(Path(path).name, 0) + len(out)
                return out

            f.read = read
            return f

        monkeypatch.setattr(gzip, "open", counting_open)


def write_idx_gz(path, header_shape, payload):
    """A .gz IDX file whose header claims ``header_shape`` whatever ``payload`` holds."""
    header = bytes((0, 0, 8, len(header_shape))) + np.array(header_shape, ">i4").tobytes()
    path.write_bytes(gzip.compress(header + payload, compresslevel=1))


BOMB = bytes(20 * 2**20)  # 20 MB of zeros: ~20 kB once compressed


@pytest.mark.parametrize(
    "images_shape,labels_shape,problem",
    [
        ((3, 28, 29), (3,), r"28x29 images, MNIST's are 28x28"),
        ((3, -28, 28), (3,), "negative size"),
        ((-1, 28, 28), (-1,), "negative size"),
        ((3, 28, 28), (4,), "3 images, 4 labels"),
        ((2_000_000, 28, 28), (2_000_000,), "at most 1,000,000 each"),
    ],
)
def test_idx_header_checked_before_decompressing(
    tmp_path, monkeypatch, images_shape, labels_shape, problem
):
    """Issue 16, defect 5: a 20 kB .gz whose header is wrong is refused after reading the headers
    (16 + 8 bytes), not after inflating its 20 MB."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx_gz(raw / "t10k-images-idx3-ubyte.gz", images_shape, BOMB)
    write_idx_gz(raw / "t10k-labels-idx1-ubyte.gz", labels_shape, bytes(4))
    counter = CountingGzip(monkeypatch)
    with pytest.raises(DataError, match=problem):
        data.load("mnist", "test", root=tmp_path)
    assert counter.read["t10k-images-idx3-ubyte.gz"] == 16  # its header only
    assert counter.read.get("t10k-labels-idx1-ubyte.gz", 0) <= 8  # at most its header


def test_idx_decompression_bounded_by_header(tmp_path, monkeypatch):
    """A header claiming 3 images followed by 20 MB: at most 3 x 784 bytes + 1 are inflated."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx_gz(raw / "t10k-images-idx3-ubyte.gz", (3, 28, 28), BOMB)
    write_idx_gz(raw / "t10k-labels-idx1-ubyte.gz", (3,), bytes(3))
    counter = CountingGzip(monkeypatch)
    with pytest.raises(DataError, match=r"more data bytes than the IDX shape \[3, 28, 28\]"):
        data.load("mnist", "test", root=tmp_path)
    assert counter.read["t10k-images-idx3-ubyte.gz"] <= 16 + 3 * 784 + 1


def test_unknown_name_split_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="cifar10, cifar100, mnist"):
        data.load("imagenet", "train", root=tmp_path)
    with pytest.raises(DataError, match="unknown split 'validation'"):
        data.load("mnist", "validation", root=tmp_path)
    with pytest.raises(DataError) as err:
        data.load("cifar10", "test", root=tmp_path)
    for part in (
        str(tmp_path),
        "cifar-10-python.tar.gz",
        "test_batch",
        "download=True",
        "SNNCONV_DATA",
    ):
        assert part in str(err.value)


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SNNCONV_DATA", str(tmp_path / "d"))
    assert data.default_root() == tmp_path / "d"
    monkeypatch.delenv("SNNCONV_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.default_root() == tmp_path / "cache" / "snnconv" / "data"


# ----------------------------------------------------------------------------- download


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_cifar(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    expected = write_cifar10_folder(remote / "cifar-10-batches-py")
    with tarfile.open(remote / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(remote / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    dead = (tmp_path / "dead").as_uri() + "/"  # first mirror fails, the second one serves
    monkeypatch.setitem(data.MIRRORS, "cifar10", [dead, remote.as_uri() + "/"])
    monkeypatch.setitem(
        data.MD5, "cifar10", {"cifar-10-python.tar.gz": md5(remote / "cifar-10-python.tar.gz")}
    )
    root = tmp_path / "root"
    ds = data.load("cifar10", "test", root=root, download=True)
    assert_matches(ds, *expected["test"])
    assert os.listdir(root) == ["cifar-10-python.tar.gz"]  # no temp file left


def test_download_mnist(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    images, labels = fake_split(6, seed=2, shape=(28, 28))
    write_mnist(remote, "test", images, labels.astype(np.uint8), compress=True)
    monkeypatch.setitem(data.MIRRORS, "mnist", [remote.as_uri() + "/"])
    monkeypatch.setitem(data.MD5, "mnist", {p.name: md5(p) for p in remote.iterdir()})
    ds = data.load("mnist", "test", root=tmp_path / "root", download=True)
    assert_matches(ds, images[:, None], labels)
    assert sorted(os.listdir(tmp_path / "root" / "MNIST" / "raw")) == sorted(os.listdir(remote))


def test_download_md5_mismatch(tmp_path, monkeypatch):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "cifar-10-python.tar.gz").write_bytes(
        b"an imposter"
    )  # data.MD5 keeps the official sum
    monkeypatch.setitem(data.MIRRORS, "cifar10", [remote.as_uri() + "/"])
    root = tmp_path / "root"
    with pytest.raises(DataError, match="md5 mismatch") as err:
        data.load("cifar10", "train", root=root, download=True)
    assert "cifar-10-python.tar.gz" in str(err.value)
    assert os.listdir(root) == []


# ----------------------------------------------------------------------------- transforms


def test_augment_deterministic():
    images = torch.from_numpy(fake_split(16, seed=3)[0])
    out = data.augment(images, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape and out.is_contiguous()
    assert torch.equal(out, data.augment(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, data.augment(images, torch.Generator().manual_seed(1)))


def test_augment_flip_only():
    images = torch.from_numpy(fake_split(64, seed=4)[0])
    out = data.augment(images, torch.Generator().manual_seed(0), pad=0)
    same = (out == images).flatten(1).all(1)
    flipped = (out == images.flip(3)).flatten(1).all(1)
    assert (same | flipped).all()
    assert same.any() and flipped.any()  # about half of each
    assert torch.equal(
        data.augment(images, torch.Generator().manual_seed(0), pad=0, flip=False), images
    )  # digits are never mirrored
    assert data.AUGMENT["mnist"]["flip"] is False and data.AUGMENT["cifar10"]["flip"] is True


def test_augment_crops_padded_window():
    pad = 4
    images = torch.from_numpy(fake_split(8, seed=5)[0])
    out = data.augment(images, torch.Generator().manual_seed(0), pad=pad)
    padded = F.pad(images, (pad,) * 4)
    found = []
    for x, y in zip(padded, out):
        windows = {
            (dy, dx): x[:, dy : dy + 32, dx : dx + 32]
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
        }
        matches = [
            (dy, dx, flip)
            for (dy, dx), w in windows.items()
            for flip in (False, True)
            if torch.equal(y, w.flip(2) if flip else w)
        ]
        assert len(matches) == 1  # random noise images: exactly one window fits
        found.append(matches[0])
    assert len(set(found)) > 1  # each image draws its own offsets


def test_normalize_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        data.normalize(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "cifar10")
    with pytest.raises(DataError, match="unknown dataset"):
        data.normalize(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "svhn")


def test_train_val_split():
    ds = small_dataset(100)
    train, val = data.train_val_split(ds, 20, seed=0)
    assert (len(train), len(val), train.split, val.split) == (80, 20, "train", "val")
    assert set(train.labels.tolist()).isdisjoint(val.labels.tolist())
    assert sorted(train.labels.tolist() + val.labels.tolist()) == list(range(100))
    assert torch.equal(val.images[:, 0, 0, 0].long(), val.labels)  # images travel with their labels
    assert torch.equal(data.train_val_split(ds, 20, seed=0)[1].labels, val.labels)
    assert not torch.equal(data.train_val_split(ds, 20, seed=1)[1].labels, val.labels)


def test_batches():
    ds = small_dataset(10)

    def epoch(seed):
        return list(
            data.batches(ds, 3, shuffle=True, generator=torch.Generator().manual_seed(seed))
        )

    order = torch.cat([labels for _, labels in epoch(0)])
    assert sorted(order.tolist()) == list(range(10))
    assert all(torch.equal(images[:, 0, 0, 0].long(), labels) for images, labels in epoch(0))
    assert torch.equal(order, torch.cat([labels for _, labels in epoch(0)]))
    assert not torch.equal(order, torch.cat([labels for _, labels in epoch(1)]))
    assert [len(y) for _, y in data.batches(ds, 3)] == [3, 3, 3, 1]
    assert [len(y) for _, y in data.batches(ds, 3, drop_last=True)] == [3, 3, 3]
    assert torch.cat([y for _, y in data.batches(ds, 4)]).tolist() == list(range(10))
    with pytest.raises(ValueError, match="Generator"):
        next(data.batches(ds, 3, shuffle=True))
