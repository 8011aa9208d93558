"""LayerUnit in amaranth.sim: the lane pipeline (with the same-neuron hazard), the fire scan, and the
kernel-parallel event path (nine interleaved membrane banks) against a scalar reference."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from qpsnn.hw.geometry import LayerGeometry
from qpsnn.hw.boards import LUT_RAM
from qpsnn.hw.layer_unit import LayerUnit
from qpsnn.hw.params import Placement
from qpsnn.sw.packing import pack_words


def fc_geometry(channels, inputs, lanes, bits=4, shift=2, vbits=16, first=False, kind="fc"):
    return LayerGeometry(index=1, kind=kind, lanes=lanes, channels=channels, in_channels=inputs, height=1, width=1,
                         pool=1, in_height=1, in_width=1, bits=bits, weight_shift=shift, membrane_bits=vbits,
                         weight_rows=inputs, first=first)


def conv_geometry(channels, in_channels, size, lanes, pool=2, bits=2, shift=0, vbits=12, offsets=1):
    return LayerGeometry(index=1, kind="conv", lanes=lanes, channels=channels, in_channels=in_channels, height=size,
                         width=size, pool=pool, in_height=size, in_width=size, bits=bits, weight_shift=shift,
                         membrane_bits=vbits, weight_rows=in_channels * 9, first=False, offsets=offsets)


def simulate_layer(geo, in_geo, codes_rows, threshold, bias, entries, forwarding=True, last_t=0, leak=1, fault=None,
                   placement=Placement()):
    """Configure, init, push queue entries, run the event phase, then one fire scan; return trace and spikes.
    ``codes_rows``: rows as the file has them (input channel, ky, kx); stored the way ``geo`` reads them."""
    dut = LayerUnit(geo, leak, in_geo, data_bits=max(geo.word_bits, geo.membrane_bits), timesteps=1,
                    forwarding=forwarding, fault=fault, placement=placement)
    if geo.weight_memories > 1:  # offset-major, as `qpsnn.sw.device.hw_weight_rows` sends them
        c_in = codes_rows.shape[0] // 9
        codes_rows = codes_rows.reshape(c_in, 9, -1).transpose(1, 0, 2).reshape(9 * c_in, -1)
    trace, spikes = [], []
    V = geo.membrane_bits

    async def tb(ctx):
        async def cfg(region, addr, value):
            ctx.set(dut.cfg_en, 1)
            ctx.set(dut.cfg_region, region)
            ctx.set(dut.cfg_addr, addr)
            ctx.set(dut.cfg_data, value)
            await ctx.tick()

        for addr, word in enumerate(pack_words(codes_rows, geo.bits, geo.lanes)):
            await cfg(0, addr, word)
        for ch in range(geo.channels):
            await cfg(1, ch, threshold[ch] & ((1 << V) - 1))
            await cfg(2, ch, bias[ch] & ((1 << V) - 1))
        ctx.set(dut.cfg_en, 0)

        async def phase(enable, done, collect=False):
            ctx.set(enable, 1)
            for _ in range(10000):
                if collect:
                    record = ctx.get(dut.trace)
                    if record.valid:
                        for j in range(geo.lanes):
                            if (record.lanes >> j) & 1:
                                trace.append((geo.neuron_at(record.addr, j), record.v[j], (record.spikes >> j) & 1))
                    if ctx.get(dut.spike_valid):
                        s = ctx.get(dut.spike)
                        spikes.append((s.group, s.y, s.x, s.mask))
                if ctx.get(done):
                    break
                await ctx.tick()
            ctx.set(enable, 0)
            await ctx.tick()

        ctx.set(dut.init, 1)
        await phase(dut.fire_en, dut.fire_done)
        ctx.set(dut.init, 0)
        for g, y, x, mask in entries:
            ctx.set(dut.q_valid, 1)
            ctx.set(dut.q_data[0], {"group": g, "y": y, "x": x, "mask": mask})
            await ctx.tick()
        ctx.set(dut.q_valid, 0)
        await ctx.tick()
        await ctx.tick()
        await phase(dut.ev_en, dut.ev_done)
        ctx.set(dut.last_t, last_t)
        await phase(dut.fire_en, dut.fire_done, collect=True)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return trace, spikes


def _fc_case(lanes):
    rng = np.random.default_rng(3)
    geo = fc_geometry(channels=5, inputs=6, lanes=lanes)
    in_geo = fc_geometry(channels=6, inputs=1, lanes=lanes)
    codes = rng.integers(0, 16, size=(6, 5))  # rows = inputs
    bias = [3, -7, 0, 11, -2]
    threshold = [40, 40, 40, 40, 40]
    # every input fires: back-to-back events to the same output neurons
    entries = [(g, 0, 0, (1 << min(lanes, 6 - g * lanes)) - 1) for g in range(-(-6 // lanes))]
    weights = (2 * codes - 15) << geo.weight_shift
    expected = np.array(bias) + weights.sum(0)
    return geo, in_geo, codes, threshold, bias, entries, expected


@pytest.mark.parametrize("lanes", [1, 4, 8])
def test_event_pipeline_accumulates_every_update(lanes):
    geo, in_geo, codes, threshold, bias, entries, expected = _fc_case(lanes)
    trace, _ = simulate_layer(geo, in_geo, codes, threshold, bias, entries)
    got = {idx[0]: v for idx, v, _ in trace}
    assert [got[o] for o in range(5)] == expected.tolist()
    assert [s for _, _, s in sorted(trace)] == [int(v >= 40) for v in expected]


def test_same_neuron_hazard_needs_forwarding():
    """With 8 lanes all 5 outputs share one word, so consecutive events hit the same address every cycle."""
    geo, in_geo, codes, threshold, bias, entries, expected = _fc_case(8)
    trace, _ = simulate_layer(geo, in_geo, codes, threshold, bias, entries, forwarding=False)
    got = [v for _, v, _ in sorted(trace)]
    assert got != expected.tolist()  # without forwarding, updates are lost


def test_fire_scan_reset_leak_bias_and_pooled_spikes():
    geo = conv_geometry(channels=3, in_channels=1, size=4, lanes=2)
    in_geo = conv_geometry(channels=1, in_channels=1, size=4, lanes=2, pool=1)
    codes = np.full((9, 3), 3)  # every weight +3 (2-bit code 3)
    threshold, bias = [5, 5, 5], [0, 2, -1]
    # one input event at (1, 1): +3 to the 3x3 neighbourhood of every channel
    trace, spikes = simulate_layer(geo, in_geo, codes, threshold, bias, [(0, 1, 1, 0b1)])
    values = {idx: (v, s) for idx, v, s in trace}
    assert len(values) == 3 * 16
    for (o, y, x), (v, s) in values.items():
        near = abs(y - 1) <= 1 and abs(x - 1) <= 1
        assert v == bias[o] + (3 if near else 0)
        assert s == int(v >= 5)
    # channel 1 spikes at the 9 neighbours; OR-pooled: windows (0,0), (0,1), (1,0), (1,1) of group 0, lane 1
    assert sorted(spikes) == [(0, 0, 0, 0b10), (0, 0, 1, 0b10), (0, 1, 0, 0b10), (0, 1, 1, 0b10)]
    # a second scan shows reset (spiking neurons restart at their bias) and leak ((v >> 1) + bias)
    trace2, _ = simulate_layer(geo, in_geo, codes, threshold, bias, [(0, 1, 1, 0b1)], last_t=1)
    assert {idx: v for idx, v, _ in trace2} == {idx: v for idx, (v, _) in values.items()}  # last_t writes init values


def _scalar_reference(codes_rows, bits, bias, events, size, channels):
    """Membranes after the events, one weight at a time: rows (c, ky, kx) reach output (y + 1 - ky, x + 1 - kx)."""
    v = np.tile(np.array(bias)[:, None, None], (1, size, size)).astype(np.int64)
    w = 2 * codes_rows - ((1 << bits) - 1)
    for c, y, x in events:
        for ky in range(3):
            for kx in range(3):
                oy, ox = y + 1 - ky, x + 1 - kx
                if 0 <= oy < size and 0 <= ox < size:
                    v[:, oy, ox] += w[c * 9 + ky * 3 + kx]
    return v


def _random_conv_case(seed=7, lanes=4, channels=6, in_channels=3, size=6):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 4, size=(in_channels * 9, channels))
    bias = rng.integers(-5, 6, size=channels).tolist()
    # in-channels of one entry are consecutive events at the same position: the hazard every cycle
    entries, events = [], []
    for _ in range(12):
        y, x, mask = int(rng.integers(size)), int(rng.integers(size)), int(rng.integers(1, 1 << in_channels))
        entries.append((0, y, x, mask))
        events += [(c, y, x) for c in range(in_channels) if (mask >> c) & 1]
    return codes, bias, entries, events


LUT_RAM_BANKS = Placement(membranes=LUT_RAM)  # the ULX3S kernel-parallel build's: `LutRamBank`s


@pytest.mark.parametrize("offsets, lanes, placement", [(1, 4, Placement()), (9, 4, Placement()),
                                                       (9, 4, LUT_RAM_BANKS), (9, 8, LUT_RAM_BANKS)])
def test_conv_events_match_the_scalar_reference(offsets, lanes, placement):
    """Border events, every kernel offset, back-to-back events at one position; 9 offsets per cycle or one;
    banks as memories or as LUT RAM chunks of 4 lanes (P=8: two chunks, two address copies per bank)."""
    codes, bias, entries, events = _random_conv_case()
    geo = conv_geometry(channels=6, in_channels=3, size=6, lanes=lanes, pool=2, offsets=offsets)
    in_geo = conv_geometry(channels=3, in_channels=1, size=6, lanes=lanes, pool=1)
    trace, _ = simulate_layer(geo, in_geo, codes, [1000] * 6, bias, entries, placement=placement)
    want = _scalar_reference(codes, 2, bias, events, 6, 6)
    assert len(trace) == 6 * 36
    for (o, y, x), v, _ in trace:
        assert v == want[o, y, x], (o, y, x)


def test_wrong_offset_to_bank_mapping_is_caught():
    """A deliberate bug (bank row 0 takes bank row 1's kernel offset) changes membranes the reference predicts."""
    codes, bias, entries, events = _random_conv_case()
    geo = conv_geometry(channels=6, in_channels=3, size=6, lanes=4, pool=2, offsets=9)
    in_geo = conv_geometry(channels=3, in_channels=1, size=6, lanes=4, pool=1)
    trace, _ = simulate_layer(geo, in_geo, codes, [1000] * 6, bias, entries, fault="bank-offset")
    want = _scalar_reference(codes, 2, bias, events, 6, 6)
    wrong = [(idx, v) for idx, v, _ in trace if v != want[idx]]
    assert wrong and all(idx[1] % 3 == 0 for idx, _ in wrong)  # only outputs in bank row 0 go wrong


@pytest.mark.parametrize("fault, channels", [("chunk-late", {4, 5}), ("bank-copy-late", {1})])
def test_a_late_register_copy_is_caught_in_its_lanes(fault, channels):
    """Deliberate bugs in the registers copied to split fanout: the second LUT RAM chunk's address copy a cycle
    late changes the membranes of that chunk's lanes (channels 4 and 5 at P=8), lane 1's copy of the fire
    scan's bank select a cycle late changes channel 1's; no other channel changes."""
    codes, bias, entries, events = _random_conv_case()
    geo = conv_geometry(channels=6, in_channels=3, size=6, lanes=8, pool=2, offsets=9)
    in_geo = conv_geometry(channels=3, in_channels=1, size=6, lanes=8, pool=1)
    trace, _ = simulate_layer(geo, in_geo, codes, [1000] * 6, bias, entries, fault=fault, placement=LUT_RAM_BANKS)
    want = _scalar_reference(codes, 2, bias, events, 6, 6)
    wrong = {idx[0] for idx, v, _ in trace if v != want[idx]}
    assert wrong == channels


@pytest.mark.parametrize("placement", [Placement(), LUT_RAM_BANKS])
def test_interleaved_bank_hazard_needs_forwarding(placement):
    """With all six channels in one group (P=8), the events of one queue entry (same position, consecutive input
    channels) update the same bank words on consecutive cycles: with forwarding (each bank's read port
    transparent for its write port) the scalar reference's membranes, without it updates are lost."""
    codes, bias, entries, events = _random_conv_case()
    geo = conv_geometry(channels=6, in_channels=3, size=6, lanes=8, pool=2, offsets=9)
    in_geo = conv_geometry(channels=3, in_channels=1, size=6, lanes=8, pool=1)
    want = _scalar_reference(codes, 2, bias, events, 6, 6)
    for forwarding in (True, False):
        trace, _ = simulate_layer(geo, in_geo, codes, [1000] * 6, bias, entries, forwarding=forwarding,
                                  placement=placement)
        assert len(trace) == 6 * 36
        assert all(v == want[idx] for idx, v, _ in trace) == forwarding
