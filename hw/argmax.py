"""Running argmax over the output potentials as the fire scan delivers them, P lanes per beat.

Latency: ``index``/``value`` include a beat two cycles after it is presented.
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
        # first maximal valid lane of this beat, as a tree (log2 P compare levels, not P): at every node the
        # right (higher) half wins only when strictly greater, so lower lanes win ties
        nodes = [(self.values[j * V:(j + 1) * V].as_signed(), j, self.lanes_valid[j]) for j in range(self.lanes)]
        level = 0
        while len(nodes) > 1:
            merged = []
            for i in range(0, len(nodes), 2):
                if i + 1 == len(nodes):
                    merged.append(nodes[i])
                    continue
                (lv, lj, lf), (rv, rj, rf) = nodes[i], nodes[i + 1]
                take = rf & (~lf | (rv > lv))
                nv = Signal(signed(V), name=f"best_v{level}_{i}")
                nj = Signal(range(max(2, self.lanes)), name=f"best_j{level}_{i}")
                nf = Signal(name=f"found{level}_{i}")
                m.d.comb += [nv.eq(Mux(take, rv, lv)), nj.eq(Mux(take, rj, lj)), nf.eq(lf | rf)]
                merged.append((nv, nj, nf))
            nodes, level = merged, level + 1
        # a register after the tree, then the compare with the running best: two cycles from a beat to
        # ``index``/``value``, each a short path
        best_v, best_j, found = (Signal.like(x, name=f"{n}_r") for x, n in zip(nodes[0], ("best_v", "best_j", "found")))
        en, first = Signal(), Signal()
        base = Signal.like(self.base)
        m.d.sync += [best_v.eq(nodes[0][0]), best_j.eq(nodes[0][1]), found.eq(nodes[0][2]), en.eq(self.en),
                     first.eq(self.first), base.eq(self.base)]
        with m.If(en & found & (first | (best_v > self.value))):
            m.d.sync += [self.value.eq(best_v), self.index.eq(base + best_j)]
        return m
