"""snnconv.io.xz: multi-block .xz files decoded in parallel, byte for byte what liblzma's
sequential decoder gives, and every corruption it would catch still caught."""

import io
import lzma
import os
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from snnconv.io import data, xz
from snnconv.io.data import DataError
from test_data import write_cifar10_folder

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # real datasets, read-only


def multi_block(chunks: list[bytes], check: int = lzma.CHECK_CRC64) -> bytes:
    """An .xz stream with one block per chunk (as ``xz -T`` writes): each chunk compressed as a
    one-block stream, the blocks taken out and put under one index."""
    flags, blocks, records = None, [], []
    for chunk in chunks:
        s = lzma.compress(chunk, format=lzma.FORMAT_XZ, check=check)
        flags = s[6:8]
        index_start = len(s) - 12 - (int.from_bytes(s[-8:-4], "little") + 1) * 4
        block = s[12:index_start]
        # the one record of that stream's index: unpadded size, uncompressed size
        unpadded, pos = xz._read_varint(s, index_start + 2)
        size, _ = xz._read_varint(s, pos)
        assert size == len(chunk) and -(-unpadded // 4) * 4 == len(block)
        blocks.append(block)
        records.append((unpadded, size))
    return xz.stream_bytes(flags, b"".join(blocks), records)


def chunks_of(payload: bytes, size: int) -> list[bytes]:
    return [payload[i : i + size] for i in range(0, len(payload), size)]


def read_all(reader, size: int, limit: int | None = None) -> bytes:
    """Everything (or the first ``limit`` bytes), ``size`` bytes per read call."""
    out = bytearray()
    while (limit is None or len(out) < limit) and (block := reader.read(size)):
        out += block
    return bytes(out[:limit])


PAYLOAD = np.random.default_rng(0).bytes(50_000) + b"snnconv " * 20_000  # random, then repetitive


@pytest.mark.parametrize(
    "check,block_size",
    [(c, 4096) for c in (lzma.CHECK_NONE, lzma.CHECK_CRC32, lzma.CHECK_CRC64, lzma.CHECK_SHA256)]
    + [(lzma.CHECK_CRC64, 1), (lzma.CHECK_CRC64, 70_000)],
)
def test_parallel_read_equals_payload(tmp_path, check, block_size):
    chunks = chunks_of(PAYLOAD[:300] if block_size == 1 else PAYLOAD, block_size)
    path = tmp_path / "f.xz"
    path.write_bytes(multi_block(chunks, check))
    assert lzma.decompress(path.read_bytes()) == b"".join(chunks)  # the file is valid .xz
    flags, found = xz.blocks(path)
    assert [b.size for b in found] == [len(c) for c in chunks]
    for read_size in (1 << 20, 7):  # one read per block, and reads across block ends
        with xz.open_parallel(path, workers=3) as reader:
            assert read_all(reader, read_size) == b"".join(chunks)
            assert reader.read(10) == b""  # stays at the end


def test_files_it_leaves_to_the_sequential_reader(tmp_path):
    one = tmp_path / "one.xz"  # a single block: nothing to do in parallel
    one.write_bytes(lzma.compress(PAYLOAD))
    two_streams = tmp_path / "two.xz"  # concatenated streams: lzma.open reads those
    two_streams.write_bytes(multi_block(chunks_of(PAYLOAD, 40_000)) * 2)
    padded = tmp_path / "padded.xz"  # stream padding after the footer
    padded.write_bytes(multi_block(chunks_of(PAYLOAD, 40_000)) + b"\x00" * 8)
    tiny, missing = tmp_path / "tiny.xz", tmp_path / "missing.xz"
    tiny.write_bytes(b"\xfd7zXZ\x00")
    for path in (one, two_streams, padded, tiny, missing):
        assert xz.open_parallel(path, 2) is None, path.name
    for path in (one, two_streams):  # and those read them correctly
        assert lzma.decompress(path.read_bytes()).startswith(PAYLOAD)
    fine = tmp_path / "fine.xz"
    fine.write_bytes(multi_block(chunks_of(PAYLOAD, 40_000)))
    assert xz.open_parallel(fine, workers=1) is None  # one worker: no gain


def corrupted(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x40]) + raw[at + 1 :]


def test_corrupt_block_is_caught(tmp_path):
    raw = multi_block(chunks_of(PAYLOAD, 40_000))
    path = tmp_path / "f.xz"
    _, found = xz.blocks(_write(path, raw))
    second = found[1]
    for at in (
        second.offset + 2,
        second.offset + second.unpadded // 2,
        second.offset + second.unpadded - 1,
    ):  # its header, its data, its check
        _write(path, corrupted(raw, at))
        with xz.open_parallel(path, 2) as reader, pytest.raises(lzma.LZMAError):
            read_all(reader, 1 << 20)
        with pytest.raises(lzma.LZMAError):  # as the sequential decoder says
            lzma.decompress(path.read_bytes())


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def test_index_that_lies_about_a_size_is_caught(tmp_path):
    """A forged index with valid CRCs: the block's own decoding checks its sizes against it."""
    chunks = chunks_of(PAYLOAD, 40_000)
    raw = multi_block(chunks)
    flags, found = xz.blocks(_write(tmp_path / "f.xz", raw))
    blocks = raw[12 : found[-1].offset + -(-found[-1].unpadded // 4) * 4]
    records = [(b.unpadded, b.size) for b in found]
    for lie in (16, -16, -40_000 + 1):  # one block claims more bytes, fewer, almost none
        forged_records = list(records)
        forged_records[1] = (records[1][0], records[1][1] + lie)
        forged = _write(tmp_path / "forged.xz", xz.stream_bytes(flags, blocks, forged_records))
        assert xz.blocks(forged) is not None  # the index itself checks out
        with xz.open_parallel(forged, 2) as reader, pytest.raises(lzma.LZMAError):
            read_all(reader, 1 << 20)
        with pytest.raises(lzma.LZMAError):
            lzma.decompress(forged.read_bytes())


def test_a_block_is_never_decompressed_past_its_index_size(tmp_path):
    """A block holding far more than its index says (a decompression bomb) fails after at most
    the claimed size plus one byte, as the decoder is asked for no more."""
    bomb = multi_block([b"a", b"\0" * 5_000_000, b"b"])
    flags, found = xz.blocks(_write(tmp_path / "bomb.xz", bomb))
    blocks = bomb[12 : found[-1].offset + -(-found[-1].unpadded // 4) * 4]
    records = [(b.unpadded, b.size) for b in found]
    records[1] = (records[1][0], 100)
    forged = _write(tmp_path / "forged.xz", xz.stream_bytes(flags, blocks, records))
    _, lied = xz.blocks(forged)
    asked = []
    real = lzma.LZMADecompressor

    class Counting:  # the decoder as decode_block uses it, recording how much it asked for
        def __init__(self, **kw):
            self.d = real(**kw)

        def decompress(self, data, max_length=-1):
            asked.append(max_length)
            return self.d.decompress(data, max_length)

        @property
        def eof(self):
            return self.d.eof

    fd = os.open(forged, os.O_RDONLY)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(lzma, "LZMADecompressor", Counting)
            with pytest.raises(lzma.LZMAError, match="does not hold the 100 bytes"):
                xz.decode_block(fd, flags, lied[1])
    finally:
        os.close(fd)
    assert asked == [100, 1]


def test_blocks_larger_than_the_bound_are_read_sequentially(tmp_path, monkeypatch):
    path = _write(tmp_path / "f.xz", multi_block(chunks_of(PAYLOAD, 40_000)))
    assert xz.open_parallel(path, 2) is not None
    monkeypatch.setattr(xz, "MAX_BLOCK_BYTES", 39_999)
    assert xz.open_parallel(path, 2) is None


def test_bad_index_crc_falls_back_and_is_caught(tmp_path):
    raw = multi_block(chunks_of(PAYLOAD, 40_000))
    path = _write(tmp_path / "f.xz", corrupted(raw, len(raw) - 14))  # the index's CRC32
    assert xz.blocks(path) is None and xz.open_parallel(path, 2) is None
    with pytest.raises(lzma.LZMAError):
        lzma.decompress(path.read_bytes())


def test_truncated_file_falls_back(tmp_path):
    raw = multi_block(chunks_of(PAYLOAD, 40_000))
    path = _write(tmp_path / "f.xz", raw[: len(raw) // 2])
    assert xz.open_parallel(path, 2) is None


def test_close_before_the_end_stops_the_workers(tmp_path):
    path = _write(tmp_path / "f.xz", multi_block(chunks_of(PAYLOAD, 4096)))
    before = threading.active_count()
    reader = xz.open_parallel(path, workers=2)
    assert len(reader.read(100)) == 100
    reader.close()
    assert reader.closed and threading.active_count() == before
    with pytest.raises(OSError):
        os.fstat(reader._fd)  # its file is closed


def cifar_tar(tmp_path: Path) -> bytes:
    folder = tmp_path / "src" / "cifar-10-batches-py"
    write_cifar10_folder(folder, n=8)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return buf.getvalue()


def test_loader_reads_multi_block_archives_in_parallel(tmp_path, monkeypatch):
    tar = cifar_tar(tmp_path)
    root_seq, root_par = tmp_path / "seq", tmp_path / "par"
    root_seq.mkdir(), root_par.mkdir()
    _write(root_seq / "cifar-10-python.tar.xz", lzma.compress(tar))
    _write(root_par / "cifar-10-python.tar.xz", multi_block(chunks_of(tar, 20_000)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # data.load's workers
    decoded = []
    real_decode = xz.decode_block
    monkeypatch.setattr(xz, "decode_block", lambda *a: decoded.append(a[2]) or real_decode(*a))
    for split in ("train", "test"):
        seq = data.load("cifar10", split, root=root_seq)
        assert not decoded  # one block: read sequentially
        par = data.load("cifar10", split, root=root_par)
        assert len(decoded) == -(-len(tar) // 20_000)  # every block, in the workers
        assert (seq.images == par.images).all() and (seq.labels == par.labels).all()
        decoded.clear()


def test_loader_reports_a_corrupt_multi_block_archive(tmp_path):
    tar = cifar_tar(tmp_path)
    raw = multi_block(chunks_of(tar, 20_000))
    path = _write(tmp_path / "cifar-10-python.tar.xz", raw)
    _, found = xz.blocks(path)
    _write(path, corrupted(raw, found[2].offset + 100))
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        data.load("cifar10", "test", root=tmp_path)
    assert str(path) in str(err.value)


@pytest.mark.slow  # ~8 s: three 24 MiB blocks of the real archive, both ways
def test_real_archive_blocks_match_sequential_decoding():
    path = DATA / "cifar-10-python.tar.xz"
    _, found = xz.blocks(path)
    assert len(found) >= 4  # what makes the parallel reader worth having here
    n = sum(b.size for b in found[:3]) + 1000  # three blocks and into the fourth
    with xz.open_parallel(path, workers=2) as par, lzma.open(path) as seq:
        assert read_all(par, 1 << 20, n) == seq.read(n)
