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

from .geometry import KERNEL, PARALLEL_OFFSETS
from .params import cmul
from .records import ADDR_BITS
from .weight_store import WeightStore


# a store moves to an SPRAM (when the board has them) only if it would fill more than two block RAMs: the
# iCE40UP5K has four SPRAMs, and nine offset stores or a first layer's few hundred bits must not take one each,
# but a hidden layer's 14-kbit store (four of its 30 block RAMs) is better in one
SPRAM_WORTH_BITS = 8192


def in_offset(addr, offset: int, rows: int):
    """Whether a flat, offset-major word address falls in kernel offset ``offset``'s rows."""
    return (addr >= offset * rows) & (addr < (offset + 1) * rows)


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
            inside = in_offset(self.w_addr, o, N) if self.stores > 1 else 1
            m.d.comb += [store.w_addr.eq(self.w_addr - o * N), store.w_data.eq(self.w_data),
                         store.w_en.eq(self.w_en & inside),
                         store.r_addr.eq(Mux(self.rd, self.rd_addr - o * N, self.r_addr)),
                         self.r_data[o].eq(store.r_data)]
            with m.If(self.rd_addr >= o * N):
                m.d.comb += which.eq(o)
        m.d.sync += rd_store.eq(which)
        m.d.comb += self.rd_data.eq(Array(self.r_data[o] for o in range(self.stores))[rd_store])
        return m


def phase_of(bank: int, offset: int, fault_row: int | None = None) -> int:
    """The event phase (y mod 3, x mod 3) at which interleaved bank ``bank`` is reached through kernel offset
    ``offset``: an event at y updates output y + 1 - ky, which lies in bank row r when y = r + ky - 1 (mod 3).
    ``fault_row`` makes bank row 0 use that row's mapping (the "bank-offset" fault)."""
    (r, s), (ky, kx) = divmod(bank, KERNEL), divmod(offset, KERNEL)
    if fault_row is not None and r == 0:
        r = fault_row
    return ((r + ky - 1) % KERNEL) * KERNEL + (s + kx - 1) % KERNEL


class BankWeights(wiring.Component):
    """The weights of a kernel-parallel layer as its nine membrane banks read them: one store per bank, each
    holding all nine offsets' rows at the event phase (y mod 3, x mod 3) that brings that offset to that bank.

    Every bank then reads the same address (phase N + row) and gets its own offset's word, so no bank picks
    among nine weight words: the nine-way multiplexer of nine offset stores becomes a fixed wiring, paid for
    with nine copies of the weights (the same block RAM count on the ECP5, where a 64-bit word takes two
    blocks either way). The host writes rows offset-major as for `KernelWeights`; each write lands in all
    nine stores, each at its own phase. Read-back reads bank 0's copy."""

    def __init__(self, rows: int, width: int, fault_row: int | None = None):
        self.rows, self.width, self.fault_row = rows, width, fault_row
        self.depth = PARALLEL_OFFSETS * rows
        super().__init__({
            "w_addr": In(ADDR_BITS), "w_data": In(width), "w_en": In(1),
            "phase": In(range(PARALLEL_OFFSETS)), "r_row": In(range(max(2, rows))),
            "r_data": Out(data.ArrayLayout(unsigned(width), PARALLEL_OFFSETS)),
            "rd": In(1), "rd_addr": In(ADDR_BITS), "rd_data": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        N = self.rows
        r_addr = cmul(self.phase, N) + self.r_row
        writes = [in_offset(self.w_addr, o, N) for o in range(PARALLEL_OFFSETS)]  # one compare per offset
        for k in range(PARALLEL_OFFSETS):
            m.submodules[f"bank{k}"] = store = WeightStore(self.depth, self.width)
            m.d.comb += [store.w_data.eq(self.w_data), self.r_data[k].eq(store.r_data), store.r_addr.eq(r_addr)]
            for o in range(PARALLEL_OFFSETS):  # offset o's rows go to the phase that brings o to bank k
                with m.If(writes[o]):
                    m.d.comb += [store.w_addr.eq(self.w_addr + (phase_of(k, o, self.fault_row) - o) * N),
                                 store.w_en.eq(self.w_en)]
                if k == 0:
                    with m.If(self.rd & in_offset(self.rd_addr, o, N)):
                        m.d.comb += store.r_addr.eq(self.rd_addr + (phase_of(0, o) - o) * N)
        m.d.comb += self.rd_data.eq(self.r_data[0])
        return m
