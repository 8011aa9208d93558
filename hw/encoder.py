"""The first layer as a spike-train encoder: no membrane memory, no current memory, one pass per sample.

The image is static, so the first layer's input current is the same at every timestep, and each neuron's
whole spike train follows from that current alone. The encoder keeps the image (not events), computes each
neuron's current once, output-stationary, and runs the T LIF steps of that neuron in a pipeline:

    load:  the sample's pixels, raster order, into the image buffer (one per cycle), while
    run:   for each group of P output channels, each neuron position in window-major order,
           each input channel: read its 3x3 neighbourhood and the P x 9 weights, multiply and add
           (``taps`` = 9: the whole neighbourhood per cycle from nine interleaved image banks;
           ``taps`` = 1: one kernel offset per cycle from one buffer), then
           LIF t = 0 .. T-1: V = sat(S + I); spike = V >= theta; S = sat(((spike ? 0 : V) >> leak) + bias)
           (T pipelined stages with ``taps`` = 9; with ``taps`` = 1 one stage steps through the T timesteps
           while the next neuron accumulates)

Kernel-parallel, load and run overlap (`LayerGeometry.overlaps_load`): a neuron is issued once the last
pixel its window reads is in (`pixel_needed` in the cycle model, the same formula), so the first layer
trails the incoming image by about one row instead of waiting for all of it. While the image is incomplete
and no pixel is offered, the whole encoder is frozen (``advance`` low, an `EnableInserter`): a cycle spent
waiting for the link is no cycle of the encoder's, and its schedule is the same however the pixels arrive.
Serial, the encoder reads its parameters while the image loads and issues nothing before the last pixel:
nothing it does depends on when pixels arrive, so it needs no freeze (and no enable on every flip-flop).

The integer semantics are the golden model's (`qpsnn.sw.golden`), only the schedule differs: trace record
t of a neuron leaves LIF stage t, and its spikes (OR-pooled over the window) go to region t of the next
layer's queue. Per group: P + 1 cycles to read the thresholds and biases lane by lane into registers, the issue cycles,
then the pipeline drains before the next group (so the parameters are one register set, not one per stage).
Latency from a neuron's last issue to its trace record t: ``LATENCY + t`` cycles.
"""
from __future__ import annotations

from types import SimpleNamespace

from amaranth import Array, Cat, Const, EnableInserter, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .event_queue import entry_layout
from .geometry import ENCODER_LATENCY, KERNEL, PARALLEL_OFFSETS, LayerGeometry
from .kernel_weights import KernelWeights
from .interleave import bank_of_offset, neighbour_in_bank, split
from .params import (LaneParams, Placement, cmul, drain_and_done_states, emit_neuron, load_lane_params, saturate,
                     step_window_major, ubits)
from .records import ADDR_BITS, trace_layout
from .weight_store import WeightStore

LATENCY = ENCODER_LATENCY  # issue -> image/weight data -> products -> current -> LIF stage 0


class Encoder(wiring.Component):
    def __init__(self, geo: LayerGeometry, timesteps: int, leak_shift: int, data_bits: int,
                 placement: Placement = Placement(), fault: str | None = None):
        assert geo.kind == "conv" and geo.first
        self.geo, self.T, self.leak_shift, self.placement, self.fault = geo, timesteps, leak_shift, placement, fault
        self.taps = geo.weight_memories  # 9: kernel-parallel, 1: one offset per cycle
        # serial, the parameters are read while the image loads, with no freeze: they must be in by its end
        assert geo.overlaps_load or geo.in_channels * geo.height * geo.width >= geo.lanes + 2
        # one offset per cycle leaves 9 C issue cycles per neuron: room for one LIF datapath to step through T
        self.serial_lif = self.taps == 1 and timesteps <= PARALLEL_OFFSETS * geo.in_channels
        P, V = geo.lanes, geo.membrane_bits
        self.entry = entry_layout(P, ubits(geo.groups), ubits(geo.pooled_height), ubits(geo.pooled_width))
        super().__init__({
            "pixels": In(stream.Signature(unsigned(8))),
            "load_en": In(1), "load_done": Out(1), "run_en": In(1), "run_done": Out(1), "advance": Out(1),
            "cfg_en": In(1), "cfg_region": In(2), "cfg_addr": In(ADDR_BITS), "cfg_data": In(data_bits),
            "cfg_rd": In(1), "cfg_rd_data": Out(data_bits),
            "spike_valid": Out(timesteps), "spikes": Out(data.ArrayLayout(self.entry, timesteps)),
            "trace": Out(data.ArrayLayout(trace_layout(P, V), timesteps)),
        })

    @property
    def issue_cycles_per_neuron(self) -> int:
        return self.geo.in_channels * (PARALLEL_OFFSETS // self.taps)

    def elaborate(self, platform):
        m = Module()
        g, T, taps = self.geo, self.T, self.taps
        P, V, b = g.lanes, g.membrane_bits, g.bits
        C, H, W, G, p = g.in_channels, g.height, g.width, g.groups, g.pool
        L = (1 << b) - 1
        pw = p * p

        # ------------------------------------------------------------ image buffer
        if taps == PARALLEL_OFFSETS:
            BH, BW = -(-H // KERNEL), -(-W // KERNEL)
            images = []
            for r in range(PARALLEL_OFFSETS):
                mem = Memory(shape=8, depth=max(2, C * BH * BW), init=[])
                m.submodules[f"image{r}"] = mem
                images.append((mem.read_port(), mem.write_port()))
        elif self.placement.image_in_spram:  # single-ported: the serial encoder reads only once the image is in
            m.submodules.image = store = WeightStore(max(2, C * H * W), 8, spram=True)
            images = [(SimpleNamespace(addr=store.r_addr, data=store.r_data),
                       SimpleNamespace(addr=store.w_addr, en=store.w_en, data=store.w_data))]
        else:
            mem = Memory(shape=8, depth=max(2, C * H * W), init=[])
            m.submodules.image = mem
            images = [(mem.read_port(), mem.write_port())]

        # load: one pixel per cycle, raster order; (y mod 3, y div 3) kept by counters
        lc, ly, lx = Signal(range(max(C, 2))), Signal(range(max(H, 2))), Signal(range(max(W, 2)))
        ly3, lyq, lx3, lxq = Signal(2), Signal(range(max(H, 2))), Signal(2), Signal(range(max(W, 2)))
        loaded = Signal(range(C * H * W + 1))
        full = loaded == C * H * W
        m.d.comb += [self.pixels.ready.eq(self.load_en & ~full), self.load_done.eq(self.load_en & full),
                     self.advance.eq(~(self.load_en & ~full & ~self.pixels.valid))]
        take = self.pixels.valid & self.pixels.ready
        for r, (_, wp) in enumerate(images):
            if taps == PARALLEL_OFFSETS:
                m.d.comb += [wp.addr.eq(cmul(cmul(lc, BH) + lyq, BW) + lxq), wp.en.eq(take & (cmul(ly3, KERNEL) + lx3 == r))]
            else:
                m.d.comb += [wp.addr.eq(loaded), wp.en.eq(take)]
            m.d.comb += wp.data.eq(self.pixels.payload)
        with m.If(~self.load_en):
            m.d.sync += [loaded.eq(0), lc.eq(0), ly.eq(0), lx.eq(0), ly3.eq(0), lyq.eq(0), lx3.eq(0), lxq.eq(0)]
        with m.Elif(take):
            m.d.sync += loaded.eq(loaded + 1)
            with m.If(lx != W - 1):
                m.d.sync += [lx.eq(lx + 1), lx3.eq(Mux(lx3 == 2, 0, lx3 + 1)), lxq.eq(lxq + (lx3 == 2))]
            with m.Else():
                m.d.sync += [lx.eq(0), lx3.eq(0), lxq.eq(0)]
                with m.If(ly != H - 1):
                    m.d.sync += [ly.eq(ly + 1), ly3.eq(Mux(ly3 == 2, 0, ly3 + 1)), lyq.eq(lyq + (ly3 == 2))]
                with m.Else():
                    m.d.sync += [ly.eq(0), ly3.eq(0), lyq.eq(0), lc.eq(lc + 1)]

        # ------------------------------------------------------------ weights, thresholds, biases
        m.submodules.weights = wts = KernelWeights(C * G * (PARALLEL_OFFSETS // taps), P * b, taps,
                                                 self.placement.weights_in_spram)
        m.submodules.params = params = LaneParams(P, V, G, fires=True, per_channel=True,
                                                       small_in_bram=self.placement.small_in_bram)
        m.d.comb += [wts.w_addr.eq(self.cfg_addr), wts.w_data.eq(self.cfg_data),
                     wts.w_en.eq(self.cfg_en & (self.cfg_region == 0)), wts.rd.eq(self.cfg_rd), wts.rd_addr.eq(self.cfg_addr)]
        m.d.comb += [params.cfg_en.eq(self.cfg_en), params.cfg_region.eq(self.cfg_region), params.cfg_addr.eq(self.cfg_addr),
                     params.cfg_data.eq(self.cfg_data), params.cfg_rd.eq(self.cfg_rd)]
        rd_region = Signal(2)
        m.d.sync += rd_region.eq(self.cfg_region)
        m.d.comb += self.cfg_rd_data.eq(Mux(rd_region == 0, wts.rd_data, params.cfg_rd_data))

        # ------------------------------------------------------------ run: issue (stage 0)
        grp = Signal(range(max(G, 2)))
        py, px = Signal(range(max(g.pooled_height, 2))), Signal(range(max(g.pooled_width, 2)))
        w = Signal(range(max(pw, 2)))
        c = Signal(range(max(C, 2)))
        ky, kx = Signal(2), Signal(2)  # taps == 1: the kernel offset being issued
        neuron = Signal(range(g.neuron_words + 1))  # window-major address, the trace's name of the neuron
        dy, dx = (w >> 1, w & 1) if p == 2 else (Const(0, 1), Const(0, 1))
        y, x = Signal(range(max(H, 2))), Signal(range(max(W, 2)))
        m.d.comb += [y.eq(cmul(py, p) + dy), x.eq(cmul(px, p) + dx)]
        last_tap = (c == C - 1) & ((ky == 2) & (kx == 2) if taps == 1 else 1)
        last_in_group = (py == g.pooled_height - 1) & (px == g.pooled_width - 1) & (w == pw - 1) & last_tap
        issuing = Signal()
        theta = Signal(data.ArrayLayout(signed(V), P))
        bias = Signal(data.ArrayLayout(signed(V), P))
        param_lane = Signal(range(P + 1))
        m.d.comb += params.r_addr.eq(cmul(grp, P) + param_lane)

        # the last pixel of this neuron's window (input channel c) must be in; "pixel-race" is the bug of not waiting
        if g.overlaps_load:
            need = cmul(cmul(c, H) + Mux(y == H - 1, H - 1, y + 1), W) + Mux(x == W - 1, W - 1, x + 1)
            pixel_in = full | (need < loaded) | (self.fault == "pixel-race")
        else:
            pixel_in = full

        (y3, yq), (x3, xq) = split(y), split(x)
        if taps == PARALLEL_OFFSETS:
            for r, (rp, _) in enumerate(images):
                word_y = neighbour_in_bank(y, y3, yq, r // KERNEL, H)[2]
                word_x = neighbour_in_bank(x, x3, xq, r % KERNEL, W)[2]
                m.d.comb += rp.addr.eq(cmul(cmul(c, BH) + word_y, BW) + word_x)
            m.d.comb += wts.r_addr.eq(cmul(c, G) + grp)
        else:
            ny = (y + ky - 1)[:len(y)]
            nx = (x + kx - 1)[:len(x)]
            m.d.comb += [images[0][0].addr.eq(cmul(cmul(c, H) + ny, W) + nx),
                         wts.r_addr.eq(cmul(cmul(cmul(c, KERNEL) + ky, KERNEL) + kx, G) + grp)]

        # stage 1 registers: which image bank feeds each kernel offset, and whether that neighbour exists
        s1 = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1, "tapmask": PARALLEL_OFFSETS,
                                       "bank": data.ArrayLayout(unsigned(4), PARALLEL_OFFSETS)}))
        m.d.sync += [s1.valid.eq(issuing), s1.first.eq((c == 0) & ((ky == 0) & (kx == 0) if taps == 1 else 1)),
                     s1.last.eq(last_tap)]
        def exists(u, k, size):  # input u + k - 1 lies inside the map
            return u >= 1 if k == 0 else (u + 1 < size if k == 2 else 1)

        for k in range(PARALLEL_OFFSETS if taps == PARALLEL_OFFSETS else 0):
            oy, ox = divmod(k, KERNEL)
            m.d.sync += [s1.tapmask[k].eq(exists(y, oy, H) & exists(x, ox, W)),
                         s1.bank[k].eq(cmul(bank_of_offset(y3, oy), KERNEL) + bank_of_offset(x3, ox))]
        if taps == 1:  # one offset: its neighbour exists when (y + ky - 1, x + kx - 1) is inside the map
            inside = ((y + ky >= 1) & (y + ky <= H)) & ((x + kx >= 1) & (x + kx <= W))
            m.d.sync += s1.tapmask[0].eq(inside)

        # neuron bookkeeping travels with the data: position, window slot, group, address
        tag = data.StructLayout({"addr": unsigned(ADDR_BITS), "grp": unsigned(ubits(G)), "py": unsigned(ubits(g.pooled_height)),
                                 "px": unsigned(ubits(g.pooled_width)), "eow": 1})
        s1_tag, s2_tag = Signal(tag), Signal(tag)
        m.d.sync += [s1_tag.addr.eq(neuron), s1_tag.grp.eq(grp), s1_tag.py.eq(py), s1_tag.px.eq(px),
                     s1_tag.eow.eq(w == pw - 1), s2_tag.eq(s1_tag)]

        # ------------------------------------------------------------ stage 1: products (registered)
        n_prod = PARALLEL_OFFSETS if taps == PARALLEL_OFFSETS else 1
        pixel_bits = 9  # zero-extended into a signed operand
        prods = Signal(data.ArrayLayout(data.ArrayLayout(signed(b + 2 + pixel_bits), n_prod), P))
        s2 = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1}))
        m.d.sync += [s2.valid.eq(s1.valid), s2.first.eq(s1.first), s2.last.eq(s1.last)]
        bank_data = Array(rp.data for rp, _ in images)
        for k in range(n_prod):
            pixel = Signal(signed(pixel_bits), name=f"pixel{k}")
            src = bank_data[s1.bank[k]] if taps == PARALLEL_OFFSETS else images[0][0].data
            m.d.comb += pixel.eq(Mux(s1.tapmask[k], src, 0))
            word = wts.r_data[k]
            for j in range(P):
                weight = Signal(signed(b + 2), name=f"w{k}_{j}")
                m.d.comb += weight.eq((word[j * b:(j + 1) * b] << 1) - L)
                m.d.sync += prods[j][k].eq(weight * pixel)

        # ------------------------------------------------------------ stage 2: sum and accumulate
        acc = Signal(data.ArrayLayout(signed(V + 1), P))
        complete = Signal()  # acc holds a neuron's whole (unshifted) current this cycle
        m.d.sync += complete.eq(s2.valid & s2.last)
        r0_tag = Signal(tag)
        m.d.sync += r0_tag.eq(s2_tag)
        for j in range(P):
            total = sum(prods[j][k] for k in range(n_prod))
            with m.If(s2.valid):
                m.d.sync += acc[j].eq(Mux(s2.first, 0, acc[j]) + total)

        # ------------------------------------------------------------ LIF: T steps per neuron
        last_lanes = g.channels - (G - 1) * P
        cur_layout, state_layout = data.ArrayLayout(signed(V + 1), P), data.ArrayLayout(signed(V), P)
        current0 = Signal(cur_layout)
        m.d.comb += current0.eq(Cat(*[(acc[j] << g.weight_shift)[:V + 1] for j in range(P)]))

        def lif_step(state, current, tg, name):
            """One timestep of P neurons: (lanes in use, membranes, spikes, next states)."""
            ok = Signal(P, name=f"lanes_ok{name}")
            m.d.comb += ok.eq(Mux(tg.grp == G - 1, (1 << last_lanes) - 1, (1 << P) - 1))
            v = [Signal(signed(V), name=f"v{name}_{j}") for j in range(P)]
            spikes = Signal(P, name=f"spikes{name}")
            nxt = []
            for j in range(P):
                m.d.comb += [v[j].eq(saturate(state[j] + current[j], V)), spikes[j].eq(ok[j] & (v[j] >= theta[j]))]
                after = v[j] if self.fault == "no-reset" else Mux(spikes[j], 0, v[j])
                nxt.append(saturate((after >> self.leak_shift) + bias[j], V))
            return ok, v, spikes, nxt

        def emit(t, valid, tg, ok, v, spikes):
            """Trace record t, and the window's OR-pooled spikes into region t of the next layer's queue."""
            if g.overlaps_load:
                valid = valid & self.advance  # a frozen cycle shows nothing (its outputs are held, not new)
            emit_neuron(m, t, valid, tg, ok, v, spikes, self.trace[t], self.spike_valid[t], self.spikes[t])

        if self.serial_lif:
            # one datapath steps a neuron through its T timesteps while the next neuron accumulates (9 C >= T
            # issue cycles apart): the same record cycles as the unrolled pipeline, a T-th of the logic
            busy_lif = Signal()
            step = Signal(range(max(T, 2)))
            held_cur, held_state, held_tag = Signal(cur_layout), Signal(state_layout), Signal(tag)
            tg, t_in = Signal(tag), Signal(range(max(T, 2)))
            cur_in, state_in = Signal(cur_layout), Signal(state_layout)
            m.d.comb += [tg.eq(Mux(complete, r0_tag.as_value(), held_tag.as_value())), t_in.eq(Mux(complete, 0, step)),
                         cur_in.eq(Mux(complete, current0.as_value(), held_cur.as_value())),
                         state_in.eq(Mux(complete, bias.as_value(), held_state.as_value()))]
            active = complete | busy_lif
            ok, v, spikes, nxt = lif_step(state_in, cur_in, tg, "")
            m.d.sync += [busy_lif.eq(active & (t_in != T - 1)), step.eq(t_in + 1), held_cur.eq(cur_in), held_tag.eq(tg)]
            m.d.sync += [held_state[j].eq(nxt[j]) for j in range(P)]
            for t in range(T):
                emit(t, active & (t_in == t), tg, ok, v, spikes)
            lif_busy = [complete, busy_lif]
        else:
            # T pipelined stages: stage t holds a neuron's state before timestep t
            valid_t, current_t, state_t, tag_t = [complete], [current0], [bias], [r0_tag]
            for t in range(T):
                ok, v, spikes, nxt = lif_step(state_t[t], current_t[t], tag_t[t], str(t))
                emit(t, valid_t[t], tag_t[t], ok, v, spikes)
                if t + 1 < T:
                    nv, ncur = Signal(name=f"valid{t + 1}"), Signal(cur_layout, name=f"current{t + 1}")
                    nstate, ntag = Signal(state_layout, name=f"state{t + 1}"), Signal(tag, name=f"tag{t + 1}")
                    m.d.sync += [nv.eq(valid_t[t]), ncur.eq(current_t[t]), ntag.eq(tag_t[t])]
                    m.d.sync += [nstate[j].eq(nxt[j]) for j in range(P)]
                    valid_t.append(nv)
                    current_t.append(ncur)
                    state_t.append(nstate)
                    tag_t.append(ntag)
            lif_busy = valid_t
        busy_pipe = Cat(s1.valid, s2.valid, *lif_busy).any()

        # ------------------------------------------------------------ run sequencing
        with m.FSM(name="encoder"):
            with m.State("IDLE"):
                m.d.sync += [grp.eq(0), py.eq(0), px.eq(0), w.eq(0), c.eq(0), ky.eq(0), kx.eq(0), neuron.eq(0)]
                with m.If(self.run_en):
                    m.next = "PARAMS"
            with m.State("PARAMS"):  # this group's thresholds and biases, one lane per cycle (latency 1)
                load_lane_params(m, param_lane, P, V, theta, bias, params.r_theta, params.r_bias, "ISSUE")
            with m.State("ISSUE"):
                m.d.comb += issuing.eq(pixel_in)
                # innermost: kernel offset (taps == 1), input channel, window slot, x, y
                step_tap = Signal()
                if taps == 1:
                    with m.If(issuing & (kx != 2)):
                        m.d.sync += kx.eq(kx + 1)
                    with m.Elif(issuing):
                        m.d.sync += kx.eq(0)
                        with m.If(ky != 2):
                            m.d.sync += ky.eq(ky + 1)
                        with m.Else():
                            m.d.sync += ky.eq(0)
                            m.d.comb += step_tap.eq(1)
                else:
                    m.d.comb += step_tap.eq(issuing)
                with m.If(step_tap):
                    with m.If(c != C - 1):
                        m.d.sync += c.eq(c + 1)
                    with m.Else():
                        m.d.sync += [c.eq(0), neuron.eq(neuron + 1)]
                        step_window_major(m, w, px, py, pw, g.pooled_width, g.pooled_height)
                with m.If(issuing & last_in_group):
                    m.next = "DRAIN"
            drain_and_done_states(m, busy_pipe, grp, G, self.run_en, self.run_done)
        return EnableInserter({"sync": self.advance})(m) if g.overlaps_load else m
