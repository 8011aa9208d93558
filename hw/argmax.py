"""Running argmax over the output potentials as the fire scan delivers them, P lanes per beat.

Ties go to the lowest class: within a beat the first maximal lane wins, and a later beat replaces the best
only when strictly greater."""
from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class LaneArgmax(wiring.Component):
    def __init__(self, lanes: int, value_bits: int, index_bits: int):
        self.lanes, self.value_bits = lanes, value_bits
        super().__init__({
            "en": In(1), "first": In(1), "base": In(index_bits), "lanes_valid": In(lanes),
            "values": In(signed(value_bits * lanes)),
            "index": Out(index_bits), "value": Out(signed(value_bits)),
        })

    def elaborate(self, platform):
        m = Module()
        V = self.value_bits
        # first maximal valid lane of this beat: a chain of compare stages, so lower lanes win ties
        best_v, best_j, found = 0, 0, 0
        for j in range(self.lanes):
            v = self.values[j * V:(j + 1) * V].as_signed()
            take = self.lanes_valid[j] & (~found | (v > best_v))
            nv, nj, nf = Signal(signed(V), name=f"best_v{j}"), Signal(range(max(2, self.lanes)), name=f"best_j{j}"), Signal(name=f"found{j}")
            m.d.comb += [nv.eq(Mux(take, v, best_v)), nj.eq(Mux(take, j, best_j)), nf.eq(found | self.lanes_valid[j])]
            best_v, best_j, found = nv, nj, nf
        with m.If(self.en & found & (self.first | (best_v > self.value))):
            m.d.sync += [self.value.eq(best_v), self.index.eq(self.base + best_j)]
        return m
