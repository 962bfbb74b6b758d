"""A multi-block .xz file read with its blocks decompressed in parallel.

An .xz file of one stream is laid out as

    header (12 bytes) | block 1 | ... | block n | index | footer (12 bytes)

and its index lists each block's unpadded size and uncompressed size: block i starts at
12 + the padded sizes (unpadded, rounded up to 4) of the blocks before it and decodes on its own.
``xz -T`` (the default since xz 5.4) writes such files; CIFAR-10 as ``.tar.xz`` here has 8 blocks
of 24 MiB. ``open_parallel(path, workers)`` returns a file object that reads the decompressed
bytes in order while worker threads decode the next blocks (liblzma releases the GIL): on 2
cores the archive is read in about half the time. ``snnconv.io.data`` asks for as many workers
as PyTorch has threads (``torch.get_num_threads()``, the rule the kernels follow too).

Invariant: nothing is trusted that a sequential decoder would check. Each block is decoded as a
one-block stream of its own (the file's stream flags, the block as it is, an index of that one
record), so liblzma checks its header, its integrity check and both its sizes against the file's
index, as ``lzma.open`` would; the file's own header, index and footer CRCs are checked here.
Memory stays bounded: a block is decompressed to at most the size its index gives, at most
MAX_BLOCK_BYTES, a few blocks at a time. Anything else (one block, several streams, stream
padding, a block larger than that, a header or index that does not parse) gets ``None``: the
caller reads the file sequentially, and that reports any corruption.
"""

from __future__ import annotations

import io
import lzma
import os
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

MAGIC = b"\xfd7zXZ\x00"
FOOTER_MAGIC = b"YZ"
MAX_WORKERS = 4  # blocks in flight: each holds its compressed and decompressed bytes
MAX_BLOCK_BYTES = 256 << 20  # a file with a larger block (by its index) is read sequentially


class Block(NamedTuple):
    offset: int  # in the file, of the block header
    unpadded: int  # block header + compressed data + check (the index's "unpadded size")
    size: int  # uncompressed bytes


def _crc(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "little")


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the xz multibyte integer at ``pos`` (7 bits per byte, low
    first, at most 9 bytes, no trailing zero byte)."""
    value = 0
    for i in range(9):
        if pos >= len(buf):
            raise ValueError("index ends inside an integer")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i:
                raise ValueError("integer with a trailing zero byte")
            return value, pos
    raise ValueError("integer longer than 9 bytes")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def index_bytes(records: list[tuple[int, int]]) -> bytes:
    """An xz index of (unpadded size, uncompressed size) records, padded, with its CRC32."""
    body = b"\x00" + _varint(len(records))
    body += b"".join(_varint(u) + _varint(s) for u, s in records)
    body += b"\x00" * (-len(body) % 4)
    return body + _crc(body)


def stream_bytes(flags: bytes, blocks: bytes, records: list[tuple[int, int]]) -> bytes:
    """A whole .xz stream: header with ``flags``, the (padded) ``blocks``, their index, footer."""
    index = index_bytes(records)
    backward = (len(index) // 4 - 1).to_bytes(4, "little")
    header = MAGIC + flags + _crc(flags)
    footer = _crc(backward + flags) + backward + flags + FOOTER_MAGIC
    return header + blocks + index + footer


def blocks(path: str | os.PathLike) -> tuple[bytes, list[Block]] | None:
    """(stream flags, blocks) of an .xz file made of one stream, or None when it is not that
    (or its header, footer or index does not check out)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 32:
                return None
            header = f.read(12)
            f.seek(size - 12)
            footer = f.read(12)
            flags = header[6:8]
            if (
                header[:6] != MAGIC
                or header[8:12] != _crc(flags)
                or footer[10:12] != FOOTER_MAGIC
                or footer[8:10] != flags
                or footer[:4] != _crc(footer[4:10])
            ):
                return None
            index_size = (int.from_bytes(footer[4:8], "little") + 1) * 4
            index_start = size - 12 - index_size
            if index_start < 12:
                return None
            f.seek(index_start)
            index = f.read(index_size)
    except OSError:
        return None
    if len(index) != index_size or index[0] != 0 or index[-4:] != _crc(index[:-4]):
        return None
    try:
        count, pos = _read_varint(index, 1)
        found, offset = [], 12
        for _ in range(count):
            unpadded, pos = _read_varint(index, pos)
            uncompressed, pos = _read_varint(index, pos)
            if unpadded < 5 or uncompressed > MAX_BLOCK_BYTES:  # no block / too large to hold
                return None
            found.append(Block(offset, unpadded, uncompressed))
            offset += -(-unpadded // 4) * 4
    except ValueError:
        return None
    # the blocks fill the space between header and index exactly (one stream, no padding), and
    # what follows the records is the index padding
    if offset != index_start or index[pos:-4] != b"\x00" * (-pos % 4):
        return None
    return flags, found


def decode_block(fd: int, flags: bytes, block: Block) -> bytes:
    """One block's decompressed bytes, read from the open file ``fd`` (liblzma checks it). No
    more than the index's size is ever decompressed: a block holding more is an error, not a
    memory blow-up."""
    padded = -(-block.unpadded // 4) * 4
    raw = os.pread(fd, padded, block.offset)
    if len(raw) != padded:
        raise lzma.LZMAError(f"file ends inside the block at byte {block.offset}")
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    out = decoder.decompress(stream_bytes(flags, raw, [(block.unpadded, block.size)]), block.size)
    extra = b"" if decoder.eof else decoder.decompress(b"", 1)  # then its check, index, footer
    if len(out) != block.size or extra or not decoder.eof:
        raise lzma.LZMAError(
            f"the block at byte {block.offset} does not hold the {block.size} bytes its index says"
        )
    return out


class ParallelReader(io.RawIOBase):
    """The decompressed bytes of a multi-block .xz file, in order, the next blocks decoding in
    ``workers`` threads (at most ``workers + 1`` blocks ahead of the reader)."""

    def __init__(self, path: str | os.PathLike, flags: bytes, found: list[Block], workers: int):
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        self._flags, self._blocks = flags, found
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snnconv-xz")
        self._ahead = workers + 1
        self._pending: deque[Future] = deque()
        self._next = 0  # the next block to submit
        self._buf, self._pos = memoryview(b""), 0
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._ahead and self._next < len(self._blocks):
            block = self._blocks[self._next]
            self._pending.append(self._pool.submit(decode_block, self._fd, self._flags, block))
            self._next += 1

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while self._pos == len(self._buf):
            if not self._pending:
                return 0
            self._buf, self._pos = memoryview(self._pending.popleft().result()), 0
            self._fill()
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._pool.shutdown(wait=True, cancel_futures=True)
            os.close(self._fd)
            self._buf, self._pending = memoryview(b""), deque()
        super().close()


def open_parallel(path: str | os.PathLike, workers: int) -> ParallelReader | None:
    """A reader of ``path``'s decompressed bytes decoding blocks in ``workers`` threads (at most
    MAX_WORKERS), or None when the file is not a single-stream .xz of at least two blocks or
    fewer than 2 workers are asked for (read it sequentially then)."""
    workers = min(workers, MAX_WORKERS)
    if workers < 2 or not hasattr(os, "pread"):  # Windows: read it sequentially
        return None
    found = blocks(Path(path))
    if found is None or len(found[1]) < 2:
        return None
    return ParallelReader(path, found[0], found[1], workers)
