"""The host protocol (contract 3): framing, commands, regions, error codes, header and result layouts, the
identify record, and the register window with its simulated-BAR codec.

One module, free of amaranth, read by the RTL generator (`hw/frame_receiver.py` and its siblings build their
`data` layouts from the field tables here), the driver (`sw/device.py`, `sw/transport.py`) and the benches,
so none of them can drift from the others.

Request: ``A5 | cmd | tag | len (2, LE) | payload | crc (2, BE)``; reply: ``5A | status | tag | len | payload |
crc``. The reply echoes the request's tag, so a driver can tell its reply from a stale one (a reply to a
request whose client went away). The CRC is CRC-16/CCITT-FALSE over every byte after the start byte, sent
high byte first so that the receiver's CRC register ends on the residue 0. Status 0 is success; any other
status is an error code and the reply's payload is empty.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

VERSION = 3  # 3: a tag byte in every frame, echoed by its reply; E_BUSY. 2: kernel-parallel conv (offsets)
REQUEST_SOF = 0xA5
REPLY_SOF = 0x5A
MAGIC = b"QPSN"


class Command(IntEnum):
    IDENTIFY = 0x01
    RESET = 0x02
    WRITE = 0x03
    READ = 0x04
    RUN = 0x05
    RESULT = 0x06
    BEGIN_LOAD = 0x07


class Region(IntEnum):
    """A layer's memories, as WRITE and READ address them (amaranth takes the enum as a shape)."""
    WEIGHTS = 0
    THRESHOLD = 1
    BIAS = 2


class Status(IntEnum):
    OK = 0
    E_CRC = 1
    E_UNKNOWN = 2
    E_LENGTH = 3
    E_TIMEOUT = 4
    E_RANGE = 5
    E_MODEL = 6
    E_STATE = 7
    E_BUSY = 8  # not from the RTL: a link (serve-sim) already serving another client says so and hangs up


IDENTIFY, RESET, WRITE, READ, RUN, RESULT, BEGIN_LOAD = Command
COMMANDS = {c: c.name.lower().replace("_", "-") for c in Command}
REGION_WEIGHTS, REGION_THRESHOLD, REGION_BIAS = Region
OK, E_CRC, E_UNKNOWN, E_LENGTH, E_TIMEOUT, E_RANGE, E_MODEL, E_STATE, E_BUSY = Status
ERRORS = {
    E_CRC: "the frame's CRC did not match",
    E_UNKNOWN: "unknown command",
    E_LENGTH: "payload length wrong for the command or larger than the device's buffer",
    E_TIMEOUT: "the frame was cut short (the device timed out waiting for the rest)",
    E_RANGE: "address out of range (layer, region or word beyond the memory)",
    E_MODEL: "the model does not fit this accelerator (geometry fingerprint differs)",
    E_STATE: "command out of sequence (sample chunk at the wrong offset, or no result yet)",
    E_BUSY: "busy: one client at a time (another client is connected)",
}

# Field tables, (name, bits), little-endian on the wire in this order. The RTL builds data.StructLayouts from
# them (`hw/records.py`); the driver packs with the helpers below.
FRAME_HEADER = (("code", 8), ("tag", 8), ("length", 16))  # after the start byte: cmd or status, tag, length
WRITE_FIELDS = (("layer", 8), ("region", 8), ("addr", 24))  # then whole words
READ_FIELDS = WRITE_FIELDS + (("count", 16),)
RUN_FIELDS = (("offset", 16),)  # then raw pixels
BEGIN_LOAD_FIELDS = (("fingerprint", 32),)
RESULT_FIELDS = (("label", 16), ("cycles", 32))  # then one int32 potential per class
POTENTIAL_BITS = 32


def field_bytes(fields) -> int:
    return sum(bits for _, bits in fields) // 8


def pack_fields(fields, **values) -> bytes:
    return b"".join(int(values[name]).to_bytes(bits // 8, "little") for name, bits in fields)


FRAME_BYTES = 1 + field_bytes(FRAME_HEADER) + 2  # start, header, CRC around every payload
WRITE_HEADER = field_bytes(WRITE_FIELDS)
READ_PAYLOAD = field_bytes(READ_FIELDS)
RUN_HEADER = field_bytes(RUN_FIELDS)
BEGIN_LOAD_PAYLOAD = field_bytes(BEGIN_LOAD_FIELDS)
RESULT_FIXED = field_bytes(RESULT_FIELDS)

# The register window (`hw/mmio_host.py`): the same byte stream through two FIFOs behind 32-bit registers.


class Reg(IntEnum):
    ID = 0x0  # R: MMIO_ID_VALUE
    STATUS = 0x4  # R: [15:0] free bytes in the command FIFO, [31:16] bytes waiting in the response FIFO
    CMD = 0x8  # W: push the low byte into the command FIFO (dropped when full: read STATUS first)
    RESP = 0xC  # R: pop one byte: bit RESP_VALID set when a byte was there, [7:0] the byte


MMIO_ID_VALUE = 0x51505331  # "QPS1"
STATUS_FIELDS = (("free", 16), ("waiting", 16))  # STATUS: command FIFO space, response FIFO bytes
RESP_VALID = 1 << 8


def status_fields(value: int) -> tuple[int, int]:
    """(free, waiting) from a STATUS read."""
    return value & 0xFFFF, value >> 16

# The simulated BAR of `qpsnn serve-sim --link mmio` over TCP: ``W addr data`` (no answer) and ``R addr``
# (answered with the 32-bit value), little-endian. A server already serving a client sends BAR_BUSY instead
# of any answer and hangs up.
BAR_OP = struct.Struct("<cII")
BAR_BUSY = b"BUSY"  # as a 32-bit read, 0x59535542: neither the ID nor a possible STATUS or RESP value


def bar_write(addr: int, value: int) -> bytes:
    return BAR_OP.pack(b"W", addr, value)


def bar_read(addr: int) -> bytes:
    return BAR_OP.pack(b"R", addr, 0)


def bar_ops(buf: bytes) -> tuple[list[tuple[bytes, int, int]], bytes]:
    """The whole operations at the start of ``buf`` and the bytes left over."""
    n = len(buf) // BAR_OP.size
    return [BAR_OP.unpack_from(buf, i * BAR_OP.size) for i in range(n)], buf[n * BAR_OP.size:]


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), the same as amaranth.lib.crc's catalog entry."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def frame(sof: int, code: int, payload: bytes = b"", tag: int = 0) -> bytes:
    body = pack_fields(FRAME_HEADER, code=code, tag=tag, length=len(payload)) + payload
    return bytes([sof]) + body + struct.pack(">H", crc16(body))


def request(cmd: int, payload: bytes = b"", tag: int = 0) -> bytes:
    return frame(REQUEST_SOF, cmd, payload, tag)


def reply(status: int, payload: bytes = b"", tag: int = 0) -> bytes:
    return frame(REPLY_SOF, status, payload, tag)


def word_bytes(data_bits: int) -> int:
    return (data_bits + 7) // 8


def write_payload(layer: int, region: int, addr: int, words: list[int], nbytes: int) -> bytes:
    head = pack_fields(WRITE_FIELDS, layer=layer, region=region, addr=addr)
    return head + b"".join(int(w).to_bytes(nbytes, "little") for w in words)


def read_payload(layer: int, region: int, addr: int, count: int) -> bytes:
    return pack_fields(READ_FIELDS, layer=layer, region=region, addr=addr, count=count)


def run_payload(offset: int, pixels: bytes) -> bytes:
    return pack_fields(RUN_FIELDS, offset=offset) + pixels


@dataclass(frozen=True)
class LayerInfo:
    kind: str
    bits: int
    channels: int
    weight_words: int  # capacity of the weight memory (words)
    neuron_words: int  # capacity of each membrane bank (words)


KINDS = ("conv", "fc", "output", "unrolled")  # "unrolled": a conv layer run time-unrolled (its weights in file order)


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

    @property
    def unrolled(self) -> bool:
        """Layer 1 runs time-unrolled (`qpsnn.sw.geometry.geometry_of`)."""
        return any(layer.kind == "unrolled" for layer in self.layers)

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
        parts += [KINDS.index(getattr(lg, "hw_kind", lg.kind)), lg.channels, lg.in_channels, lg.height, lg.width, lg.pool, lg.in_height,
                  lg.in_width, lg.bits, lg.weight_shift, lg.membrane_bits, lg.weight_rows]
    return zlib.crc32(struct.pack(f"<{len(parts)}i", *parts))


def sample_bytes(pixels: int, classes: int, max_payload: int) -> int:
    """Bytes on the wire, both ways, to run one sample: its RUN chunks, an empty OK for each but the last, and
    the result reply."""
    chunk = max_payload - RUN_HEADER
    chunks = -(-pixels // chunk)
    return (chunks * FRAME_BYTES + pixels + chunks * RUN_HEADER + (chunks - 1) * FRAME_BYTES + FRAME_BYTES
            + RESULT_FIXED + POTENTIAL_BITS // 8 * classes)


def decode_result(payload: bytes, classes: int) -> tuple[int, int, list[int]]:
    """(class, cycles, potentials) from a RUN or RESULT reply."""
    size = RESULT_FIXED + POTENTIAL_BITS // 8 * classes
    if len(payload) != size:
        raise ValueError(f"result of {len(payload)} bytes, expected {size}")
    cls, cycles = struct.unpack_from("<HI", payload, 0)
    pots = list(struct.unpack_from(f"<{classes}i", payload, RESULT_FIXED))
    return cls, cycles, pots


class Reply(NamedTuple):
    status: int | None  # None: the reply's CRC failed (``payload`` is then the raw frame)
    payload: bytes
    tag: int | None


class ReplyParser:
    """Incremental reply parser for the driver: feed bytes, take complete, CRC-checked replies.

    Bytes before a start byte are skipped; a reply with a bad CRC comes out as ``Reply(None, raw, None)`` so
    the caller can retry."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def take(self) -> Reply | None:
        head = field_bytes(FRAME_HEADER)
        while True:
            start = self.buf.find(bytes([REPLY_SOF]))
            if start < 0:
                self.buf.clear()
                return None
            del self.buf[:start]
            if len(self.buf) < 1 + head:
                return None
            n = struct.unpack_from("<H", self.buf, 3)[0]
            if len(self.buf) < FRAME_BYTES + n:
                return None
            raw = bytes(self.buf[:FRAME_BYTES + n])
            body, crc = raw[1:1 + head + n], struct.unpack(">H", raw[1 + head + n:])[0]
            if crc16(body) != crc:
                del self.buf[:1]  # resynchronise on the next start byte
                return Reply(None, raw, None)
            del self.buf[:FRAME_BYTES + n]
            return Reply(raw[1], raw[1 + head:1 + head + n], raw[2])


def fingerprint_bytes(value: int) -> bytes:
    return struct.pack("<I", value)
