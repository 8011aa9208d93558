"""One layer of the accelerator: its packed weight memory, P membrane banks, thresholds and biases, the event
pipeline (one weight word and P membrane read-modify-writes per cycle) and the fire scan.

Event pipeline, per update: cycle n reads the weight word and the P membranes at one address; cycle n+1 adds
each lane's decoded weight and writes back. Two updates in a row to the same address are a read-after-write
hazard; the membrane read port is transparent for the write port (``forwarding=True``), which forwards the
value being written. ``forwarding=False`` exists only to show that the testbench catches the hazard.

Fire scan: cycle n reads the membranes at address n (and the first layer's stored input current); cycle n+1
compares with the threshold, resets, leaks, adds the bias, writes back, reports the trace and emits spikes.
On the last timestep it writes each neuron's initial value (its bias) instead, ready for the next sample;
an ``init`` scan does only that (after the configuration is written), without trace or spikes.
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .event_queue import EventQueue, entry_layout
from .geometry import LayerGeometry
from .memory_plan import SMALL_MEMORY_BITS
from .weight_store import WeightStore


def _ubits(n: int) -> int:
    return max(1, (max(n, 1) - 1).bit_length())


def _memory(width: int, depth: int) -> Memory:
    depth = max(2, depth)
    attrs = {"ram_style": "logic"} if width * depth <= SMALL_MEMORY_BITS else None
    return Memory(shape=signed(width), depth=depth, init=[], attrs=attrs)


def saturate(value, bits: int):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


class LayerUnit(wiring.Component):
    def __init__(self, geo: LayerGeometry, leak_shift: int, in_geo: LayerGeometry | None, data_bits: int,
                 forwarding: bool = True, weights_in_spram: bool = False):
        self.geo, self.leak_shift, self.in_geo, self.forwarding = geo, leak_shift, in_geo, forwarding
        self.weights_in_spram = weights_in_spram
        P, V = geo.lanes, geo.membrane_bits
        self.y_bits = _ubits(max(geo.height, geo.in_height))
        self.x_bits = _ubits(max(geo.width, geo.in_width))
        out_entry = entry_layout(P, _ubits(geo.groups), _ubits(geo.pooled_height), _ubits(geo.pooled_width))
        ports = {
            # control from the sequencer
            "ev_en": In(1), "fire_en": In(1), "last_t": In(1), "init": In(1),
            "ev_done": Out(1), "fire_done": Out(1),
            # configuration writes: region 0 weights (word address), 1 threshold, 2 bias (address = channel)
            "cfg_en": In(1), "cfg_region": In(2), "cfg_addr": In(24), "cfg_data": In(data_bits),
            # read-back while idle: cfg_rd with cfg_region/cfg_addr on cycle n, cfg_rd_data on cycle n+1
            "cfg_rd": In(1), "cfg_rd_data": Out(data_bits),
            # spikes for the next layer's queue
            "spike_valid": Out(1), "spike": Out(out_entry),
            # trace of every neuron update in the fire scan
            "trace_valid": Out(1), "trace_addr": Out(_ubits(geo.neuron_words)),
            "trace_lanes": Out(P), "trace_spikes": Out(P), "trace_v": Out(signed(V * P)),
        }
        if geo.first:  # input bit-plane events straight from the input stream
            ports.update({"in_valid": In(1), "in_ready": Out(1), "in_none": In(1), "in_last": In(1),
                          "in_channel": In(_ubits(geo.in_channels)), "in_y": In(self.y_bits),
                          "in_x": In(self.x_bits), "in_plane": In(3)})
        else:
            ports.update({"q_valid": In(1), "q_data": In(entry_layout(P, _ubits(in_geo.groups),
                                                                      _ubits(in_geo.pooled_height), _ubits(in_geo.pooled_width)))})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        g, P, V = self.geo, self.geo.lanes, self.geo.membrane_bits
        b = g.bits
        L = (1 << b) - 1
        nw = g.neuron_words

        # ---------------------------------------------------------------- memories
        m.submodules.weights = wmem = WeightStore(max(2, g.weight_words), P * b, self.weights_in_spram)
        banks, currents, thr, bias = [], [], [], []
        # configuration regions with a memory per lane; the output layer never compares: no threshold memory
        params = {1: ("threshold", thr), 2: ("bias", bias)} if g.fires else {2: ("bias", bias)}
        for j in range(P):
            mem = _memory(V, nw)
            m.submodules[f"membrane{j}"] = mem
            wp = mem.write_port()
            rp = mem.read_port(transparent_for=(wp,) if self.forwarding else ())
            banks.append((rp, wp))
            if g.first:
                cur = _memory(V, nw)
                m.submodules[f"current{j}"] = cur
                cwp = cur.write_port()
                crp = cur.read_port(transparent_for=(cwp,) if self.forwarding else ())
                currents.append((crp, cwp))
            for name, store in params.values():
                mem = _memory(V, g.groups)
                m.submodules[f"{name}{j}"] = mem
                store.append((mem.read_port(), mem.write_port()))

        lane_bits = _ubits(P) if P > 1 else 0
        cfg_lane = self.cfg_addr[:lane_bits] if P > 1 else Const(0, 1)
        cfg_entry = self.cfg_addr[lane_bits:]
        m.d.comb += [wmem.w_addr.eq(self.cfg_addr), wmem.w_data.eq(self.cfg_data),
                     wmem.w_en.eq(self.cfg_en & (self.cfg_region == 0))]
        for j in range(P):
            for region, (_, store) in params.items():
                _, wp = store[j]
                m.d.comb += [wp.addr.eq(cfg_entry), wp.data.eq(self.cfg_data[:V]),
                             wp.en.eq(self.cfg_en & (self.cfg_region == region) & (cfg_lane == j))]

        def lane_valid(group, j):
            last_lanes = g.channels - (g.groups - 1) * P
            return (group != g.groups - 1) | Const(j < last_lanes, 1)

        # ---------------------------------------------------------------- event pipeline, stage 0
        active = Signal()
        ev_c = Signal(_ubits(g.in_channels))
        ev_y, ev_x = Signal(self.y_bits), Signal(self.x_bits)
        ev_k = Signal(3)
        ky, kx, kyh, kxh, kxl = (Signal(2) for _ in range(5))
        grp = Signal(_ubits(g.groups))
        last_tuple = (grp == g.groups - 1) & ((g.kind != "conv") | ((ky == kyh) & (kx == kxh)))
        ready = ~active | last_tuple

        # the event source: the input stream for the first layer, the queue otherwise
        src_valid, src_c, src_y, src_x, src_k, src_none = Signal(), Signal(ev_c.shape()), Signal(self.y_bits), Signal(self.x_bits), Signal(3), Signal()
        if g.first:
            last_seen = Signal()
            with m.If(~self.ev_en):
                m.d.sync += last_seen.eq(0)
            m.d.comb += [self.in_ready.eq(self.ev_en & ~last_seen & ready),
                         src_valid.eq(self.in_valid & ~last_seen), src_none.eq(self.in_none),
                         src_c.eq(self.in_channel), src_y.eq(self.in_y), src_x.eq(self.in_x), src_k.eq(self.in_plane)]
            with m.If(self.in_valid & self.in_ready & self.in_last):
                m.d.sync += last_seen.eq(1)
            source_empty = last_seen
        else:
            ig = self.in_geo
            depth = ig.groups * ig.out_positions
            m.submodules.queue = queue = EventQueue(P, ig.groups, _ubits(ig.pooled_height), _ubits(ig.pooled_width), depth)
            m.d.comb += [queue.w_valid.eq(self.q_valid), queue.w_data.eq(self.q_data),
                         queue.ev_ready.eq(self.ev_en & ready),
                         src_valid.eq(queue.ev_valid), src_c.eq(queue.ev.channel), src_y.eq(queue.ev.y), src_x.eq(queue.ev.x)]
            source_empty = queue.empty

        take = self.ev_en & ready & src_valid
        with m.If(~self.ev_en):
            m.d.sync += active.eq(0)
        with m.Elif(take & ~src_none):
            # valid kernel rows/cols: outputs (y - ky + 1, x - kx + 1) inside the map
            lo_y = Mux(src_y + 2 > g.height, src_y + 2 - g.height, 0)
            lo_x = Mux(src_x + 2 > g.width, src_x + 2 - g.width, 0)
            m.d.sync += [active.eq(1), ev_c.eq(src_c), ev_y.eq(src_y), ev_x.eq(src_x), ev_k.eq(src_k), grp.eq(0),
                         ky.eq(lo_y), kx.eq(lo_x), kxl.eq(lo_x),
                         kyh.eq(Mux(src_y + 1 > 2, 2, src_y + 1)), kxh.eq(Mux(src_x + 1 > 2, 2, src_x + 1))]
        with m.Elif(active & last_tuple):
            m.d.sync += active.eq(0)  # (an empty-image marker taken here starts nothing)
        with m.Elif(active):
            with m.If(grp == g.groups - 1):
                m.d.sync += grp.eq(0)
                with m.If(kx == kxh):
                    m.d.sync += [kx.eq(kxl), ky.eq(ky + 1)]
                with m.Else():
                    m.d.sync += kx.eq(kx + 1)
            with m.Else():
                m.d.sync += grp.eq(grp + 1)

        if g.kind == "conv":
            row = (ev_c * 9 + ky * 3 + kx)
            oy = (ev_y + 1 - ky)[:self.y_bits]
            ox = (ev_x + 1 - kx)[:self.x_bits]
            p = g.pool
            ev_addr = ((grp * g.pooled_height + (oy >> (p - 1))) * g.pooled_width + (ox >> (p - 1))) * (p * p) \
                + ((oy & (p - 1)) * p + (ox & (p - 1)) if p > 1 else 0)
        else:
            ig = self.in_geo
            row = ev_c * ig.out_positions + ev_y * ig.pooled_width + ev_x if ig is not None else ev_c
            ev_addr = grp
        issue = active  # one update per cycle while an event is active
        m.d.comb += wmem.r_addr.eq(Mux(self.cfg_rd, self.cfg_addr, row * g.groups + grp))

        # ---------------------------------------------------------------- fire scan, stage 0
        pw = g.pool * g.pool
        scan = Signal(_ubits(nw + 1))
        scan_done = Signal()
        scan_grp = Signal(_ubits(g.groups))
        scan_w = Signal(2)
        scan_py = Signal(_ubits(g.pooled_height))
        scan_px = Signal(_ubits(g.pooled_width))
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

        # membrane (or, for the first layer's events, current) read address
        read_addr = Mux(firing, scan, ev_addr)
        for j in range(P):
            rp, _ = banks[j]
            m.d.comb += rp.addr.eq(read_addr)
            if g.first:
                m.d.comb += currents[j][0].addr.eq(read_addr)
            for _, store in params.values():
                m.d.comb += store[j][0].addr.eq(Mux(self.cfg_rd, cfg_entry, scan_grp))

        # read-back mux, one cycle after the address
        rd_region = Signal(2)
        rd_lane = Signal.like(cfg_lane)
        m.d.sync += [rd_region.eq(self.cfg_region), rd_lane.eq(cfg_lane)]
        with m.Switch(rd_region):
            with m.Case(0):
                m.d.comb += self.cfg_rd_data.eq(wmem.r_data)
            for region, (_, store) in params.items():
                with m.Case(region):
                    for j in range(P):
                        with m.If(rd_lane == j):
                            m.d.comb += self.cfg_rd_data.eq(store[j][0].data.as_unsigned())

        # ---------------------------------------------------------------- stage 1 registers
        s1_ev, s1_fire = Signal(), Signal()
        s1_addr = Signal(_ubits(nw))
        s1_grp = Signal(_ubits(g.groups))
        s1_k = Signal(3)
        s1_last_t = Signal()
        s1_init = Signal()
        s1_py, s1_px = Signal.like(scan_py), Signal.like(scan_px)
        s1_w = Signal(2)
        m.d.sync += [s1_ev.eq(issue & self.ev_en), s1_fire.eq(firing), s1_last_t.eq(self.last_t | self.init),
                     s1_init.eq(self.init),
                     s1_addr.eq(Mux(firing, scan, ev_addr)), s1_grp.eq(Mux(firing, scan_grp, grp)), s1_k.eq(ev_k),
                     s1_py.eq(scan_py), s1_px.eq(scan_px), s1_w.eq(scan_w)]

        # ---------------------------------------------------------------- stage 1: event update
        word = wmem.r_data
        target = currents if g.first else banks
        for j in range(P):
            q = word[j * b:(j + 1) * b]
            w = Signal(signed(b + 2))
            m.d.comb += w.eq(q * 2 - L)
            inc = Signal(signed(V + 1))
            if g.first:
                m.d.comb += inc.eq((w << g.weight_shift) << s1_k)
            else:
                m.d.comb += inc.eq(w << g.weight_shift)
            rp, wp = target[j]
            total = Signal(signed(V + 2))
            m.d.comb += total.eq(rp.data + inc)
            with m.If(s1_ev):
                m.d.comb += [wp.addr.eq(s1_addr), wp.data.eq(saturate(total, V)), wp.en.eq(lane_valid(s1_grp, j))]

        # ---------------------------------------------------------------- stage 1: fire
        spikes = Signal(P)
        lanes_ok = Signal(P)
        vs = []
        for j in range(P):
            rp, wp = banks[j]
            v = Signal(signed(V + 1), name=f"v{j}")
            m.d.comb += v.eq(rp.data + currents[j][0].data if g.first else rp.data)
            vs.append(v)
            bi = bias[j][0].data
            m.d.comb += lanes_ok[j].eq(lane_valid(s1_grp, j))
            if g.fires:
                m.d.comb += spikes[j].eq(lanes_ok[j] & (v >= thr[j][0].data))
                after = Mux(spikes[j], 0, v)
                nxt = saturate((after >> self.leak_shift) + bi, V)
            else:
                nxt = saturate(v + bi, V)
            with m.If(s1_fire):
                m.d.comb += [wp.addr.eq(s1_addr), wp.data.eq(Mux(s1_last_t, bi, nxt)), wp.en.eq(lanes_ok[j])]
                if g.first:
                    cwp = currents[j][1]
                    m.d.comb += [cwp.addr.eq(s1_addr), cwp.data.eq(0), cwp.en.eq(lanes_ok[j] & s1_last_t)]
        m.d.comb += [self.trace_valid.eq(s1_fire & ~s1_init), self.trace_addr.eq(s1_addr), self.trace_lanes.eq(lanes_ok),
                     self.trace_spikes.eq(spikes), self.trace_v.eq(Cat(*[v[:V] for v in vs]))]

        # spikes out: OR over the pool window (consecutive addresses), one queue entry per window
        if g.fires:
            acc = Signal(P)
            window_mask = acc | spikes
            end_of_window = (s1_w == pw - 1) if pw > 1 else Const(1, 1)
            with m.If(s1_fire):
                m.d.sync += acc.eq(Mux(end_of_window, 0, window_mask))
            m.d.comb += [self.spike_valid.eq(s1_fire & ~s1_init & end_of_window & (window_mask != 0)),
                         self.spike.group.eq(s1_grp), self.spike.mask.eq(window_mask)]
            if g.kind == "conv":
                m.d.comb += [self.spike.y.eq(s1_py), self.spike.x.eq(s1_px)]

        # ---------------------------------------------------------------- done flags
        m.d.comb += [self.ev_done.eq(self.ev_en & ~active & ~s1_ev & (source_empty if g.first else ~src_valid)),
                     self.fire_done.eq(self.fire_en & scan_done & ~s1_fire)]
        return m
