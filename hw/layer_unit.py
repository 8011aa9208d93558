"""One layer after the encoder: its packed weights, its membranes (P lanes per word), thresholds and biases,
the event pipeline and the fire scan.

Event pipeline: cycle n reads the weight word(s) and the membrane word(s) an event reaches; cycle n+1 adds
each lane's decoded weight and writes back. Serial (``offsets`` = 1): one kernel offset x P outputs per
cycle. Kernel-parallel (``offsets`` = 9, conv): the membranes are interleaved over nine banks by
(y mod 3, x mod 3), so the nine outputs of one event are in nine banks and all nine offsets update in one
cycle; each bank reads its own copy of the weights, stored at the event phase (y mod 3, x mod 3) that
brings each offset to that bank (`BankWeights`), so the bank-to-offset rotation is done on addresses,
not by a nine-way multiplexer. Two updates in a row to the same
word are a read-after-write hazard: each bank's read port is transparent for its write port
(``forwarding=True``). ``forwarding=False`` and the ``fault`` names exist only to show that the testbench
catches the hazard and a wrong offset-to-bank mapping. Where the banks are LUT RAM (the ECP5), each is a
`LutRamBank`, and the fire scan's bank select is registered once per lane: both split a fanout that set the
clock.

Fire scan: cycle n reads neuron n (window-major address; with banks, its bank and word); cycle n+1
compares with the threshold, resets, leaks, adds the bias, writes back, reports the trace and emits the
OR-pooled spikes of each window. On the last timestep it writes each neuron's initial value (its bias)
instead, ready for the next sample; an ``init`` scan does only that, without trace or spikes.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from qpsnn.sw.protocol import REGION_WEIGHTS

from .boards import LUT_RAM
from .event_queue import EventQueue, entry_layout
from .geometry import KERNEL, LayerGeometry
from .interleave import neighbour_in_bank, split
from .kernel_weights import BankWeights, KernelWeights
from .lut_ram import LutRamBank
from .params import FANOUT_COPY, LaneParams, Placement, cmul, packed_memory, saturate, ubits
from .records import ADDR_BITS, trace_layout

# deliberate bugs for the benches to catch: "bank-offset": bank row 0 takes bank row 1's kernel offset;
# "no-reset": the encoder's LIF stages forget the reset after a spike; "one-current": an unrolled layer
# takes timestep 0's inputs for every timestep (the encoder's one current, wrongly kept); "map-no-or": its
# spike map keeps each window's last record instead of OR-pooling the window; "lane-state": its LIF, stepping
# through the lanes, takes the state of the step before (another lane's) instead of its own lane's from S steps back;
# "chunk-late": a LUT RAM bank's second chunk of lanes reads with its address copy a cycle late; "bank-copy-late":
# lane 1's copy of the fire scan's bank select is a cycle late
FAULTS = ("bank-offset", "no-reset", "pixel-race", "one-current", "map-no-or", "lane-state", "chunk-late",
          "bank-copy-late")


def entry_of(geo: LayerGeometry) -> data.StructLayout:
    """The spike-queue entry a layer emits: one (pooled) position, P channel bits."""
    return entry_layout(geo.lanes, ubits(geo.groups), ubits(geo.pooled_height), ubits(geo.pooled_width))


class LayerUnit(wiring.Component):
    def __init__(self, geo: LayerGeometry, leak_shift: int, in_geo: LayerGeometry, data_bits: int, timesteps: int,
                 forwarding: bool = True, placement: Placement = Placement(), fault: str | None = None):
        assert not geo.first
        self.geo, self.leak_shift, self.in_geo, self.forwarding = geo, leak_shift, in_geo, forwarding
        self.placement, self.fault = placement, fault
        self.regions = timesteps if in_geo.time_unrolled else 1  # the encoder queues every timestep at once
        P, V = geo.lanes, geo.membrane_bits
        self.y_bits = ubits(max(geo.height, geo.in_height))
        self.x_bits = ubits(max(geo.width, geo.in_width))
        in_entry = entry_of(in_geo)
        super().__init__({
            # control from the sequencer
            "ev_en": In(1), "fire_en": In(1), "last_t": In(1), "init": In(1), "t": In(range(max(timesteps, 2))),
            "ev_done": Out(1), "fire_done": Out(1),
            # configuration writes: region 0 weights (word address), 1 threshold, 2 bias (address = channel)
            "cfg_en": In(1), "cfg_region": In(2), "cfg_addr": In(ADDR_BITS), "cfg_data": In(data_bits),
            # read-back while idle: cfg_rd with cfg_region/cfg_addr on cycle n, cfg_rd_data on cycle n+1
            "cfg_rd": In(1), "cfg_rd_data": Out(data_bits),
            # spikes in (one queue region per timestep held), spikes out for the next layer's queue
            "q_valid": In(self.regions), "q_data": In(data.ArrayLayout(in_entry, self.regions)),
            "spike_valid": Out(1), "spike": Out(entry_of(geo)),
            # trace of every neuron update in the fire scan
            "trace": Out(trace_layout(P, V)),
        })

    def elaborate(self, platform):
        m = Module()
        g, ig, P, V = self.geo, self.in_geo, self.geo.lanes, self.geo.membrane_bits
        b, G = g.bits, g.groups
        L = (1 << b) - 1
        conv, banked = g.kind == "conv", g.interleaved

        # ---------------------------------------------------------------- memories
        if banked:  # one weight store per membrane bank, so each bank's weight word is wired, not selected
            fault_row = 1 if self.fault == "bank-offset" else None
            m.submodules.weights = wts = BankWeights(g.in_channels * G, P * b, fault_row)
        else:
            m.submodules.weights = wts = KernelWeights(g.weight_rows * G, P * b, 1, self.placement.weights_in_spram)
        m.submodules.params = params = LaneParams(P, V, G, g.fires, small_in_bram=self.placement.small_in_bram)
        banks = []
        # LUT RAM banks register their read address per few lanes (`LutRamBank`); their reads see the write of
        # the cycle before, as a transparent port does, so the fault without forwarding keeps a plain memory
        lut_ram = banked and self.placement.membranes == LUT_RAM and self.forwarding
        for k in range(g.banks):
            name = f"membrane{k}" if g.banks > 1 else "membrane"
            if lut_ram:
                m.submodules[name] = bank = LutRamBank(P, V, g.bank_words, self.fault)
                banks.append((_Port(bank.r_addr, bank.r_data), _Port(bank.w_addr, bank.w_data, bank.w_en)))
                continue
            mem = packed_memory(P * V, g.bank_words, small_in_bram=self.placement.small_in_bram,
                                style=self.placement.membranes if banked else None)
            m.submodules[name] = mem
            wp = mem.write_port()
            rp = mem.read_port(transparent_for=(wp,) if self.forwarding else ())
            banks.append((rp, wp))
        m.d.comb += [wts.w_addr.eq(self.cfg_addr), wts.w_data.eq(self.cfg_data),
                     wts.w_en.eq(self.cfg_en & (self.cfg_region == REGION_WEIGHTS)),
                     wts.rd.eq(self.cfg_rd), wts.rd_addr.eq(self.cfg_addr),
                     params.cfg_en.eq(self.cfg_en), params.cfg_region.eq(self.cfg_region),
                     params.cfg_addr.eq(self.cfg_addr), params.cfg_data.eq(self.cfg_data), params.cfg_rd.eq(self.cfg_rd)]
        rd_region = Signal(2)
        m.d.sync += rd_region.eq(self.cfg_region)
        m.d.comb += self.cfg_rd_data.eq(Mux(rd_region == REGION_WEIGHTS, wts.rd_data, params.cfg_rd_data))

        last_lanes = g.channels - (G - 1) * P

        def lanes_of(group):
            return Mux(group == G - 1, (1 << last_lanes) - 1, (1 << P) - 1)

        # ---------------------------------------------------------------- event pipeline, stage 0
        active = Signal()
        ev_c = Signal(ubits(g.in_channels))
        ev_y, ev_x = Signal(self.y_bits), Signal(self.x_bits)
        ky, kx, kyh, kxh, kxl = (Signal(2) for _ in range(5))
        grp = Signal(ubits(G))
        serial_offsets = conv and not banked
        last_tuple = (grp == G - 1) & (((ky == kyh) & (kx == kxh)) if serial_offsets else 1)
        ready = ~active | last_tuple

        m.submodules.queue = queue = EventQueue(ig.lanes, ig.groups, ubits(ig.pooled_height), ubits(ig.pooled_width),
                                               ig.groups * ig.out_positions, self.regions)
        m.d.comb += [queue.w_valid.eq(self.q_valid), queue.w_data.eq(self.q_data), queue.region.eq(self.t),
                     queue.ev_ready.eq(self.ev_en & ready)]
        take = self.ev_en & ready & queue.ev_valid
        src_y, src_x = queue.ev.y, queue.ev.x
        with m.If(~self.ev_en):
            m.d.sync += active.eq(0)
        with m.Elif(take):
            m.d.sync += [active.eq(1), ev_c.eq(queue.ev.channel), ev_y.eq(src_y), ev_x.eq(src_x), grp.eq(0)]
            if serial_offsets:  # valid kernel rows/cols: outputs (y - ky + 1, x - kx + 1) inside the map
                lo_y = Mux(src_y + 2 > g.height, src_y + 2 - g.height, 0)
                lo_x = Mux(src_x + 2 > g.width, src_x + 2 - g.width, 0)
                m.d.sync += [ky.eq(lo_y), kx.eq(lo_x), kxl.eq(lo_x),
                             kyh.eq(Mux(src_y + 1 > 2, 2, src_y + 1)), kxh.eq(Mux(src_x + 1 > 2, 2, src_x + 1))]
        with m.Elif(active & last_tuple):
            m.d.sync += active.eq(0)
        with m.Elif(active):
            with m.If(grp == G - 1):
                m.d.sync += grp.eq(0)
                if serial_offsets:
                    with m.If(kx == kxh):
                        m.d.sync += [kx.eq(kxl), ky.eq(ky + 1)]
                    with m.Else():
                        m.d.sync += kx.eq(kx + 1)
            with m.Else():
                m.d.sync += grp.eq(grp + 1)

        # per bank: the word an event updates and whether that output exists (plain
        # expressions, not signals: a bank whose output always exists must not become a constant-driven signal,
        # which some simulators never evaluate)
        if banked:
            BH, BW = g.bank_height, g.bank_width
            ey3, eyq = split(ev_y)
            ex3, exq = split(ev_x)
            rows = [neighbour_in_bank(ev_y, ey3, eyq, r, g.height) for r in range(KERNEL)]
            cols = [neighbour_in_bank(ev_x, ex3, exq, s, g.width) for s in range(KERNEL)]

            ev_addr, ev_ok = [], []
            for k in range(g.banks):
                r, s = divmod(k, KERNEL)
                ev_addr.append(cmul(cmul(grp, BH) + rows[r][2], BW) + cols[s][2])
                ev_ok.append(rows[r][3] & cols[s][3])
            m.d.comb += [wts.phase.eq(cmul(ey3, KERNEL) + ex3), wts.r_row.eq(cmul(ev_c, G) + grp)]
        elif conv:
            oy_ = (ev_y + 1 - ky)[:self.y_bits]
            ox_ = (ev_x + 1 - kx)[:self.x_bits]
            ev_addr, ev_ok = [_window_major(g, grp, oy_, ox_)], [Const(1)]
            m.d.comb += wts.r_addr.eq(cmul(cmul(ev_c, 9) + cmul(ky, 3) + kx, G) + grp)
        else:
            row = cmul(ev_c, ig.out_positions) + cmul(ev_y, ig.pooled_width) + ev_x
            ev_addr, ev_ok = [grp], [Const(1)]
            m.d.comb += wts.r_addr.eq(cmul(row, G) + grp)

        # ---------------------------------------------------------------- fire scan, stage 0
        pw = g.pool * g.pool
        nw = g.neuron_words
        scan = Signal(ubits(nw + 1))
        scan_done = Signal()
        scan_grp = Signal(ubits(G))
        scan_w = Signal(2)
        scan_py = Signal(ubits(g.pooled_height))
        scan_px = Signal(ubits(g.pooled_width))
        firing = self.fire_en & ~scan_done
        with m.If(~self.fire_en):
            m.d.sync += [scan.eq(0), scan_done.eq(0), scan_grp.eq(0), scan_w.eq(0), scan_py.eq(0), scan_px.eq(0)]
        with m.Elif(firing):
            m.d.sync += scan.eq(scan + 1)
            with m.If(scan == nw - 1):
                m.d.sync += scan_done.eq(1)
            # window-major order: within-window index, then x, then y, then group
            with m.If(scan_w != pw - 1):
                m.d.sync += scan_w.eq(scan_w + 1)
            with m.Else():
                m.d.sync += scan_w.eq(0)
                with m.If(scan_px != g.pooled_width - 1):
                    m.d.sync += scan_px.eq(scan_px + 1)
                with m.Else():
                    m.d.sync += scan_px.eq(0)
                    with m.If(scan_py != g.pooled_height - 1):
                        m.d.sync += scan_py.eq(scan_py + 1)
                    with m.Else():
                        m.d.sync += [scan_py.eq(0), scan_grp.eq(scan_grp + 1)]

        scan_bank = Signal(range(max(g.banks, 2)))
        scan_addr = Signal(ubits(g.bank_words))
        if banked:
            p = g.pool
            sy = scan_py * p + (scan_w >> 1 if p == 2 else 0)
            sx = scan_px * p + (scan_w & 1 if p == 2 else 0)
            (sy3, syq), (sx3, sxq) = split(sy), split(sx)
            m.d.comb += [scan_bank.eq(cmul(sy3, KERNEL) + sx3),
                         scan_addr.eq(cmul(cmul(scan_grp, g.bank_height) + syq, g.bank_width) + sxq)]
        else:
            m.d.comb += scan_addr.eq(scan)
        for k, (rp, _) in enumerate(banks):
            m.d.comb += rp.addr.eq(Mux(firing, scan_addr, ev_addr[k]))
        m.d.comb += params.r_addr.eq(scan_grp)

        # ---------------------------------------------------------------- stage 1 registers
        s1_ev, s1_fire, s1_last_t, s1_init = Signal(), Signal(), Signal(), Signal()
        s1_addr = Signal(ubits(nw))
        s1_grp = Signal(ubits(G))
        s1_py, s1_px = Signal.like(scan_py), Signal.like(scan_px)
        s1_w = Signal(2)
        s1_bank, s1_scan_addr = Signal.like(scan_bank), Signal.like(scan_addr)
        s1_ev_addr = [Signal(ubits(g.bank_words), name=f"s1_ev_addr{k}") for k in range(g.banks)]
        s1_ev_ok = [Signal(name=f"s1_ev_ok{k}") for k in range(g.banks)]
        # a constant register the single-bank layer had when banks chose among nine weight stores: unused, kept
        # only so the kept bitstreams' RTLIL (and so their sha256) is unchanged until they are next rebuilt
        vestige = [] if banked else [Signal(range(2), name="s1_ev_store0")]
        m.d.sync += [s1_ev.eq(active & self.ev_en), s1_fire.eq(firing), s1_last_t.eq(self.last_t | self.init),
                     s1_init.eq(self.init), s1_addr.eq(scan), s1_grp.eq(Mux(firing, scan_grp, grp)),
                     s1_py.eq(scan_py), s1_px.eq(scan_px), s1_w.eq(scan_w), s1_bank.eq(scan_bank),
                     s1_scan_addr.eq(scan_addr)]
        m.d.sync += [d.eq(s) for d, s in zip(s1_ev_addr + s1_ev_ok + vestige, ev_addr + ev_ok + [Const(0)] * len(vestige))]

        # ---------------------------------------------------------------- stage 1: event update, per bank
        for k, (rp, wp) in enumerate(banks):
            word = wts.r_data[k] if banked else wts.r_data[0]
            lanes = []
            for j in range(P):
                w = Signal(signed(b + 2), name=f"w{k}_{j}")
                m.d.comb += w.eq((word[j * b:(j + 1) * b] << 1) - L)
                lanes.append(saturate(rp.data.word_select(j, V).as_signed() + (w << g.weight_shift), V)[:V])
            with m.If(s1_ev & s1_ev_ok[k]):
                m.d.comb += [wp.addr.eq(s1_ev_addr[k]), wp.data.eq(Cat(*lanes)), wp.en.eq(1)]

        # ---------------------------------------------------------------- stage 1: fire
        if g.banks > 1:
            # the bank select copied per lane: one register driving all P lanes' nine-way bank multiplexers was
            # the ULX3S build's critical path once the read addresses were copied (13 of 42 ns routing)
            bank_of = [Signal.like(scan_bank, name=f"{FANOUT_COPY}_bank{j}", reset_less=True) for j in range(P)]
            m.d.sync += [copy.eq(scan_bank) for copy in bank_of]
            if self.fault == "bank-copy-late":  # deliberate bug: lane 1's copy a cycle behind
                late = Signal.like(scan_bank, name="late")
                m.d.sync += late.eq(bank_of[1])
                bank_of[1] = late
            current = Cat(*(Array(rp.data.word_select(j, V) for rp, _ in banks)[bank_of[j]] for j in range(P)))
        else:
            current = banks[0][0].data
        spikes = Signal(P)
        lanes_ok = Signal(P)
        m.d.comb += lanes_ok.eq(lanes_of(s1_grp))
        vs, nxt = [], []
        for j in range(P):
            v = Signal(signed(V), name=f"v{j}")
            m.d.comb += v.eq(current.word_select(j, V).as_signed())
            vs.append(v)
            bi = params.r_bias[j]
            if g.fires:
                m.d.comb += spikes[j].eq(lanes_ok[j] & (v >= params.r_theta[j]))
                after = saturate((Mux(spikes[j], 0, v) >> self.leak_shift) + bi, V)
            else:
                after = saturate(v + bi, V)
            nxt.append(Mux(s1_last_t, bi, after)[:V])
        with m.If(s1_fire):
            for k, (_, wp) in enumerate(banks):
                m.d.comb += [wp.addr.eq(s1_scan_addr), wp.data.eq(Cat(*nxt)), wp.en.eq(s1_bank == k)]
        tr = self.trace
        m.d.comb += [tr.valid.eq(s1_fire & ~s1_init), tr.addr.eq(s1_addr), tr.lanes.eq(lanes_ok),
                     tr.spikes.eq(spikes)] + [tr.v[j].eq(vs[j]) for j in range(P)]

        # spikes out: OR over the pool window (consecutive addresses), one queue entry per window
        if g.fires:
            acc = Signal(P)
            window_mask = acc | spikes
            end_of_window = (s1_w == pw - 1) if pw > 1 else Const(1, 1)
            with m.If(s1_fire):
                m.d.sync += acc.eq(Mux(end_of_window, 0, window_mask))
            m.d.comb += [self.spike_valid.eq(s1_fire & ~s1_init & end_of_window & (window_mask != 0)),
                         self.spike.group.eq(s1_grp), self.spike.mask.eq(window_mask)]
            if conv:
                m.d.comb += [self.spike.y.eq(s1_py), self.spike.x.eq(s1_px)]

        # ---------------------------------------------------------------- done flags
        m.d.comb += [self.ev_done.eq(self.ev_en & ~active & ~s1_ev & ~queue.ev_valid),
                     self.fire_done.eq(self.fire_en & scan_done & ~s1_fire)]
        return m


@dataclass(frozen=True)
class _Port:
    """A `LutRamBank`'s read or write side under the names of a memory port's, so one datapath serves both."""
    addr: Signal
    data: Signal
    en: Signal | None = None


def _window_major(g: LayerGeometry, group, y, x):
    """The window-major address of neuron (group, y, x): the four neurons of a pool window are consecutive."""
    p = g.pool
    if p == 1:
        return cmul(cmul(group, g.height) + y, g.width) + x
    return (cmul(cmul(group, g.pooled_height) + (y >> 1), g.pooled_width) + (x >> 1)) * 4 + (y & 1) * 2 + (x & 1)
