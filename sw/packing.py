"""Pack b-bit weight codes into the words the accelerator's weight memory reads.

A row of codes (one event source's fan-out) is cut into groups of P (the lanes); each group is one word
of P*b bits, lane j in bits [j*b, (j+1)*b), unused lanes zero. A word is stored as ceil(P*b/8) bytes,
little-endian, and words follow row by row: word address = row * ceil(cols / P) + group.
"""
from __future__ import annotations

import numpy as np

MAX_LANES = 64  # the widest word (P codes) the RTL is generated and tested with; P is a power of two


def lanes_problem(lanes) -> str | None:
    """Why ``lanes`` cannot be built, or None."""
    if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= MAX_LANES or lanes & (lanes - 1):
        return f"lanes must be a power of two in 1..{MAX_LANES}, not {lanes!r}"
    return None


def word_bytes(bits: int, lanes: int) -> int:
    return (bits * lanes + 7) // 8


def words_per_row(cols: int, lanes: int) -> int:
    return (cols + lanes - 1) // lanes


def packed_size(rows: int, cols: int, bits: int, lanes: int) -> int:
    return rows * words_per_row(cols, lanes) * word_bytes(bits, lanes)


def pack_rows(codes: np.ndarray, bits: int, lanes: int) -> bytes:
    """codes: integers in [0, 2^bits) shaped [rows, cols]."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.ndim != 2:
        raise ValueError("codes must be [rows, cols]")
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << bits)):
        raise ValueError(f"codes outside [0, {(1 << bits) - 1}] for {bits}-bit packing")
    rows, cols = codes.shape
    groups = words_per_row(cols, lanes)
    padded = np.zeros((rows, groups * lanes), dtype=np.int64)
    padded[:, :cols] = codes
    words = padded.reshape(rows * groups, lanes)
    bit_planes = ((words[..., None] >> np.arange(bits)) & 1).astype(np.uint8)  # [words, lanes, bits]
    flat = bit_planes.reshape(rows * groups, lanes * bits)
    nbytes = word_bytes(bits, lanes)
    padded_bits = np.zeros((rows * groups, nbytes * 8), dtype=np.uint8)
    padded_bits[:, :lanes * bits] = flat
    return np.packbits(padded_bits, axis=1, bitorder="little").tobytes()


def unpack_rows(data: bytes, rows: int, cols: int, bits: int, lanes: int) -> np.ndarray:
    expected = packed_size(rows, cols, bits, lanes)
    if len(data) != expected:
        raise ValueError(f"packed weights have {len(data)} bytes, {rows}x{cols} at {bits} bits and {lanes} lanes need {expected}")
    groups = words_per_row(cols, lanes)
    nbytes = word_bytes(bits, lanes)
    raw = np.frombuffer(data, dtype=np.uint8).reshape(rows * groups, nbytes)
    bit_stream = np.unpackbits(raw, axis=1, bitorder="little")[:, :lanes * bits].astype(np.int64)
    words = (bit_stream.reshape(rows * groups, lanes, bits) << np.arange(bits)).sum(-1)
    return words.reshape(rows, groups * lanes)[:, :cols]


def pack_words(codes: np.ndarray, bits: int, lanes: int) -> list[int]:
    """The same layout as integers, one per memory word (what a weight-port writer sends)."""
    data = pack_rows(codes, bits, lanes)
    nbytes = word_bytes(bits, lanes)
    return [int.from_bytes(data[i:i + nbytes], "little") for i in range(0, len(data), nbytes)]
