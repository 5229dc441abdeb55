"""Consistent Overhead Byte Stuffing (Cheshire and Baker, IEEE/ACM ToN 7(2), 1999).

COBS removes every zero byte from a block so that ``0x00`` can delimit frames on a byte stream.
Both directions work block-wise with ``bytes.split`` / slicing (C speed), never byte by byte: a
23-cell MEASUREMENT frame has a few dozen zero runs, so the Python loop runs per zero, not per
byte.

The encoding is canonical (as in the paper and the Wikipedia examples): a final run of exactly
254 non-zero bytes is *not* followed by a redundant ``0x01`` code. The decoder accepts both forms.
"""

from __future__ import annotations

__all__ = ["CobsError", "decode", "encode", "max_encoded_len"]


class CobsError(ValueError):
    """The input is not valid COBS (a code byte points past the end, or it holds a zero)."""


def max_encoded_len(n: int) -> int:
    """Upper bound of the encoded size of n bytes (without the 0x00 delimiter)."""
    return n + 1 + n // 254


# One-byte code for each block length (indexing beats building bytes((n,)) per block).
_CODE = tuple(bytes((i,)) for i in range(256))


def encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode ``data``. The result holds no zero byte; the caller appends the delimiter."""
    data = bytes(data)
    if len(data) < 254:
        # Every protocol frame: no block can reach 254 bytes, so each zero-delimited chunk
        # becomes its length + 1 followed by the chunk (a block without zeros included).
        return b"".join([_CODE[len(chunk) + 1] + chunk for chunk in data.split(b"\x00")])
    out: list[bytes] = []
    chunks = data.split(b"\x00")
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        n = len(chunk)
        pos = 0
        # Full 254-byte blocks (code 0xFF) carry no implied zero.
        while n - pos >= 254:
            out.append(b"\xff")
            out.append(chunk[pos:pos + 254])
            pos += 254
        if pos and pos == n and i == last:
            break  # canonical: no trailing 0x01 after a final full block
        out.append(_CODE[n - pos + 1])
        out.append(chunk[pos:])
    return b"".join(out)


def decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode one COBS block (without its delimiter).

    Raises CobsError if a code byte points past the end or the input holds a zero byte.
    """
    data = bytes(data)
    n = len(data)
    if n == 0:
        return b""
    if b"\x00" in data:
        raise CobsError("zero byte inside a COBS block")
    code = data[0]
    if code == n:  # the whole frame is one block without zeros: no copy loop needed
        return data[1:]
    # Without 0xFF codes (every frame under 254 bytes) the decoded block is the input with each
    # code byte after the first turned into the zero it stands for: patch those in place.
    buf = bytearray(data)
    i = 0
    while True:
        end = i + code
        if end > n:
            raise CobsError(f"code byte {code} at offset {i} points past the end ({n} bytes)")
        if end == n:
            break
        if code == 0xFF:
            return _decode_blocks(data)
        i = end
        code = data[i]
        buf[i] = 0
    del buf[0]
    return bytes(buf)


def _decode_blocks(data: bytes) -> bytes:
    """The general decoder (blocks of 254 bytes without an implied zero)."""
    n = len(data)
    code = data[0]
    out: list[bytes] = []
    i = 0
    while True:
        end = i + code
        if end > n:
            raise CobsError(f"code byte {code} at offset {i} points past the end ({n} bytes)")
        out.append(data[i + 1:end])
        if end == n:
            break
        if code != 0xFF:
            out.append(b"\x00")
        i = end
        code = data[i]
    return b"".join(out)
