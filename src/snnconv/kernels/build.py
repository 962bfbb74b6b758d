"""Compile a folder of C++ sources into a shared library, cache it, verify it, load it (ctypes).

An entry of the cache is a library and its checksum, named by a key over everything the build
depends on:

    <cache>/<name>_<key>.so, <cache>/<name>_<key>.so.sha256
    key = sha256(each file of the source folder, the compiler, its flags, the CPU's features)

<cache> is $XDG_CACHE_HOME/snnconv/kernels (~/.cache/snnconv/kernels by default). What is loaded
is what this user built, whatever else can write near it:

- the cache folders (snnconv/ and snnconv/kernels/) are directories of this user with mode 0700:
  created so; one of this user's that others could write is made 0700 (with a warning), one of
  another user is refused, and the library is then built in a private temporary folder for this
  process only;
- a library is loaded only if it and its checksum are regular files of this user that nobody
  else may write and the library's sha256 equals the checksum; any other entry (damaged,
  truncated, planted) is deleted and rebuilt, never loaded;
- the library is written to a temporary file, fsynced and renamed into place, and only then its
  checksum, the same way: a crash leaves no entry or a library without a checksum (rebuilt);
- one process at a time verifies or builds an entry (a lock file in the folder): the others
  wait, then load the library it built.

Code -march=native built for one CPU never runs on another (a home folder shared between
machines): the CPU's feature flags are part of the key.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from snnconv.exceptions import KernelError

try:
    import fcntl
except ImportError:  # not POSIX: no lock between processes (their renames stay atomic)
    fcntl = None

COMPILE_TIMEOUT_S = 600
MISSING = "missing"  # _verify's answer for an entry that is not (completely) there


def compiler() -> str:
    """The C++ compiler: $CXX, else c++, g++ or clang++ on the PATH."""
    if os.environ.get("CXX"):
        cxx = os.environ["CXX"]
        if shutil.which(cxx) is None:
            raise KernelError(f"the C++ compiler CXX={cxx!r} is not an executable")
        return cxx
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        raise KernelError("no C++ compiler found (install one, or set CXX)")
    return cxx


def cpu_features() -> str:
    """The CPU's feature flags line of /proc/cpuinfo; empty where it does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def x86() -> bool:
    """The CPU is x86 (where the kernels' ISA can be capped: options.KERNEL_ISAS)."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def cache_folder() -> Path:
    """Where entries are kept (not created here; ``load`` creates and checks it)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "snnconv" / "kernels"


@dataclass(frozen=True)
class Recipe:
    """What a library is built from: every ``*.cpp`` of ``source_dir`` (its headers included
    with -I), each compiled to an object by ``cxx`` with ``flags`` (side by side, as many at once
    as there are CPUs), then linked with ``flags``."""

    source_dir: Path
    cxx: str
    flags: tuple[str, ...]
    name: str = "kernels"

    def sources(self) -> list[Path]:
        return sorted(self.source_dir.glob("*.cpp"))

    def key(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(p for p in self.source_dir.iterdir() if p.is_file()):
            data = path.read_bytes()
            digest.update(f"{path.name}\0{len(data)}\0".encode() + data)
        digest.update("\0".join([self.cxx, *self.flags, cpu_features()]).encode())
        return digest.hexdigest()[:16]

    def filename(self) -> str:
        return f"{self.name}_{self.key()}.so"

    def compile_command(self, source: Path, obj: Path) -> list[str]:
        include = ["-I", str(self.source_dir)]
        return [self.cxx, *self.flags, *include, "-c", str(source), "-o", str(obj)]

    def link_command(self, objects: Sequence[Path], output: Path) -> list[str]:
        return [self.cxx, *self.flags, *map(str, objects), "-o", str(output)]


def checksum_path(library: Path) -> Path:
    return library.with_name(library.name + ".sha256")


def _uid() -> int | None:
    """This user's id; None where the system has none (no ownership to check)."""
    return os.geteuid() if hasattr(os, "geteuid") else None


def _not_yours(st: os.stat_result) -> str | None:
    uid = _uid()
    return None if uid is None or st.st_uid == uid else f"is owned by uid {st.st_uid}, not you"


def _writable_by_others(st: os.stat_result) -> str | None:
    mode = stat.S_IMODE(st.st_mode)
    return f"is writable by group or others (mode {mode:#o})" if mode & 0o022 else None


def _untrusted(st: os.stat_result) -> str | None:
    """Why a file with this status cannot be trusted (another user's, or writable by others)."""
    return _not_yours(st) or _writable_by_others(st)


def _private_folder(path: Path) -> str | None:
    """Create ``path`` with mode 0700 if missing, or make this user's folder 0700; returns why it
    cannot be used (not a directory, or another user's), None when it is private."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if _not_yours(st):
            return f"is a link that {_not_yours(st)}"
        st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if _not_yours(st):
        return _not_yours(st)
    if stat.S_IMODE(st.st_mode) != 0o700:
        if _writable_by_others(st):
            warnings.warn(
                f"snnconv: kernel cache folder {path} {_writable_by_others(st)}: made private "
                "(0700); entries others may have written are rebuilt",
                stacklevel=2,
            )
        os.chmod(path, 0o700)
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(library: Path) -> str | None:
    """None if ``library`` may be loaded, else why not (MISSING: no entry, or an interrupted
    build's library without checksum)."""
    checksum = checksum_path(library)
    for path in (library, checksum):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return MISSING
        if not stat.S_ISREG(st.st_mode):
            return f"{path.name} is not a regular file"
        if _untrusted(st):
            return f"{path.name} {_untrusted(st)}"
    if checksum.read_bytes().strip() != _sha256(library).encode():
        return f"{library.name} does not match its checksum (damaged or truncated)"
    return None


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` (mode 0600), completely or not at all, on disk when this returns."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_folder(path.parent)


def _run(recipe: Recipe, command: list[str]) -> None:
    """Run one compiler command; KernelError with its message (which names the source file and
    line) if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    if done.returncode != 0:
        raise KernelError(
            f"building {recipe.name} from {recipe.source_dir} failed "
            f"({' '.join(command)}):\n{done.stderr.strip()[-3000:]}"
        )


def _compile(recipe: Recipe, library: Path) -> None:
    """Build ``library`` and then its checksum (see the module docstring): the sources compiled
    side by side (the first failure raised, after all have ended), then linked."""
    with tempfile.TemporaryDirectory(prefix=".build-", dir=library.parent) as tmp:
        sources = recipe.sources()
        objects = [Path(tmp) / f"{i}_{source.stem}.o" for i, source in enumerate(sources)]
        builds = sorted(zip(sources, objects), key=lambda b: -b[0].stat().st_size)  # longest first
        workers = max(1, min(len(builds), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            runs = [pool.submit(_run, recipe, recipe.compile_command(*b)) for b in builds]
        for run in runs:
            run.result()
        output = Path(tmp) / library.name
        _run(recipe, recipe.link_command(objects, output))
        data = output.read_bytes()
    _write_durably(library, data)
    _write_durably(checksum_path(library), hashlib.sha256(data).hexdigest().encode() + b"\n")


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One process at a time in ``folder``'s entries. A lock file this user does not own (left
    while the folder was open to others, to be held forever) is replaced."""
    if fcntl is None:
        yield
        return
    path = folder / ".lock"
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or _untrusted(st):
            path.unlink()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def library(recipe: Recipe, folder: Path) -> Path:
    """The verified library for ``recipe`` in the private ``folder``: the cached entry, or one
    built now (a damaged or untrusted entry is deleted and rebuilt, with a warning)."""
    path = folder / recipe.filename()
    with _locked(folder):
        problem = _verify(path)
        if problem is None:
            return path
        if problem != MISSING:
            warnings.warn(
                f"snnconv: cached kernel library in {folder}: {problem}; rebuilding", stacklevel=2
            )
        for stale in (path, checksum_path(path)):
            stale.unlink(missing_ok=True)
        _compile(recipe, path)
        problem = _verify(path)
    if problem is not None:
        raise KernelError(f"the library just built in {folder} fails its check: {problem}")
    return path


def _private_cache() -> Path | None:
    """The cache folder, created or made private; None (with a warning) when it cannot be."""
    folder = cache_folder()
    try:
        folder.parent.parent.mkdir(parents=True, exist_ok=True)
        for path in (folder.parent, folder):
            problem = _private_folder(path)
            if problem is not None:
                break
    except OSError as err:
        path, problem = folder, f"cannot be used ({err})"
    if problem is None:
        return folder
    warnings.warn(
        f"snnconv: kernel cache folder {path} {problem}: not used; building the kernels in a "
        f"private temporary folder for this process (point XDG_CACHE_HOME elsewhere, or remove "
        f"{path}, to cache them again)",
        stacklevel=2,
    )
    return None


def _load_from(recipe: Recipe, folder: Path, optional: Sequence[str]) -> ctypes.CDLL:
    """Load the library of ``recipe`` + ``optional`` flags from ``folder``; if the compiler
    refuses those flags, the one without them."""
    try:
        path = library(replace(recipe, flags=recipe.flags + tuple(optional)), folder)
    except KernelError:
        if not optional:
            raise
        path = library(recipe, folder)
    return ctypes.CDLL(str(path))


def load(
    source_dir: Path, flags: Sequence[str], optional: Sequence[str] = (), name: str = "kernels"
) -> ctypes.CDLL:
    """The library built from ``source_dir`` with ``flags`` (and ``optional`` flags where the
    compiler takes them, e.g. -fopenmp), from the cache or built now; see the module docstring
    for what is checked. Raises KernelError (no compiler, the build failed) or OSError."""
    recipe = Recipe(Path(source_dir), compiler(), tuple(flags), name)
    folder = _private_cache()
    if folder is not None:
        return _load_from(recipe, folder, optional)
    with tempfile.TemporaryDirectory(prefix="snnconv-kernels-") as tmp:
        return _load_from(recipe, Path(tmp), optional)  # loaded before the folder goes
