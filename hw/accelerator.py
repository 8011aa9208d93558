"""The event-driven QP-SNN accelerator: the first layer's spike-train `Encoder`, one `LayerUnit` per later
layer (or, for layer 1, an `UnrolledLayer`), a sequencer, a running argmax, and a cycle counter.

Per sample: ENCODE (the pixels into the encoder's image buffer and, overlapped with them, every first-layer
neuron's current once, its spikes for all T timesteps into the second layer's queue regions), then, when
layer 1 is unrolled, UNROLL(1) (all its neurons, every timestep, from the encoder's spike map, its spikes for all
T timesteps into layer 2's queue regions), then for each timestep t and event-driven layer l: EV(l) (drain
the spike queue) and FIRE(l); then the result (class, output potentials, cycles) is offered on the
``result`` stream, and every membrane is back at its initial value.
"""
from __future__ import annotations

from amaranth import Cat, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from qpsnn.sw.intnet import IntNet

from .argmax import LaneArgmax
from .encoder import Encoder
from .geometry import Capacities, Geometry, check_fits, geometry_of
from .layer_unit import FAULTS, LayerUnit
from .params import Placement, cmul
from .records import ADDR_BITS, result_layout, trace_layout
from .unrolled_layer import UnrolledLayer


class Accelerator(wiring.Component):
    def __init__(self, geo: Geometry, capacities: Capacities | None = None, forwarding: bool = True,
                 placement: Placement = Placement(), fault: str | None = None):
        if geo.lanes & (geo.lanes - 1):
            raise ValueError(f"lanes must be a power of two, got {geo.lanes}")
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
        check_fits(geo, capacities or Capacities.exactly(geo))
        self.geo, self.forwarding, self.placement, self.fault = geo, forwarding, placement, fault
        P, V, K, T = geo.lanes, geo.membrane_bits, geo.classes, geo.timesteps
        self.data_bits = max(max(l.word_bits for l in geo.layers), V)
        super().__init__({
            "cfg_en": In(1), "cfg_layer": In(4), "cfg_region": In(2), "cfg_addr": In(ADDR_BITS),
            "cfg_data": In(self.data_bits), "cfg_rd": In(1), "cfg_rd_data": Out(self.data_bits),
            "pixels": In(stream.Signature(unsigned(8))),
            "result": Out(stream.Signature(result_layout(K, V))),
            # the result's potentials move one class down (k + 1 to k, 0 to the last): the host link reads them
            # one at a time at potentials[0] (`PixelFeeder`), not through a K-way multiplexer
            "rotate_potentials": In(1),
            # T slots: the encoder reports a neuron's T timesteps from its T LIF stages; layer units use slot 0
            "trace_slots": Out(data.ArrayLayout(trace_layout(P, V), T)), "trace_cycle": Out(32),
            "init_start": In(1), "busy": Out(1),
        })

    @classmethod
    def for_model(cls, net: IntNet, lanes: int | None = None, offsets: int = 1, unrolled: bool = False,
                  **kwargs) -> "Accelerator":
        return cls(geometry_of(net, lanes, offsets, unrolled), **kwargs)

    def elaborate(self, platform):
        m = Module()
        geo, P, V, K, T = self.geo, self.geo.lanes, self.geo.membrane_bits, self.geo.classes, self.geo.timesteps
        n = len(geo.layers)
        m.submodules.layer0 = enc = Encoder(geo.layers[0], T, geo.leak_shift, self.data_bits, self.placement,
                                            self.fault)
        wiring.connect(m, wiring.flipped(self.pixels), enc.pixels)
        units = [enc]
        for i, lg in enumerate(geo.layers[1:], start=1):
            prev, prev_geo = units[-1], geo.layers[i - 1]
            if lg.unrolled:  # fed by the encoder's records, all timesteps at once
                unit = UnrolledLayer(lg, prev_geo, T, geo.leak_shift, self.data_bits, self.placement, self.fault)
                m.submodules[f"layer{i}"] = unit
                m.d.comb += unit.records.eq(prev.trace)
                units.append(unit)
                continue
            unit = LayerUnit(lg, geo.leak_shift, prev_geo, self.data_bits, T, self.forwarding,
                             self.placement, self.fault)
            m.submodules[f"layer{i}"] = unit
            m.d.comb += [unit.q_valid.eq(prev.spike_valid),
                         unit.q_data.eq(prev.spikes if prev_geo.time_unrolled else prev.spike)]
            units.append(unit)
        # the layers that keep membranes and run event by event, timestep by timestep
        events = [i for i in range(1, n) if not geo.layers[i].unrolled]
        unrolled = [i for i in range(1, n) if geo.layers[i].unrolled]
        for i, unit in enumerate(units):
            m.d.comb += [unit.cfg_en.eq(self.cfg_en & (self.cfg_layer == i)), unit.cfg_region.eq(self.cfg_region),
                         unit.cfg_addr.eq(self.cfg_addr), unit.cfg_data.eq(self.cfg_data), unit.cfg_rd.eq(self.cfg_rd)]
            with m.If(self.cfg_layer == i):
                m.d.comb += self.cfg_rd_data.eq(unit.cfg_rd_data)

        t = Signal(range(max(2, T)))
        last_t = t == T - 1
        cycle = Signal(32)
        for i in events:
            m.d.comb += [units[i].last_t.eq(last_t), units[i].t.eq(t)]

        with m.FSM(name="sequencer") as sequencer:
            with m.State("IDLE"):
                m.d.sync += [cycle.eq(0), t.eq(0)]
                with m.If(self.init_start):
                    m.next = f"INIT{events[0]}" if events else "IDLE"
                with m.Elif(self.pixels.valid):
                    m.next = "ENCODE"
            after = {i: f"INIT{j}" for i, j in zip(events, events[1:])}
            for i in events:  # every membrane to its bias
                unit = units[i]
                with m.State(f"INIT{i}"):
                    m.d.comb += [unit.fire_en.eq(1), unit.init.eq(1)]
                    with m.If(unit.fire_done):
                        m.next = after.get(i, "IDLE")
            with m.State("ENCODE"):
                # a cycle that waits for the host's next pixel is not the accelerator's work: the encoder is
                # frozen and the cycle not counted, so the count is the same however the pixels arrive
                with m.If(enc.advance):
                    m.d.sync += cycle.eq(cycle + 1)
                with m.If(enc.run_done):
                    m.next = f"UNROLL{unrolled[0]}" if unrolled else f"EV{events[0]}"
            for i in unrolled:  # once per sample: every timestep of the layer
                with m.State(f"UNROLL{i}"):
                    m.d.comb += units[i].run_en.eq(1)
                    m.d.sync += cycle.eq(cycle + 1)
                    with m.If(units[i].run_done):
                        m.next = f"UNROLL{i + 1}" if i + 1 in unrolled else f"EV{events[0]}"
            for i in events:
                unit = units[i]
                with m.State(f"EV{i}"):
                    m.d.comb += unit.ev_en.eq(1)
                    m.d.sync += cycle.eq(cycle + 1)
                    with m.If(unit.ev_done):
                        m.next = f"FIRE{i}"
                with m.State(f"FIRE{i}"):
                    m.d.comb += unit.fire_en.eq(1)
                    m.d.sync += cycle.eq(cycle + 1)
                    with m.If(unit.fire_done):
                        if i + 1 < n:
                            m.next = f"EV{i + 1}"
                        else:
                            with m.If(last_t):
                                m.next = "SETTLE"
                            with m.Else():
                                m.d.sync += t.eq(t + 1)
                                m.next = f"EV{events[0]}"
            with m.State("SETTLE"):  # the argmax pipeline takes in the last potentials (not a counted cycle)
                m.next = "RESULT"
            with m.State("RESULT"):
                m.d.comb += self.result.valid.eq(1)
                with m.If(self.result.ready):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~sequencer.ongoing("IDLE"))
        # a plain assignment, not a statement of the FSM's process: the encoder's freeze depends on it, and a
        # simulator that never runs that process before the first state change would leave it undefined
        encoding = sequencer.ongoing("ENCODE")
        m.d.comb += [enc.load_en.eq(encoding), enc.run_en.eq(encoding)]

        # trace: the encoder fills every slot; a layer in its fire scan reports in slot 0 (one at a time)
        def report(slot, record, layer, timestep):
            return [slot.valid.eq(record.valid), slot.layer.eq(layer), slot.t.eq(timestep), slot.addr.eq(record.addr),
                    slot.lanes.eq(record.lanes), slot.spikes.eq(record.spikes)] + \
                   [slot.v[j].eq(record.v[j]) for j in range(P)]  # sign-extended to the widest layer

        for s in range(T):
            m.d.comb += report(self.trace_slots[s], enc.trace[s], 0, s)
            for i in unrolled:  # after the encoder, never at the same time
                with m.If(units[i].trace[s].valid):
                    m.d.comb += report(self.trace_slots[s], units[i].trace[s], i, s)
        for i in events:
            unit = units[i]
            with m.If(unit.trace.valid):
                m.d.comb += report(self.trace_slots[0], unit.trace, i, t)
        m.d.comb += self.trace_cycle.eq(cycle)

        # the output layer's last scan: potentials and argmax
        out = units[-1]
        m.submodules.argmax = am = LaneArgmax(P, V, 16)
        final = out.trace.valid & last_t
        # one register stage between the membrane read and the argmax (timing); with the argmax's own two
        # cycles, the last beat shows in the result's label on the first RESULT cycle, after SETTLE
        values = [Signal(signed(V), name=f"out_v{j}") for j in range(P)]
        m.d.comb += [values[j].eq(out.trace.v[j]) for j in range(P)]
        m.d.sync += [am.en.eq(final), am.first.eq(out.trace.addr == 0), am.base.eq(cmul(out.trace.addr, P)),
                     am.lanes_valid.eq(out.trace.lanes), am.values.eq(Cat(*values))]
        m.d.comb += [self.result.payload.label.eq(am.index), self.result.payload.cycles.eq(cycle)]
        pots = self.result.payload.potentials
        with m.If(self.rotate_potentials):
            m.d.sync += [pots[k].eq(pots[(k + 1) % K]) for k in range(K)]
        for k in range(K):
            with m.If(final & (out.trace.addr == k // P)):
                m.d.sync += pots[k].eq(out.trace.v[k % P])
        return m
