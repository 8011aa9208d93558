"""A hidden conv layer run time-unrolled and dense: no membrane memory, no event queue, one pass per sample.

The event-driven `LayerUnit` keeps a membrane per neuron and a spike queue per timestep; on the iCE40UP5K
the membranes alone of a 16-channel 14 x 14 layer take more block RAM than the part has. But the membrane
width is chosen so that saturation never triggers while a timestep's current adds up (Contract 1), so the
order of a neuron's additions cannot change anything, and the layer can run output-stationary, like the
encoder, one neuron after another with its whole spike train:

    map:  the previous layer's trace records (timestep t in slot t), OR-pooled over each window, into a spike
          map: per timestep one memory with a word of all input channels per position, written in the
          records' own order (counters, not dividers, name each record's position and channel group)
    run:  for each group of P output channels, each neuron position in window-major order, each kernel
          offset: read the neighbour's channels at every timestep and the C_in x P weight codes (one store
          per input channel, read together), add per lane and timestep the codes of the inputs that spiked
          (sum (2q - L) = 2 sum q - L popcount), and accumulate one current per timestep; then
          LIF t = 0 .. T-1: V = sat(S + I_t); spike = V >= theta; S = sat(((spike ? 0 : V) >> leak) + bias),
          one datapath of Q = P / S lanes taking S steps per timestep (`lif_steps`: T S <= 9, so it is done
          before the next neuron's currents are), its thresholds and biases read from their memory a step
          ahead, not kept in registers

It costs 9 G positions cycles whatever the spikes, and no memory that grows with the neurons. Its records
and its output spikes are the encoder's: record t of a neuron leaves the LIF datapath ``LATENCY + (t + 1) S - 1``
cycles after the neuron's last issue (its last step), and the window's OR-pooled spikes go to region t of
the next layer's queue. The integer semantics are the golden model's (`qpsnn.sw.golden`); only the schedule
differs.
"""
from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .event_queue import entry_layout
from .geometry import ENCODER_LATENCY, KERNEL, PARALLEL_OFFSETS, LayerGeometry, lif_steps
from qpsnn.sw.protocol import REGION_BIAS, REGION_THRESHOLD, REGION_WEIGHTS

from .params import (Placement, cmul, drain_and_done_states, emit_neuron, packed_memory, saturate,
                     step_window_major, ubits)
from .records import ADDR_BITS, trace_layout

LATENCY = ENCODER_LATENCY  # issue -> map/weight data -> code sums -> currents -> LIF step 0


class ChannelWeights(wiring.Component):
    """An unrolled layer's weights: one store per input channel, all read at one address. The file's row order
    (c, ky, kx) puts channel c's rows in one range; the host pads each to ``stride`` words, a power of two, so
    a write's store is its address's high bits (`qpsnn.sw.device.model_words`)."""

    def __init__(self, channels: int, stride: int, width: int):
        self.channels, self.stride, self.width = channels, stride, width
        super().__init__({
            "w_addr": In(ADDR_BITS), "w_data": In(width), "w_en": In(1),
            "r_addr": In(range(stride)), "r_data": Out(data.ArrayLayout(unsigned(width), channels)),
            "rd": In(1), "rd_addr": In(ADDR_BITS), "rd_data": Out(width),  # read-back: rd_data on the next cycle
        })

    def elaborate(self, platform):
        m = Module()
        k = (self.stride - 1).bit_length()
        store_of = self.w_addr[k:]
        rd_store = Signal(range(max(self.channels, 2)))
        m.d.sync += rd_store.eq(self.rd_addr[k:])
        for c in range(self.channels):
            m.submodules[f"channel{c}"] = mem = packed_memory(self.width, self.stride)
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [wp.addr.eq(self.w_addr[:k]), wp.data.eq(self.w_data), wp.en.eq(self.w_en & (store_of == c)),
                         rp.addr.eq(Mux(self.rd, self.rd_addr[:k], self.r_addr)), self.r_data[c].eq(rp.data)]
        m.d.comb += self.rd_data.eq(Array(self.r_data[c] for c in range(self.channels))[rd_store])
        return m


def tree_sum(values):
    """The sum of unsigned values as a balanced tree of adders, each one bit wider than its operands: a
    Python ``sum`` is a chain whose every adder is one bit wider than the last (16 four-bit codes: adders of
    5 .. 19 bits instead of 5 .. 8)."""
    level = list(values)
    while len(level) > 1:
        level = [level[i] + level[i + 1] for i in range(0, len(level) - 1, 2)] + level[len(level) & ~1:]
    return level[0]


class UnrolledLayer(wiring.Component):
    def __init__(self, geo: LayerGeometry, in_geo: LayerGeometry, timesteps: int, leak_shift: int, data_bits: int,
                 placement: Placement = Placement(), fault: str | None = None):
        assert geo.unrolled and in_geo.time_unrolled and timesteps <= PARALLEL_OFFSETS
        self.geo, self.in_geo, self.T, self.leak_shift = geo, in_geo, timesteps, leak_shift
        self.placement, self.fault = placement, fault
        P, V = geo.lanes, geo.membrane_bits
        self.entry = entry_layout(P, ubits(geo.groups), ubits(geo.pooled_height), ubits(geo.pooled_width))
        super().__init__({
            "run_en": In(1), "run_done": Out(1),
            # the previous layer's records, slot t = timestep t (its `trace`)
            "records": In(data.ArrayLayout(trace_layout(in_geo.lanes, in_geo.membrane_bits), timesteps)),
            "cfg_en": In(1), "cfg_region": In(2), "cfg_addr": In(ADDR_BITS), "cfg_data": In(data_bits),
            "cfg_rd": In(1), "cfg_rd_data": Out(data_bits),
            "spike_valid": Out(timesteps), "spikes": Out(data.ArrayLayout(self.entry, timesteps)),
            "trace": Out(data.ArrayLayout(trace_layout(P, V), timesteps)),
        })

    def elaborate(self, platform):
        m = Module()
        g, ig, T = self.geo, self.in_geo, self.T
        P, V, b, G, p = g.lanes, g.membrane_bits, g.bits, g.groups, g.pool
        C, H, W = g.in_channels, g.height, g.width
        L = (1 << b) - 1
        pw = p * p

        # ------------------------------------------------------------ spike map (written from the records)
        maps = []
        Pi, Gi, pwi = ig.lanes, ig.groups, ig.pool * ig.pool
        for t in range(T):
            mem = Memory(shape=Gi * Pi, depth=max(2, H * W), init=[])
            m.submodules[f"map{t}"] = mem
            wp, rp = mem.write_port(granularity=Pi), mem.read_port()
            maps.append(rp)
            rec = self.records[t]
            window = Signal(Pi, name=f"map_window{t}")
            slot = Signal(range(max(pwi, 2)), name=f"map_slot{t}")
            pos = Signal(range(max(H * W, 2)), name=f"map_pos{t}")
            grp = Signal(range(max(Gi, 2)), name=f"map_grp{t}")
            # "map-no-or": the bug of keeping a window's last record instead of OR-pooling all of them
            mask = (rec.spikes & rec.lanes) | (0 if self.fault == "map-no-or" else window)
            eow = slot == pwi - 1
            with m.If(rec.valid):
                m.d.sync += [slot.eq(Mux(eow, 0, slot + 1)), window.eq(Mux(eow, 0, mask))]
                with m.If(eow):
                    m.d.sync += pos.eq(Mux(pos == H * W - 1, 0, pos + 1))
                    with m.If(pos == H * W - 1):
                        m.d.sync += grp.eq(Mux(grp == Gi - 1, 0, grp + 1))
            m.d.comb += [wp.addr.eq(pos), wp.data.eq(mask.replicate(Gi)),
                         wp.en.eq(Mux(rec.valid & eow, 1 << grp, 0))]

        # ------------------------------------------------------------ weights, thresholds, biases
        m.submodules.weights = wts = ChannelWeights(C, g.channel_stride, P * b)
        # the LIF takes Q lanes per step, S steps per timestep: each word holds Q channels' threshold and bias
        # side by side (Q = 1: two V-bit memories of a few words would take two block RAMs each on the iCE40,
        # V > 16, one 2V-bit memory takes three), read by the step before it
        S = lif_steps(P, T)
        Q = P // S
        params = packed_memory(2 * V * Q, G * S, small_in_bram=self.placement.small_in_bram)
        m.submodules.params = params
        pw_, pr = params.write_port(granularity=V), params.read_port()
        q_bits = ubits(Q) if Q > 1 else 0
        cfg_q = self.cfg_addr[:q_bits] if Q > 1 else 0
        m.d.comb += [wts.w_addr.eq(self.cfg_addr), wts.w_data.eq(self.cfg_data),
                     wts.w_en.eq(self.cfg_en & (self.cfg_region == REGION_WEIGHTS)), wts.rd.eq(self.cfg_rd),
                     wts.rd_addr.eq(self.cfg_addr),
                     pw_.addr.eq(self.cfg_addr[q_bits:]), pw_.data.eq(self.cfg_data[:V].replicate(2 * Q)),
                     pw_.en.eq(Mux(self.cfg_en, Cat(self.cfg_region == REGION_THRESHOLD,
                                                    self.cfg_region == REGION_BIAS) << (2 * cfg_q), 0))]
        rd_region, rd_q = Signal(2), Signal(max(1, q_bits))
        m.d.sync += [rd_region.eq(self.cfg_region), rd_q.eq(cfg_q)]
        m.d.comb += self.cfg_rd_data.eq(Mux(rd_region == REGION_WEIGHTS, wts.rd_data,
                                            pr.data.word_select(Cat(rd_region == REGION_BIAS, rd_q) if Q > 1
                                                                else rd_region == REGION_BIAS, V)))

        # ------------------------------------------------------------ issue (stage 0)
        grp = Signal(range(max(G, 2)))
        py, px = Signal(range(max(g.pooled_height, 2))), Signal(range(max(g.pooled_width, 2)))
        w = Signal(range(max(pw, 2)))
        ky, kx = Signal(2), Signal(2)
        dy, dx = (w >> 1, w & 1) if p == 2 else (Const(0, 1), Const(0, 1))
        y, x = Signal(range(max(H, 2))), Signal(range(max(W, 2)))
        m.d.comb += [y.eq(cmul(py, p) + dy), x.eq(cmul(px, p) + dx)]
        last_tap = (ky == 2) & (kx == 2)
        last_in_group = (py == g.pooled_height - 1) & (px == g.pooled_width - 1) & (w == pw - 1) & last_tap
        issuing = Signal()
        ny, nx = (y + ky - 1)[:len(y)], (x + kx - 1)[:len(x)]
        for rp in maps:
            m.d.comb += rp.addr.eq(cmul(ny, W) + nx)
        m.d.comb += wts.r_addr.eq(cmul(cmul(ky, KERNEL) + kx, G) + grp)

        s1 = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1, "inside": 1}))
        inside = ((y + ky >= 1) & (y + ky <= H)) & ((x + kx >= 1) & (x + kx <= W))
        m.d.sync += [s1.valid.eq(issuing), s1.first.eq((ky == 0) & (kx == 0)), s1.last.eq(last_tap), s1.inside.eq(inside)]

        # ------------------------------------------------------------ stage 1: per lane and timestep, the codes of the inputs that spiked
        sum_bits = b + (C - 1).bit_length()
        sums = Signal(data.ArrayLayout(data.ArrayLayout(unsigned(sum_bits), P), T))
        pops = Signal(data.ArrayLayout(unsigned(C.bit_length()), T))
        s2 = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1}))
        m.d.sync += [s2.valid.eq(s1.valid), s2.first.eq(s1.first), s2.last.eq(s1.last)]
        for t in range(T):
            # "one-current": the bug of keeping the encoder's one current for every timestep (timestep 0's inputs)
            src = maps[0] if self.fault == "one-current" else maps[t]
            fired = Signal(C, name=f"fired{t}")
            m.d.comb += fired.eq(Mux(s1.inside, src.data[:C], 0))
            m.d.sync += pops[t].eq(tree_sum([fired[c] for c in range(C)]))
            for j in range(P):
                m.d.sync += sums[t][j].eq(tree_sum([Mux(fired[c], wts.r_data[c][j * b:(j + 1) * b], 0) for c in range(C)]))

        # ------------------------------------------------------------ stage 2: accumulate one current per timestep
        # as wide as the largest |sum of weights| of a neuron needs (all 9 C inputs spiking), not V + 1 bits
        acc_bits = min(V + 1, (PARALLEL_OFFSETS * C * L).bit_length() + 1)
        acc = Signal(data.ArrayLayout(data.ArrayLayout(signed(acc_bits), P), T))
        complete = Signal()
        m.d.sync += complete.eq(s2.valid & s2.last)
        for t in range(T):
            dropped = Signal(range(C * L + 1), name=f"dropped{t}")  # L per input that spiked, once for all lanes
            m.d.comb += dropped.eq(cmul(pops[t], L))
            for j in range(P):
                step = (sums[t][j] << 1) - dropped
                with m.If(s2.valid):
                    m.d.sync += acc[t][j].eq(Mux(s2.first, 0, acc[t][j]) + step)

        # ------------------------------------------------------------ LIF: one datapath of Q lanes, T x S steps
        # step k = t S + s takes timestep t's current of lanes s Q .. s Q + Q - 1: step 0 straight from the
        # accumulators on the cycle they complete, the others from a chain loaded then and shifted each step
        # (the next neuron's accumulation overwrites the accumulators at once)
        last_lanes = g.channels - (G - 1) * P
        acc_q = data.ArrayLayout(signed(acc_bits), Q)
        cur_of = [Cat(*(acc[k // S][(k % S) * Q + q] for q in range(Q))) for k in range(T * S)]
        chain = [Signal(acc_q, name=f"held_current{k}") for k in range(1, T * S)]
        busy_lif = Signal()
        t_step, s_step = Signal(range(max(T, 2))), Signal(range(max(S, 2)))
        t_in, s_in = Signal(range(max(T, 2))), Signal(range(max(S, 2)))
        m.d.comb += [t_in.eq(Mux(complete, 0, t_step)), s_in.eq(Mux(complete, 0, s_step))]
        active = complete | busy_lif
        neuron_done = active & (t_in == T - 1) & (s_in == S - 1)
        m.d.sync += busy_lif.eq(active & ~neuron_done)
        with m.If(active):
            m.d.sync += [s_step.eq(Mux(s_in == S - 1, 0, s_in + 1)), t_step.eq(t_in + (s_in == S - 1))]
            for k, c in enumerate(chain):
                m.d.sync += c.eq(Mux(complete, cur_of[k + 1], chain[k + 1] if k + 1 < len(chain) else 0))
        cur_in = Signal(acc_q)
        m.d.comb += cur_in.eq(Mux(complete, cur_of[0], chain[0].as_value() if chain else 0))
        # this step's thresholds and biases, read on the step before (step 0's: whenever the LIF is idle)
        m.d.comb += pr.addr.eq(Mux(self.cfg_rd, self.cfg_addr[q_bits:],
                                   cmul(grp, S) + Mux(active & (s_in != S - 1), s_in + 1, 0)))
        theta = [pr.data.word_select(2 * q, V).as_signed() for q in range(Q)]
        bias = [pr.data.word_select(2 * q + 1, V).as_signed() for q in range(Q)]
        # a chunk's state at t - 1, S steps back: a delay line of S states, one in and one out each step
        line = [Signal(data.ArrayLayout(signed(V), Q), name=f"state{i}") for i in range(S)]
        lane0 = cmul(s_in, Q)
        ok = Signal(Q)
        m.d.comb += ok.eq(Mux(grp == G - 1, Cat(*((lane0 + q) < last_lanes for q in range(Q))), (1 << Q) - 1))
        v = [Signal(signed(V), name=f"v{q}") for q in range(Q)]
        spikes = Signal(Q)
        new_state = [Signal(signed(V), name=f"next_state{q}") for q in range(Q)]
        for q in range(Q):
            current = Signal(signed(V + 1), name=f"current{q}")  # sign-extended (or truncated: Contract 1 bounds it)
            m.d.comb += current.eq(cur_in[q] << g.weight_shift)
            # "lane-state": the bug of taking the step before's state (another lane's) when S > 1
            state = Mux(t_in == 0, bias[q], (line[-1] if self.fault == "lane-state" else line[0])[q])
            m.d.comb += [v[q].eq(saturate(state + current, V)), spikes[q].eq(ok[q] & (v[q] >= theta[q]))]
            m.d.comb += new_state[q].eq(saturate((Mux(spikes[q], 0, v[q]) >> self.leak_shift) + bias[q], V))
        with m.If(active):
            m.d.sync += [line[i].eq(line[i + 1]) for i in range(S - 1)] + [line[-1].eq(Cat(*new_state))]
        # a record needs every lane of its timestep: the first S - 1 steps' lanes wait for the last one's
        rec_v = [Signal(signed(V), name=f"rec_v{j}") for j in range(P - Q)]
        rec_spikes = Signal(max(1, P - Q))
        with m.If(active & (s_in != S - 1)):
            for s in range(S - 1):
                with m.If(s_in == s):
                    m.d.sync += [rec_v[s * Q + q].eq(v[q]) for q in range(Q)]
                    m.d.sync += rec_spikes[s * Q:(s + 1) * Q].eq(spikes)
        all_v = rec_v + v
        all_spikes = Cat(rec_spikes[:P - Q], spikes)
        lanes_ok = Mux(grp == G - 1, (1 << last_lanes) - 1, (1 << P) - 1)

        # the neuron the LIF works on: counters stepped as each neuron finishes, in the order
        o_addr = Signal(range(g.neuron_words + 1))
        o_py, o_px = Signal.like(py), Signal.like(px)
        o_w = Signal.like(w)
        tag = data.StructLayout({"addr": unsigned(len(o_addr)), "grp": unsigned(len(grp)), "py": unsigned(len(py)),
                                 "px": unsigned(len(px)), "eow": 1})
        tg = Signal(tag)
        m.d.comb += [tg.addr.eq(o_addr), tg.grp.eq(grp), tg.py.eq(o_py), tg.px.eq(o_px), tg.eow.eq(o_w == pw - 1)]
        with m.If(neuron_done):
            m.d.sync += o_addr.eq(o_addr + 1)
            step_window_major(m, o_w, o_px, o_py, pw, g.pooled_width, g.pooled_height)
        for t in range(T):  # record t, and the window's OR-pooled spikes into region t of the next layer's queue
            emit_neuron(m, t, active & (t_in == t) & (s_in == S - 1), tg, lanes_ok, all_v, all_spikes,
                        self.trace[t], self.spike_valid[t], self.spikes[t])
        busy_pipe = Cat(s1.valid, s2.valid, complete, busy_lif).any()

        # ------------------------------------------------------------ sequencing (the serial encoder's)
        with m.FSM(name="unrolled"):
            with m.State("IDLE"):
                m.d.sync += [grp.eq(0), py.eq(0), px.eq(0), w.eq(0), ky.eq(0), kx.eq(0),
                             o_addr.eq(0), o_w.eq(0), o_px.eq(0), o_py.eq(0)]
                with m.If(self.run_en):
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += issuing.eq(1)
                with m.If(kx != 2):
                    m.d.sync += kx.eq(kx + 1)
                with m.Else():
                    m.d.sync += kx.eq(0)
                    with m.If(ky != 2):
                        m.d.sync += ky.eq(ky + 1)
                    with m.Else():
                        m.d.sync += ky.eq(0)
                        step_window_major(m, w, px, py, pw, g.pooled_width, g.pooled_height)
                with m.If(last_in_group):
                    m.next = "DRAIN"
            drain_and_done_states(m, busy_pipe, grp, G, self.run_en, self.run_done, then="ISSUE")
        return m
