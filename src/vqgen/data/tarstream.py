"""Reading the members of one tar shard without losing any silently.

``tarfile`` ends an archive at the first header it cannot parse (a failed checksum, a zeroed
block) and at a cut-off file without an error, so a damaged header mid-shard makes every later
sample vanish. :func:`tar_members` reads with ``tarfile`` in stream mode and, where ``tarfile``
stops, looks at what follows: zero blocks to the end are a proper end; anything else is damage.
It then skips to the next block that is a valid header and reads on from there.

Damage is reported on the samples it touches, as marker members named ``KEY.__damaged__``
(``data`` is ``reason<TAB>detail``) that ``webdataset``'s ``group_by_keys`` files under the
sample ``KEY``: the samples either side of unreadable bytes (either may be missing a file) and
the last sample of a cut-off shard. Damage that touches no sample raises :class:`ShardError`.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import re
import tarfile
from collections.abc import Iterator

from webdataset.tariterators import base_plus_ext

MARKER = "__damaged__"  # suffix of the marker member that flags a damaged sample
BLOCK = tarfile.BLOCKSIZE
_META_NAME = re.compile(r"__[^/]*__($|/)")  # webdataset's reserved names, skipped as it does
_COMPRESSED = ((b"\x1f\x8b", gzip.GzipFile), (b"BZh", bz2.BZ2File), (b"\xfd7zXZ\x00", lzma.LZMAFile))


class ShardError(Exception):
    """The shard yields nothing usable (not a tar, empty, unreadable); ``args[0]`` says why."""


class _Rewindable:
    """A forward-only byte stream that keeps the bytes it handed out last, so a reader that read
    ahead (``tarfile`` reads a 10 KiB record at a time) can go back to where it stopped."""

    def __init__(self, raw, keep: int = 8 * tarfile.RECORDSIZE):
        self.raw, self.keep = raw, keep
        self.pos = 0  # bytes handed out so far
        self.history = bytearray()  # the bytes just before pos
        self.pending = b""  # bytes given back, handed out again before raw's

    def read(self, n: int = -1) -> bytes:
        if self.pending:
            n = len(self.pending) if n is None or n < 0 else n
            data, self.pending = self.pending[:n], self.pending[n:]
        else:
            data = self.raw.read(n)
        self.pos += len(data)
        self.history += data
        if len(self.history) > 2 * self.keep:
            del self.history[:-self.keep]
        return data

    def rewind(self, pos: int) -> None:
        """Make byte ``pos`` the next one read (at most ``keep`` bytes back)."""
        back = self.pos - pos
        if back < 0 or back > len(self.history):
            raise ShardError(f"cannot go back to offset {pos} from {self.pos}")
        if back:
            self.pending = bytes(self.history[-back:]) + self.pending
            del self.history[-back:]
        self.pos = pos

    def read_exact(self, n: int) -> bytes:
        """``n`` bytes, fewer only at the end of the stream."""
        parts, got = [], 0
        while got < n:
            data = self.read(n - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)


def _decompressed(stream) -> _Rewindable:
    """The stream as a rewindable one, decompressed when it starts with a gzip, bzip2 or xz
    signature (as ``tarfile``'s ``r|*`` mode does); offsets are then in the uncompressed tar."""
    src = _Rewindable(stream)
    head = src.read_exact(6)
    src.rewind(0)
    for magic, opener in _COMPRESSED:
        if head.startswith(magic):
            return _Rewindable(opener(fileobj=src) if opener is gzip.GzipFile else opener(src))
    return src


def _next_header(src: _Rewindable) -> tuple[str, int, int]:
    """Scan 512-byte blocks from ``src.pos`` for the next valid tar header and leave ``src`` on it.

    Returns ``(outcome, damaged_from, damaged_bytes)``: outcome ``"header"``, ``"end"`` (zero
    blocks, then nothing) or ``"cut"`` (the stream ends with no end-of-archive block); damaged
    bytes are the non-zero blocks skipped that are not headers (``damaged_from``: the first).
    """
    damaged_from, damaged, saw_zero_block = -1, 0, False
    while True:
        block = src.read_exact(BLOCK)
        if len(block) < BLOCK:  # the stream ends: properly only after a zero block
            end = saw_zero_block and not damaged and not block.strip(b"\0")
            return ("end" if end else "cut"), damaged_from, damaged
        if not block.strip(b"\0"):
            saw_zero_block = True
            continue
        try:
            tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError:
            damaged_from = src.pos - BLOCK if damaged_from < 0 else damaged_from
            damaged += BLOCK
            saw_zero_block = False  # a zero block before damage is not the archive's end
            continue
        src.rewind(src.pos - BLOCK)
        return "header", damaged_from, damaged


def tar_members(stream, url: str) -> Iterator[dict]:
    """``{"fname", "data", "__url__"}`` for each regular member of one tar shard, in order, with
    ``KEY.__damaged__`` markers on the samples that damage touches (see the module docstring).

    Raises :class:`ShardError` when damage touches no sample (nothing readable at all)."""
    src = _decompressed(stream)
    key, key_marked = None, False  # the sample being read, and whether it carries a marker
    pending = None  # (reason, detail) for the first sample after unreadable bytes
    members = 0

    def marker(reason: str, detail: str) -> dict:
        nonlocal key_marked
        key_marked = True
        return {"fname": f"{key}.{MARKER}", "data": f"{reason}\t{detail}".encode(), "__url__": url}

    while True:
        base, tar, cut_member = src.pos, None, None
        try:
            tar = tarfile.open(fileobj=src, mode="r|")
            for info in tar:
                if not info.isreg() or _META_NAME.match(info.name) or info.name.endswith("." + MARKER):
                    continue
                prefix = base_plus_ext(info.name)[0]
                if prefix is not None and prefix != key:
                    key, key_marked = prefix, False
                try:
                    data = tar.extractfile(info).read()
                except tarfile.ReadError:
                    cut_member = info.name
                    break
                tar.members = []  # tarfile keeps every header read; a shard can hold millions
                members += 1
                yield {"fname": info.name, "data": data, "__url__": url}
                if pending is not None and prefix is not None and not key_marked:
                    yield marker(*pending)
                pending = None
        except tarfile.ReadError:
            pass  # a header tarfile cannot read: looked at below
        except (OSError, EOFError, lzma.LZMAError) as e:
            if key is None:
                raise ShardError(f"cannot read: {type(e).__name__}: {e}") from None
            if not key_marked:
                yield marker("truncated_shard", f"reading stopped at offset {src.pos}: {type(e).__name__}: {e}")
            return
        if cut_member is not None:
            if key is None:
                raise ShardError(f"the shard ends inside its first member {cut_member}")
            if not key_marked:
                yield marker("truncated_shard", f"the shard ends inside {cut_member}")
            return
        stop = base + tar.offset if tar is not None else base
        try:
            src.rewind(min(stop, src.pos))
            outcome, damaged_from, damaged = _next_header(src)
        except (OSError, EOFError, lzma.LZMAError, ShardError) as e:
            outcome, damaged_from, damaged = "cut", -1, 0
            if key is None:
                raise ShardError(f"cannot read: {type(e).__name__}: {e}") from None
        if damaged:
            detail = f"{damaged} bytes from offset {damaged_from} are not a tar member"
            if outcome == "header":
                detail += f"; read on from offset {src.pos}"
            if key is not None and not key_marked:
                yield marker("bad_tar_header", detail)
            pending = ("bad_tar_header", detail)
        if outcome == "header":
            continue
        if outcome == "cut" and not damaged and key is not None and not key_marked:
            yield marker("truncated_shard", f"the shard ends at offset {src.pos} with no end-of-archive block")
        if members == 0 and (outcome != "end" or damaged):
            raise ShardError("no readable tar member" + (f" ({pending[1]})" if pending else ""))
        return
