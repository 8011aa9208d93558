"""Payload layouts that cross component boundaries: one definition for the RTL and the benches that decode
the same bits (`sim/bench_accelerator.py` reads fields by these layouts' offsets)."""
from __future__ import annotations

from amaranth import signed, unsigned
from amaranth.lib import data, enum

from qpsnn.sw import protocol as proto

ADDR_BITS = 24


def fields_layout(fields) -> data.StructLayout:
    """A `qpsnn.sw.protocol` field table as a layout: the bytes of a header, shifted in low byte first."""
    return data.StructLayout({name: unsigned(bits) for name, bits in fields})


FrameHeader = fields_layout(proto.FRAME_HEADER)  # a request's (code = command) or a reply's (code = status)
# a request's command header: the first payload bytes, read as the command says
CommandHeader = data.UnionLayout({"write": fields_layout(proto.WRITE_FIELDS), "read": fields_layout(proto.READ_FIELDS),
                                  "run": fields_layout(proto.RUN_FIELDS),
                                  "begin_load": fields_layout(proto.BEGIN_LOAD_FIELDS)})
# a whole request in the frame buffer, and whether the receiver could trust it (OK, E_CRC, E_LENGTH, E_TIMEOUT)
ReceivedFrame = data.StructLayout({"header": FrameHeader, "status": proto.Status})


class Route(enum.Enum, shape=2):
    """Where the frame buffer's payload bytes go."""
    HEADER = 0
    WRITE = 1
    PIXELS = 2


class Body(enum.Enum, shape=2):
    """Where a reply's body bytes come from."""
    NONE = 0
    IDENTIFY = 1
    MEMORY = 2
    RESULT = 3


def trace_layout(lanes: int, value_bits: int) -> data.StructLayout:
    """One trace record: the membrane (before reset) and spike of P neurons of one layer at one timestep."""
    return data.StructLayout({"valid": 1, "layer": unsigned(4), "t": unsigned(8), "addr": unsigned(ADDR_BITS),
                              "lanes": unsigned(lanes), "spikes": unsigned(lanes),
                              "v": data.ArrayLayout(signed(value_bits), lanes)})


def result_layout(classes: int, value_bits: int) -> data.StructLayout:
    """What a sample ends with: its class, the cycles it took, and every output potential."""
    fixed = {name: unsigned(bits) for name, bits in proto.RESULT_FIELDS}
    return data.StructLayout({**fixed, "potentials": data.ArrayLayout(signed(value_bits), classes)})


def field_slices(layout: data.StructLayout) -> dict[str, tuple[int, int]]:
    """(offset, width) of each field, for code that sees the bits as one integer (a cocotb bench)."""
    return {name: (field.offset, field.width) for name, field in layout}
