"""The event-driven QP-SNN accelerator: one `LayerUnit` per layer, a sequencer that runs them layer by layer
and timestep by timestep, a running argmax, and a cycle counter.

Per sample: IN (the first layer accumulates the input bit-plane events once into its current memory), then
for each timestep t and layer l: EV(l) (layers after the first: drain the spike queue) and FIRE(l). The
result (class, output potentials, cycles) is offered on the result port; then the accelerator is idle again
with every membrane back at its initial value.
"""
from __future__ import annotations

from amaranth import Cat, Module, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from qpsnn.sw.intnet import IntNet

from .argmax import LaneArgmax
from .geometry import Capacities, Geometry, check_fits, geometry_of
from .layer_unit import LayerUnit, _ubits


class Accelerator(wiring.Component):
    def __init__(self, geo: Geometry, capacities: Capacities | None = None, forwarding: bool = True,
                 weights_in_spram: bool = False):
        if geo.lanes & (geo.lanes - 1):
            raise ValueError(f"lanes must be a power of two, got {geo.lanes}")
        check_fits(geo, capacities or Capacities.exactly(geo))
        self.geo, self.forwarding, self.weights_in_spram = geo, forwarding, weights_in_spram
        P, V, K = geo.lanes, geo.membrane_bits, geo.classes
        first = geo.layers[0]
        self.data_bits = max(max(l.word_bits for l in geo.layers), V)
        super().__init__({
            "cfg_en": In(1), "cfg_layer": In(4), "cfg_region": In(2), "cfg_addr": In(24), "cfg_data": In(self.data_bits),
            "cfg_rd": In(1), "cfg_rd_data": Out(self.data_bits),
            "in_valid": In(1), "in_ready": Out(1), "in_none": In(1), "in_last": In(1),
            "in_channel": In(_ubits(first.in_channels)), "in_y": In(_ubits(first.height)),
            "in_x": In(_ubits(first.width)), "in_plane": In(3),
            "res_valid": Out(1), "res_ready": In(1), "res_class": Out(16), "res_cycles": Out(32),
            "res_potentials": Out(signed(V * K)),
            "trace_valid": Out(1), "trace_layer": Out(4), "trace_t": Out(8), "trace_addr": Out(24),
            "trace_lanes": Out(P), "trace_spikes": Out(P), "trace_v": Out(signed(V * P)), "trace_cycle": Out(32),
            "init_start": In(1), "busy": Out(1),
        })

    @classmethod
    def for_model(cls, net: IntNet, lanes: int | None = None, **kwargs) -> "Accelerator":
        return cls(geometry_of(net, lanes), **kwargs)

    def elaborate(self, platform):
        m = Module()
        geo, P, V, K = self.geo, self.geo.lanes, self.geo.membrane_bits, self.geo.classes
        n = len(geo.layers)
        units = []
        for i, lg in enumerate(geo.layers):
            unit = LayerUnit(lg, geo.leak_shift, geo.layers[i - 1] if i else None, self.data_bits, self.forwarding,
                             self.weights_in_spram)
            m.submodules[f"layer{i}"] = unit
            units.append(unit)
            m.d.comb += [unit.cfg_en.eq(self.cfg_en & (self.cfg_layer == i)), unit.cfg_region.eq(self.cfg_region),
                         unit.cfg_addr.eq(self.cfg_addr), unit.cfg_data.eq(self.cfg_data), unit.cfg_rd.eq(self.cfg_rd)]
            with m.If(self.cfg_layer == i):
                m.d.comb += self.cfg_rd_data.eq(unit.cfg_rd_data)
            if i:
                prev = units[i - 1]
                m.d.comb += [unit.q_valid.eq(prev.spike_valid), unit.q_data.eq(prev.spike)]
        u0 = units[0]
        m.d.comb += [u0.in_valid.eq(self.in_valid), self.in_ready.eq(u0.in_ready), u0.in_none.eq(self.in_none),
                     u0.in_last.eq(self.in_last), u0.in_channel.eq(self.in_channel), u0.in_y.eq(self.in_y),
                     u0.in_x.eq(self.in_x), u0.in_plane.eq(self.in_plane)]

        t = Signal(range(max(2, geo.timesteps)))
        last_t = t == geo.timesteps - 1
        cycle = Signal(32)
        for unit in units:
            m.d.comb += unit.last_t.eq(last_t)

        with m.FSM(name="sequencer") as sequencer:
            with m.State("IDLE"):
                m.d.sync += [cycle.eq(0), t.eq(0)]
                with m.If(self.init_start):
                    m.next = "INIT0"
                with m.Elif(self.in_valid):
                    m.next = "IN"
            for i, unit in enumerate(units):  # every membrane to its bias, every stored current to zero
                with m.State(f"INIT{i}"):
                    m.d.comb += [unit.fire_en.eq(1), unit.init.eq(1)]
                    with m.If(unit.fire_done):
                        m.next = f"INIT{i + 1}" if i + 1 < n else "IDLE"
            with m.State("IN"):
                m.d.comb += u0.ev_en.eq(1)
                # a cycle that waits for the host's next input event is not the accelerator's work: not counted,
                # so the count is the same whether events arrive back to back or over a slow link
                with m.If(~(u0.in_ready & ~self.in_valid)):
                    m.d.sync += cycle.eq(cycle + 1)
                with m.If(u0.ev_done):
                    m.next = "FIRE0"
            for i, unit in enumerate(units):
                if i:
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
                                m.next = "FIRE0"
            with m.State("SETTLE"):  # the argmax pipeline takes in the last potentials (not a counted cycle)
                m.next = "RESULT"
            with m.State("RESULT"):
                m.d.comb += self.res_valid.eq(1)
                with m.If(self.res_ready):
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~sequencer.ongoing("IDLE"))

        # trace: the layer in its fire scan reports; at most one does at a time
        for i, unit in enumerate(units):
            lv = geo.layers[i].membrane_bits
            lanes_v = [Signal(signed(V), name=f"trace_v{i}_{j}") for j in range(P)]  # sign-extended to V bits
            m.d.comb += [lanes_v[j].eq(unit.trace_v[j * lv:(j + 1) * lv].as_signed()) for j in range(P)]
            with m.If(unit.trace_valid):
                m.d.comb += [self.trace_valid.eq(1), self.trace_layer.eq(i), self.trace_addr.eq(unit.trace_addr),
                             self.trace_lanes.eq(unit.trace_lanes), self.trace_spikes.eq(unit.trace_spikes),
                             self.trace_v.eq(Cat(*lanes_v))]
        m.d.comb += [self.trace_t.eq(t), self.trace_cycle.eq(cycle)]

        # the output layer's last scan: potentials and argmax
        out = units[-1]
        m.submodules.argmax = am = LaneArgmax(P, V, 16)
        final = out.trace_valid & last_t
        # one register stage between the membrane read and the argmax (timing); with the argmax's own two
        # cycles, the last beat shows in ``res_class`` on the first RESULT cycle, after SETTLE
        m.d.sync += [am.en.eq(final), am.first.eq(out.trace_addr == 0), am.base.eq(out.trace_addr * P),
                     am.lanes_valid.eq(out.trace_lanes), am.values.eq(self.trace_v)]
        m.d.comb += [self.res_class.eq(am.index),
                     self.res_cycles.eq(cycle)]
        pots = [Signal(signed(V), name=f"potential{k}") for k in range(K)]
        for k in range(K):
            with m.If(final & (out.trace_addr == k // P)):
                m.d.sync += pots[k].eq(self.trace_v[(k % P) * V:(k % P + 1) * V].as_signed())
        m.d.comb += self.res_potentials.eq(Cat(*pots))
        return m

