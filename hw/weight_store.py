"""A layer's packed weight memory. Written only while configuring and read only while events run, so it
needs one port at a time: on the iCE40 UP it can live in the 256-kbit single-port SPRAMs
(``SB_SPRAM256KA``, 16K x 16 bits each) and leave the block RAMs to the membranes. Both variants read with
one cycle of latency, like a block RAM read port."""
from __future__ import annotations

from amaranth import Cat, ClockSignal, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .geometry import CapacityError
from .params import packed_memory

SPRAM_DEPTH, SPRAM_WIDTH = 16384, 16


class WeightStore(wiring.Component):
    def __init__(self, depth: int, width: int, spram: bool = False):
        if spram and depth > SPRAM_DEPTH:
            raise CapacityError(f"a weight memory needs {depth} words, an SPRAM holds {SPRAM_DEPTH}: use more lanes "
                                f"(wider, shallower words) or prune the layer")
        self.depth, self.width, self.spram = depth, width, spram
        addr = max(1, (depth - 1).bit_length())
        super().__init__({"w_addr": In(addr), "w_data": In(width), "w_en": In(1),
                          "r_addr": In(addr), "r_data": Out(width)})

    @property
    def sprams(self) -> int:
        return -(-self.width // SPRAM_WIDTH) if self.spram else 0

    def elaborate(self, platform):
        m = Module()
        if not self.spram:
            m.submodules.mem = mem = packed_memory(self.width, self.depth)
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.addr.eq(self.w_addr), wp.data.eq(self.w_data), wp.en.eq(self.w_en),
                         rp.addr.eq(self.r_addr), self.r_data.eq(rp.data)]
            return m
        addr = Mux(self.w_en, self.w_addr, self.r_addr)
        outs = []
        for i in range(self.sprams):
            data_in = Signal(SPRAM_WIDTH, name=f"spram{i}_in")
            data_out = Signal(SPRAM_WIDTH, name=f"spram{i}_out")
            m.d.comb += data_in.eq(self.w_data[i * SPRAM_WIDTH:(i + 1) * SPRAM_WIDTH])
            m.submodules[f"spram{i}"] = Instance(
                "SB_SPRAM256KA", i_ADDRESS=addr, i_DATAIN=data_in, i_MASKWREN=0b1111, i_WREN=self.w_en,
                i_CHIPSELECT=1, i_CLOCK=ClockSignal("sync"),
                i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=data_out)
            outs.append(data_out)
        m.d.comb += self.r_data.eq(Cat(*outs)[:self.width])
        return m
