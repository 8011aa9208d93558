"""The host protocol (contract 3): framing, commands, error codes and the identify record.

One module read by the RTL generator (`hw/command_processor.py`), the driver (`sw/device.py`) and the
benches, so the three cannot drift apart.

Request: ``A5 | cmd | len (2, LE) | payload | crc (2, BE)``; reply: ``5A | status | len | payload | crc``.
The CRC is CRC-16/CCITT-FALSE over every byte after the start byte, sent high byte first so that the
receiver's CRC register ends on the residue 0. Status 0 is success; any other status is an error code and
the reply's payload is empty.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

VERSION = 2  # 2: the identify record says whether conv layers are kernel-parallel (offsets)
REQUEST_SOF = 0xA5
REPLY_SOF = 0x5A
MAGIC = b"QPSN"

# commands
IDENTIFY, RESET, WRITE, READ, RUN, RESULT, BEGIN_LOAD = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
COMMANDS = {IDENTIFY: "identify", RESET: "reset", WRITE: "write", READ: "read", RUN: "run", RESULT: "result",
            BEGIN_LOAD: "begin-load"}

# memory regions of a layer, as the WRITE / READ address them
REGION_WEIGHTS, REGION_THRESHOLD, REGION_BIAS = 0, 1, 2

# status codes
OK, E_CRC, E_UNKNOWN, E_LENGTH, E_TIMEOUT, E_RANGE, E_MODEL, E_STATE = range(8)
ERRORS = {
    E_CRC: "the frame's CRC did not match",
    E_UNKNOWN: "unknown command",
    E_LENGTH: "payload length wrong for the command or larger than the device's buffer",
    E_TIMEOUT: "the frame was cut short (the device timed out waiting for the rest)",
    E_RANGE: "address out of range (layer, region or word beyond the memory)",
    E_MODEL: "the model does not fit this accelerator (geometry fingerprint differs)",
    E_STATE: "command out of sequence (sample chunk at the wrong offset, or no result yet)",
}

WRITE_HEADER = 5  # layer, region, addr (3 bytes LE)
READ_PAYLOAD = 7  # layer, region, addr (3), count (2)
RUN_HEADER = 2  # pixel offset (2 bytes LE)
RESULT_FIXED = 6  # class (2), cycles (4); then one int32 potential per class


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), the same as amaranth.lib.crc's catalog entry."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def frame(sof: int, code: int, payload: bytes = b"") -> bytes:
    body = bytes([code]) + struct.pack("<H", len(payload)) + payload
    return bytes([sof]) + body + struct.pack(">H", crc16(body))


def request(cmd: int, payload: bytes = b"") -> bytes:
    return frame(REQUEST_SOF, cmd, payload)


def reply(status: int, payload: bytes = b"") -> bytes:
    return frame(REPLY_SOF, status, payload)


def word_bytes(data_bits: int) -> int:
    return (data_bits + 7) // 8


def write_payload(layer: int, region: int, addr: int, words: list[int], nbytes: int) -> bytes:
    head = bytes([layer, region]) + addr.to_bytes(3, "little")
    return head + b"".join(int(w).to_bytes(nbytes, "little") for w in words)


def read_payload(layer: int, region: int, addr: int, count: int) -> bytes:
    return bytes([layer, region]) + addr.to_bytes(3, "little") + struct.pack("<H", count)


@dataclass(frozen=True)
class LayerInfo:
    kind: str
    bits: int
    channels: int
    weight_words: int  # capacity of the weight memory (words)
    neuron_words: int  # capacity of each membrane bank (words)


KINDS = ("conv", "fc", "output")


@dataclass(frozen=True)
class DeviceInfo:
    """What IDENTIFY reports: enough for the driver to check a model against the hardware before loading."""
    version: int
    lanes: int
    timesteps: int
    classes: int
    membrane_bits: int
    word_bytes: int
    max_payload: int
    fingerprint: int
    in_shape: tuple[int, int, int]
    layers: tuple[LayerInfo, ...]
    offsets: int = 1  # kernel offsets a conv layer updates per cycle: 9 means weights are stored offset-major

    HEADER = 22

    def to_bytes(self) -> bytes:
        out = MAGIC + bytes([self.version, self.lanes, len(self.layers), self.timesteps])
        out += struct.pack("<HBBHI", self.classes, self.membrane_bits, self.word_bytes, self.max_payload,
                           self.fingerprint)
        out += bytes(self.in_shape) + bytes([self.offsets])
        for layer in self.layers:
            out += bytes([KINDS.index(layer.kind), layer.bits]) + struct.pack("<H", layer.channels)
            out += layer.weight_words.to_bytes(3, "little") + layer.neuron_words.to_bytes(3, "little")
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> "DeviceInfo":
        if len(data) < cls.HEADER or data[:4] != MAGIC:
            raise ValueError(f"not a qpsnn identify record ({data[:8].hex()}...)")
        version, lanes, n, timesteps = data[4:8]
        classes, membrane_bits, wbytes, max_payload, fingerprint = struct.unpack_from("<HBBHI", data, 8)
        in_shape = tuple(data[18:21])
        offsets = data[21]
        layers = []
        for i in range(n):
            o = cls.HEADER + 10 * i
            if o + 10 > len(data):
                raise ValueError("identify record truncated")
            kind, bits = data[o], data[o + 1]
            (channels,) = struct.unpack_from("<H", data, o + 2)
            layers.append(LayerInfo(KINDS[kind] if kind < len(KINDS) else "?", bits, channels,
                                    int.from_bytes(data[o + 4:o + 7], "little"),
                                    int.from_bytes(data[o + 7:o + 10], "little")))
        return cls(version, lanes, timesteps, classes, membrane_bits, wbytes, max_payload, fingerprint, in_shape,
                   tuple(layers), offsets)


def fingerprint(geo) -> int:
    """CRC-32 of everything the RTL bakes in for a model: a model with the same fingerprint loads and runs
    on the accelerator; another does not fit. ``geo`` is a `qpsnn.sw.geometry.Geometry` or any object with
    the same fields (the driver builds one from the model file without amaranth)."""
    parts = [geo.lanes, geo.timesteps, geo.classes, geo.leak_shift, *geo.in_shape, getattr(geo, "offsets", 1)]
    for lg in geo.layers:
        parts += [KINDS.index(lg.kind), lg.channels, lg.in_channels, lg.height, lg.width, lg.pool, lg.in_height,
                  lg.in_width, lg.bits, lg.weight_shift, lg.membrane_bits, lg.weight_rows]
    return zlib.crc32(struct.pack(f"<{len(parts)}i", *parts))


def sample_bytes(pixels: int, classes: int, max_payload: int) -> int:
    """Bytes on the wire, both ways, to run one sample: its RUN chunks, an empty OK for each but the last, and
    the result reply."""
    chunk = max_payload - RUN_HEADER
    chunks = -(-pixels // chunk)
    frame = len(request(RUN))  # framing around a payload
    return chunks * frame + pixels + chunks * RUN_HEADER + (chunks - 1) * frame + frame + RESULT_FIXED + 4 * classes


def decode_result(payload: bytes, classes: int) -> tuple[int, int, list[int]]:
    """(class, cycles, potentials) from a RUN or RESULT reply."""
    if len(payload) != RESULT_FIXED + 4 * classes:
        raise ValueError(f"result of {len(payload)} bytes, expected {RESULT_FIXED + 4 * classes}")
    cls, cycles = struct.unpack_from("<HI", payload, 0)
    pots = list(struct.unpack_from(f"<{classes}i", payload, RESULT_FIXED))
    return cls, cycles, pots


class ReplyParser:
    """Incremental reply parser for the driver: feed bytes, take complete, CRC-checked replies.

    Bytes before a start byte are skipped; a reply with a bad CRC is reported as ``(None, raw)`` so the
    caller can retry."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def take(self):
        while True:
            start = self.buf.find(bytes([REPLY_SOF]))
            if start < 0:
                self.buf.clear()
                return None
            del self.buf[:start]
            if len(self.buf) < 4:
                return None
            n = struct.unpack_from("<H", self.buf, 2)[0]
            if len(self.buf) < 6 + n:
                return None
            raw = bytes(self.buf[:6 + n])
            body, crc = raw[1:4 + n], struct.unpack(">H", raw[4 + n:6 + n])[0]
            if crc16(body) != crc:
                del self.buf[:1]  # resynchronise on the next start byte
                return (None, raw)
            del self.buf[:6 + n]
            return (raw[1], raw[4:4 + n])


def fingerprint_bytes(value: int) -> bytes:
    return struct.pack("<I", value)
