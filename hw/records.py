"""Payload layouts that cross component boundaries: one definition for the RTL and the benches that decode
the same bits (`sim/bench_accelerator.py` reads fields by these layouts' offsets)."""
from __future__ import annotations

from amaranth import signed, unsigned
from amaranth.lib import data

ADDR_BITS = 24


def trace_layout(lanes: int, value_bits: int) -> data.StructLayout:
    """One trace record: the membrane (before reset) and spike of P neurons of one layer at one timestep."""
    return data.StructLayout({"valid": 1, "layer": unsigned(4), "t": unsigned(8), "addr": unsigned(ADDR_BITS),
                              "lanes": unsigned(lanes), "spikes": unsigned(lanes),
                              "v": data.ArrayLayout(signed(value_bits), lanes)})


def result_layout(classes: int, value_bits: int) -> data.StructLayout:
    """What a sample ends with: its class, the cycles it took, and every output potential."""
    return data.StructLayout({"label": unsigned(16), "cycles": unsigned(32),
                              "potentials": data.ArrayLayout(signed(value_bits), classes)})


def field_slices(layout: data.StructLayout) -> dict[str, tuple[int, int]]:
    """(offset, width) of each field, for code that sees the bits as one integer (a cocotb bench)."""
    return {name: (field.offset, field.width) for name, field in layout}
