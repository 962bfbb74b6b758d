"""The kernel cache loads only what this user built (kernels/build.py), and the loader refuses a
library whose ABI disagrees with cpu.py's ctypes mirrors.

The cache tests build a one-function library (fast) in a temporary XDG_CACHE_HOME; the ABI
tests use the real kernels."""

import ctypes
import hashlib
import os
import stat
import subprocess
import threading
import warnings
from pathlib import Path

import pytest
import torch

from snnconv.exceptions import SnnconvError
from snnconv.kernels import backend, build, cpu

FLAGS = ("-O0", "-shared", "-fPIC")
ANSWER = 'extern "C" int answer(void) { return 42; }\n'
# A library whose constructor runs at dlopen: the marker file shows whether it was ever loaded.
PLANTED = """#include <cstdio>
__attribute__((constructor)) static void planted() {
  if (std::FILE* f = std::fopen(MARKER, "w")) std::fclose(f);
}
extern "C" int answer(void) { return 666; }
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The kernel cache folder under a fresh XDG_CACHE_HOME (not created)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return build.cache_folder()


def sources(tmp_path: Path, text: str = ANSWER, name: str = "src") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "lib.cpp").write_text(text)
    return folder


def entry(src: Path) -> str:
    return build.Recipe(src, build.compiler(), FLAGS).filename()


def planted_library(tmp_path: Path, marker: Path) -> Path:
    """A compiled library that creates ``marker`` when it is loaded."""
    src, out = sources(tmp_path, PLANTED, "planted"), tmp_path / "planted.so"
    flags = [*FLAGS, f'-DMARKER="{marker}"']
    subprocess.run([build.compiler(), *flags, str(src / "lib.cpp"), "-o", str(out)], check=True)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_cache_is_private_and_checksummed_whatever_the_umask(cache, tmp_path):
    src = sources(tmp_path)
    old = os.umask(0)  # the worst umask: everything created world-writable unless we say so
    try:
        assert build.load(src, FLAGS).answer() == 42
    finally:
        os.umask(old)
    assert mode(cache) == mode(cache.parent) == 0o700
    lib = cache / entry(src)
    checksum = build.checksum_path(lib)
    assert mode(lib) & 0o077 == 0 and mode(checksum) & 0o077 == 0
    assert checksum.read_text().strip() == hashlib.sha256(lib.read_bytes()).hexdigest()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp") or p.is_dir()]
    before = os.stat(lib).st_mtime_ns
    assert build.load(src, FLAGS).answer() == 42  # the cached entry, not built again
    assert os.stat(lib).st_mtime_ns == before


@pytest.mark.parametrize("case", ["wrong checksum", "no checksum", "writable by others", "link"])
def test_planted_library_is_never_loaded(cache, tmp_path, case):
    """A library at the entry's path that this user did not build (its checksum does not match,
    is missing, or the file is open to others) is deleted and rebuilt; its constructor never
    runs."""
    src, marker = sources(tmp_path), tmp_path / "constructor-ran"
    planted = planted_library(tmp_path, marker)
    cache.mkdir(parents=True, mode=0o700)
    lib = cache / entry(src)
    data = planted.read_bytes()
    if case == "link":
        lib.symlink_to(planted)
    else:
        lib.write_bytes(data)
    right = hashlib.sha256(data).hexdigest()
    if case != "no checksum":
        build.checksum_path(lib).write_text("0" * 64 if case == "wrong checksum" else right)
    if case == "writable by others":
        os.chmod(lib, 0o666)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert build.load(src, FLAGS).answer() == 42  # rebuilt from the sources
    assert not marker.exists(), "the planted library was loaded"
    messages = " ".join(str(w.message) for w in caught)
    expected = {
        "wrong checksum": "does not match its checksum",
        "no checksum": "",  # an interrupted build's leftover: rebuilt quietly
        "writable by others": "is writable by group or others",
        "link": "is not a regular file",
    }[case]
    assert expected in messages and (expected or not caught)
    ctypes.CDLL(str(planted))  # control: loading it does run its constructor
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "checksum truncated"])
def test_damaged_entry_is_rebuilt_and_works(cache, tmp_path, damage):
    """A cached library cut short (which, mapped, killed every later run with SIGBUS) fails its
    checksum and is rebuilt; so is an entry whose checksum file is damaged."""
    src = sources(tmp_path)
    cache.mkdir(parents=True, mode=0o700)
    lib = build.library(build.Recipe(src, build.compiler(), FLAGS), cache)  # built, not loaded
    size = lib.stat().st_size
    target = build.checksum_path(lib) if damage == "checksum truncated" else lib
    os.truncate(target, 0 if damage == "empty" else target.stat().st_size // 2)
    with pytest.warns(UserWarning, match="does not match its checksum.*rebuilding"):
        assert build.load(src, FLAGS).answer() == 42
    assert lib.stat().st_size == size
    assert build._verify(lib) is None


def test_group_writable_cache_folder_is_made_private(cache, tmp_path):
    """Made 0700; what others could have left in it (here a lock file that is a link elsewhere)
    is replaced, not used."""
    src = sources(tmp_path)
    cache.mkdir(parents=True)
    os.chmod(cache, 0o777)
    (cache / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.warns(UserWarning, match=r"writable by group or others \(mode 0o777\): made priv"):
        assert build.load(src, FLAGS).answer() == 42
    assert mode(cache) == 0o700
    assert not (cache / ".lock").is_symlink() and not (tmp_path / "elsewhere").exists()


def test_cache_folder_of_another_user_is_refused(cache, tmp_path, monkeypatch):
    """Another user's folder at the cache's path is not used: the library is built in a private
    temporary folder (it still works) and nothing is written into that folder."""
    src = sources(tmp_path)
    cache.mkdir(parents=True, mode=0o755)
    if os.geteuid() == 0:
        os.chown(cache, 65534, 65534)  # really give it away
    else:  # the same answer from the owner check, for this folder only
        ino, real = os.stat(cache).st_ino, build._not_yours
        monkeypatch.setattr(
            build,
            "_not_yours",
            lambda st: "is owned by uid 4242, not you" if st.st_ino == ino else real(st),
        )
    with pytest.warns(UserWarning, match="is owned by uid .* not used; building .* temporary"):
        assert build.load(src, FLAGS).answer() == 42
    assert list(cache.iterdir()) == []


def test_one_build_for_concurrent_loads(cache, tmp_path, monkeypatch):
    """Threads (like processes: each opens the lock file) loading one entry at once: one builds,
    the others wait and load its library."""
    src, builds, real = sources(tmp_path), [], build._compile
    monkeypatch.setattr(build, "_compile", lambda *a: builds.append(1) or real(*a))
    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(build.load(src, FLAGS).answer()))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [42] * 4 and len(builds) == 1


def test_compile_error_names_the_source_line_and_key_follows_every_file(tmp_path, cache):
    src = sources(tmp_path, 'extern "C" int answer(void) { return 42 }\n')
    with pytest.raises(SnnconvError, match=r"lib\.cpp:1:.*error"):
        build.load(src, FLAGS)
    recipe = build.Recipe(src, "c++", FLAGS)
    key = recipe.key()
    (src / "shared.h").write_text("// a header the sources include\n")
    assert recipe.key() != key  # headers are part of the key, not only the .cpp files
    assert build.Recipe(src, "c++", (*FLAGS, "-mno-avx512f")).key() != recipe.key()


@pytest.mark.parametrize("cxx", ["/nonexistent/c++", "false"])
def test_no_compiler_falls_back_to_pytorch_with_one_warning(cache, monkeypatch, cxx):
    """No compiler (or one that fails): one warning with the reason, then PyTorch everywhere."""
    monkeypatch.setenv("CXX", cxx)
    monkeypatch.setattr(backend, "_cpp", backend.CppState())
    with pytest.warns(UserWarning, match="compiled kernels unavailable") as caught:
        assert backend.scan_backend(torch.device("cpu")) == "torch"
        assert cpu.kernel() is None and not cpu.scan_available(torch.device("cpu"))
        assert backend.describe()["conv"] == "torch"
    assert len(caught) == 1
    reason = "is not an executable" if cxx.startswith("/") else "failed"
    assert reason in str(caught[0].message)


# ---- the ABI: library and ctypes mirrors agree, or the library is refused ----


def test_library_reports_the_abi_of_its_mirrors():
    kernels = cpu.load()
    cpu.check_abi(kernels.dll)
    assert kernels.dll.snnconv_abi() == cpu.ABI
    for name, mirror in cpu.MIRRORS.items():
        assert kernels.dll.snnconv_sizeof(name.encode(), None) == ctypes.sizeof(mirror) > 0
    assert kernels.dll.snnconv_sizeof(b"fire", b"vth") == ctypes.sizeof(ctypes.c_void_p)
    assert kernels.dll.snnconv_sizeof(b"nothing", None) == -1
    assert kernels.dll.snnconv_offsetof(b"fire", b"nothing") == -1


class SwappedGeometry(ctypes.Structure):  # c and h exchanged: same size, wrong offsets
    _fields_ = [(n, t) for n, t in cpu.ConvGeometry._fields_]
    _fields_[1], _fields_[2] = ("h", ctypes.c_int32), ("c", ctypes.c_int32)


class LongerFire(ctypes.Structure):  # a field the C side does not have
    _fields_ = [*cpu.Fire._fields_, ("extra", ctypes.c_int64)]


class RenamedFire(ctypes.Structure):
    _fields_ = [("spikes" if n == "count" else n, t) for n, t in cpu.Fire._fields_]


class NarrowFire(ctypes.Structure):  # batch an int32: same size and offsets (padding), wrong field
    _fields_ = [(n, ctypes.c_int32 if n == "batch" else t) for n, t in cpu.Fire._fields_]


@pytest.mark.parametrize(
    "struct,mirror,message",
    [
        ("conv_geometry", SwappedGeometry, r"has field h at offset 12, 4 bytes .*, at 8, 4 bytes"),
        (
            "fire",
            LongerFire,
            rf"snnconv_fire is {ctypes.sizeof(cpu.Fire)} bytes in the library, "
            rf"{ctypes.sizeof(LongerFire)} in cpu\.LongerFire",
        ),
        ("fire", RenamedFire, r"has field spikes at offset -1, -1 bytes in the library \(-1: abs"),
        ("fire", NarrowFire, r"has field batch at offset 40, 8 bytes .*, at 40, 4 bytes"),
    ],
)
def test_mirror_that_disagrees_with_the_library_is_refused(monkeypatch, struct, mirror, message):
    monkeypatch.setitem(cpu.MIRRORS, struct, mirror)
    with pytest.raises(SnnconvError, match=message):
        cpu.load()


def test_abi_version_mismatch_is_refused_then_pytorch_runs(monkeypatch):
    monkeypatch.setattr(cpu, "ABI", cpu.ABI + 1)
    with pytest.raises(SnnconvError, match=f"ABI version {cpu.ABI - 1}, cpu.py expects {cpu.ABI}"):
        cpu.load()
    monkeypatch.setattr(backend, "_cpp", backend.CppState())
    with pytest.warns(UserWarning, match="compiled kernels unavailable .*ABI version"):
        assert backend.describe()["scan"] == "torch"
    assert cpu.kernel() is None


# ---- SNNCONV_ISA: the kernels built for a lower x86 instruction set ----

AVX512_FLAGS = "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n"
AVX2_FLAGS = "flags\t\t: fpu sse2 avx avx2 fma\n"


@pytest.mark.parametrize(
    "features,asked,built",
    [
        (AVX512_FLAGS, "native", "avx512"),
        (AVX512_FLAGS, "avx2", "avx2"),
        (AVX512_FLAGS, "sse2", "sse2"),
        (AVX2_FLAGS, "avx2", "avx2"),
        (AVX2_FLAGS, "sse2", "sse2"),
    ],
)
def test_kernel_isa_is_the_lower_of_the_cpu_and_snnconv_isa(monkeypatch, features, asked, built):
    monkeypatch.setattr(build, "cpu_features", lambda: features)
    monkeypatch.setattr(backend, "torch_isa", lambda: "avx512" if "avx512f" in features else "avx2")
    monkeypatch.setenv("SNNCONV_ISA", asked)
    assert backend.kernel_isa() == built
    label = backend.isa_label()
    cpu_isa = "avx512" if "avx512f" in features else "avx2"
    assert label == cpu_isa if built == cpu_isa else label.startswith(f"{built} (emulated on an")


def test_isa_label_says_when_only_pytorch_is_capped(monkeypatch):
    monkeypatch.setattr(build, "cpu_features", lambda: AVX512_FLAGS)
    monkeypatch.setattr(backend, "torch_isa", lambda: "avx2")
    monkeypatch.delenv("SNNCONV_ISA", raising=False)
    assert backend.isa_label() == "avx512 (PyTorch capped at avx2)"


def test_unknown_snnconv_isa_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("SNNCONV_ISA", "avx3")
    monkeypatch.setattr(backend, "_cpp", backend.CppState())
    with pytest.raises(SnnconvError, match=r"SNNCONV_ISA \(environment\) must be one of"):
        backend.cpp()
    with pytest.raises(SnnconvError, match="kernel ISA must be one of"):
        cpu.load("avx3")


def test_x86_isa_on_another_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(build, "x86", lambda: False)
    with pytest.raises(SnnconvError, match="'avx2' is an x86 instruction set"):
        cpu.load("avx2")


@pytest.mark.skipif(not build.x86(), reason="x86 builds only exist on x86")
def test_snnconv_isa_selects_the_build_the_simulator_loads(monkeypatch):
    """SNNCONV_ISA=sse2 makes backend.cpp() load the SSE2 build (its own cache entry), not the
    native one."""
    monkeypatch.setenv("SNNCONV_ISA", "sse2")
    monkeypatch.setattr(backend, "_cpp", backend.CppState())
    loaded = backend.cpp()
    assert loaded is not None and loaded.path == cpu.load("sse2").path != cpu.load().path


def test_sources_compile_side_by_side_and_a_failing_one_is_named(tmp_path, cache):
    """Each .cpp is compiled to its own object and the objects linked: a function of one source
    calls one of another; a broken source among good ones is named, and nothing is cached."""
    calls_half = 'extern "C" int half(void);\nextern "C" int answer(void) { return 2 * half(); }\n'
    src = sources(tmp_path, calls_half)
    (src / "half.cpp").write_text('extern "C" int half(void) { return 21; }\n')
    assert build.load(src, FLAGS).answer() == 42
    (src / "broken.cpp").write_text("int broken( { }\n")
    with pytest.raises(SnnconvError, match=r"broken\.cpp:1:.*error"):
        build.load(src, FLAGS)
    assert not (cache / entry(src)).exists()  # no entry for the broken sources
    assert not [p for p in cache.iterdir() if p.name.startswith(".build-")]  # objects removed
