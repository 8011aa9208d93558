"""A layer's packed weights as the datapath reads them: one store, or nine read together (one per kernel
offset) when a conv layer is built kernel-parallel.

The configuration port sees one flat word address in both cases. With nine stores the host writes the rows
offset-major (`qpsnn.sw.device.hw_weight_rows`): store o holds words ``[o N, (o + 1) N)`` with N = input
channels x groups, so routing a write takes a compare per store, not a divider.
"""
from __future__ import annotations

from amaranth import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .records import ADDR_BITS
from .weight_store import WeightStore


# a store moves to an SPRAM (when the board has them) only if it would fill several block RAMs: the iCE40UP5K
# has four SPRAMs, and nine offset stores or a first layer's few hundred bits must not take one each
SPRAM_WORTH_BITS = 16384


class KernelWeights(wiring.Component):
    def __init__(self, words_per_store: int, width: int, stores: int = 1, spram: bool = False):
        self.words, self.width, self.stores = max(2, words_per_store), width, stores
        self.spram = spram and stores == 1 and self.words * width > SPRAM_WORTH_BITS
        self._logical = words_per_store
        super().__init__({
            "w_addr": In(ADDR_BITS), "w_data": In(width), "w_en": In(1),
            "r_addr": In(range(self.words)), "r_data": Out(data.ArrayLayout(unsigned(width), stores)),
            # read-back by flat address: rd with rd_addr on cycle n, rd_data on cycle n+1
            "rd": In(1), "rd_addr": In(ADDR_BITS), "rd_data": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        N = self._logical
        rd_store = Signal(range(max(self.stores, 2)))
        which = Signal.like(rd_store)
        for o in range(self.stores):
            store = WeightStore(self.words, self.width, self.spram)
            m.submodules[f"offset{o}" if self.stores > 1 else "store"] = store
            inside = (self.w_addr >= o * N) & (self.w_addr < (o + 1) * N) if self.stores > 1 else 1
            m.d.comb += [store.w_addr.eq(self.w_addr - o * N), store.w_data.eq(self.w_data),
                         store.w_en.eq(self.w_en & inside),
                         store.r_addr.eq(Mux(self.rd, self.rd_addr - o * N, self.r_addr)),
                         self.r_data[o].eq(store.r_data)]
            with m.If(self.rd_addr >= o * N):
                m.d.comb += which.eq(o)
        m.d.sync += rd_store.eq(which)
        m.d.comb += self.rd_data.eq(Array(self.r_data[o] for o in range(self.stores))[rd_store])
        return m
