"""A membrane bank in LUT RAM whose read address is registered once per few lanes, not once per bank.

A synchronous read port on LUT RAM is an address register in front of an asynchronous read. With one
register per bank, that register drives every LUT RAM cell of a 272-bit word: on the ULX3S kernel-parallel
MNIST build it was the critical path (14.3 of 45 ns were routing from it). Here the word is split into
chunks of `CHUNK_LANES` lanes, each chunk its own memory with its own copy of the address register, named
as `params.FANOUT_COPY` says so that yosys does not merge the copies back into one.

Timing is that of a read port transparent for the write port: the address registered on cycle n selects
the data on cycle n+1, after cycle n's write has landed.
"""
from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .boards import LUT_RAM
from .params import FANOUT_COPY, packed_memory, ubits

CHUNK_LANES = 4  # 4 lanes x 17 bits = 17 LUT RAM cells of 4 bits, no bit wasted, one register per 34 cells


class LutRamBank(wiring.Component):
    """``lanes`` lanes of ``value_bits`` each per word, ``depth`` words; one read and one write per cycle."""

    def __init__(self, lanes: int, value_bits: int, depth: int, fault: str | None = None):
        self.lanes, self.value_bits, self.depth, self.fault = lanes, value_bits, depth, fault
        width = lanes * value_bits
        super().__init__({
            "r_addr": In(range(max(depth, 2))), "r_data": Out(width),
            "w_addr": In(range(max(depth, 2))), "w_data": In(width), "w_en": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        V, words = self.value_bits, []
        for c, first in enumerate(range(0, self.lanes, CHUNK_LANES)):
            lanes = min(CHUNK_LANES, self.lanes - first)
            mem = packed_memory(lanes * V, self.depth, style=LUT_RAM)
            m.submodules[f"chunk{c}"] = mem
            wp, rp = mem.write_port(), mem.read_port(domain="comb")
            addr = Signal(ubits(self.depth), name=f"{FANOUT_COPY}_addr{c}", reset_less=True)
            m.d.sync += addr.eq(self.r_addr)
            if self.fault == "chunk-late" and c == 1:  # deliberate bug: this chunk's copy a cycle behind
                late = Signal.like(addr, name="late")
                m.d.sync += late.eq(addr)
                addr = late
            lo, hi = first * V, (first + lanes) * V
            m.d.comb += [rp.addr.eq(addr), wp.addr.eq(self.w_addr), wp.data.eq(self.w_data[lo:hi]),
                         wp.en.eq(self.w_en)]
            words.append(rp.data)
        m.d.comb += self.r_data.eq(Cat(*words))
        return m
