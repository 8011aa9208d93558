"""The first layer's spike-train encoder in amaranth.sim against the golden model: every neuron's membrane
and spike at every timestep, for one kernel offset per cycle and for all nine (interleaved image banks),
with the record of timestep t exactly LATENCY + t cycles after the neuron's last issue, the pixels arriving
while it runs (back to back, or with gaps that freeze it and are not counted)."""
import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from qpsnn.hw.encoder import LATENCY, Encoder
from qpsnn.hw.geometry import geometry_of
from qpsnn.sim.cycle_model import ENCODER_LATENCY, encode_schedule, pixel_needed
from qpsnn.sw.device import model_words
from qpsnn.sw.fold import fold
from qpsnn.sw.golden import run_golden

from conftest import random_model


def encode(net, image, lanes, offsets, fault=None, gaps=0.0, seed=0):
    """Records (counted cycle, t, addr, lanes, spikes, values) and the counted cycle of run_done; with
    ``gaps`` the share of cycles on which no pixel is offered while the image is incomplete."""
    geo = geometry_of(net, lanes, offsets)
    lg = geo.layers[0]
    dut = Encoder(lg, geo.timesteps, geo.leak_shift, data_bits=max(lg.word_bits, lg.membrane_bits), fault=fault)
    records, done_at = [], []
    rng = np.random.default_rng(seed)

    async def tb(ctx):
        for layer, region, words in model_words(net, lanes, offsets):
            if layer == 0:
                for addr, word in enumerate(words):
                    ctx.set(dut.cfg_en, 1)
                    ctx.set(dut.cfg_region, region)
                    ctx.set(dut.cfg_addr, addr)
                    ctx.set(dut.cfg_data, word)
                    await ctx.tick()
        ctx.set(dut.cfg_en, 0)
        ctx.set(dut.load_en, 1)
        ctx.set(dut.run_en, 1)
        pixels, cycle = image.ravel().tolist(), 0
        for _ in range(100_000):
            offered = bool(pixels) and rng.random() >= gaps
            ctx.set(dut.pixels.valid, offered)
            if offered:
                ctx.set(dut.pixels.payload, pixels[0])
            counted = ctx.get(dut.advance)
            assert counted == (offered or not pixels)  # frozen exactly when it waits for a pixel
            for t in range(geo.timesteps):
                r = ctx.get(dut.trace[t])
                if r.valid:
                    assert counted
                    records.append((cycle, t, r.addr, r.lanes, r.spikes, [int(v) for v in r.v]))
            if ctx.get(dut.run_done):
                done_at.append(cycle)
                break
            if offered and ctx.get(dut.pixels.ready):
                pixels.pop(0)
            cycle += counted
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return geo, records, done_at[0]


@pytest.mark.parametrize("offsets, lanes, shape, spec, gaps", [(9, 4, (1, 6, 6), "c6-p2-fc4", 0.0),
                                                                (1, 4, (1, 6, 6), "c6-p2-fc4", 0.5),
                                                                (9, 2, (2, 5, 4), "c3-fc4", 0.3),
                                                                (9, 8, (1, 8, 10), "c8-p2-fc4", 0.5),
                                                                (1, 8, (2, 4, 4), "c3-p2-fc4", 0.0)])
def test_encoder_spike_trains_equal_the_golden_model(offsets, lanes, shape, spec, gaps):
    net = fold(random_model(spec, in_shape=shape, bits=8, seed=3, timesteps=3), lanes=lanes)
    image = np.random.default_rng(1).integers(0, 256, size=shape).astype(np.uint8)
    image[0, 0, :2] = 0  # zeros and borders too
    golden = run_golden(net, torch.from_numpy(image[None]), trace=True).trace[0]
    geo, records, done = encode(net, image, lanes, offsets, gaps=gaps)
    lg = geo.layers[0]
    assert len(records) == geo.timesteps * lg.neuron_words
    schedule = encode_schedule(geo)
    assert done == schedule.end - 1 and LATENCY == ENCODER_LATENCY  # DONE, the last cycle of ENCODE
    for cycle, t, addr, lanes_ok, spikes, values in records:
        assert cycle == schedule.last_issue[addr] + LATENCY + t  # the cycle model's schedule
        for j in range(lanes):
            if (lanes_ok >> j) & 1:
                idx = lg.neuron_at(addr, j)
                assert (values[j], (spikes >> j) & 1) == (int(golden.membrane[(t, 0) + idx]), int(golden.spikes[(t, 0) + idx]))


def test_the_encoder_trails_the_image_by_a_row():
    """Nine offsets per cycle, one input channel: the first layer finishes a few rows' worth of cycles after
    the last pixel, not a whole image later, and a neuron is never issued before its window's last pixel."""
    net = fold(random_model("c8-p2-fc4", in_shape=(1, 12, 12), bits=8, seed=3, timesteps=2), lanes=8)
    geo = geometry_of(net, 8, 9)
    lg, schedule = geo.layers[0], encode_schedule(geo)
    pixels = lg.height * lg.width
    assert pixels < schedule.end < pixels + 2 * lg.width + 20
    yx = np.array([lg.neuron_at(a, 0)[1:] for a in range(lg.positions)])
    assert (schedule.last_issue > pixel_needed(lg, 0, yx[:, 0], yx[:, 1])).all()


def test_issuing_before_the_pixels_are_in_is_caught():
    """The deliberate "pixel-race" bug (issue without waiting for the window's last pixel): neurons read
    pixels not yet written, and their records differ from the golden model's."""
    net = fold(random_model("c8-p2-fc4", in_shape=(1, 12, 12), bits=8, seed=3, timesteps=2), lanes=8)
    image = np.random.default_rng(2).integers(1, 256, size=(1, 12, 12)).astype(np.uint8)
    golden = run_golden(net, torch.from_numpy(image[None]), trace=True).trace[0]
    geo, records, _ = encode(net, image, 8, 9, fault="pixel-race")
    lg = geo.layers[0]
    wrong = [addr for _, t, addr, ok, _, values in records for j in range(8)
             if (ok >> j) & 1 and values[j] != int(golden.membrane[(t, 0) + lg.neuron_at(addr, j)])]
    assert wrong


def test_a_spike_train_without_reset_is_caught():
    """The deliberate "no-reset" bug: the first neuron that spikes before the last timestep goes wrong after it."""
    net = fold(random_model("c6-p2-fc4", in_shape=(1, 6, 6), bits=8, seed=3, timesteps=3), lanes=4)
    image = np.random.default_rng(1).integers(0, 256, size=(1, 6, 6)).astype(np.uint8)
    golden = run_golden(net, torch.from_numpy(image[None]), trace=True).trace[0]
    assert bool(golden.spikes[:-1].any()), "the case needs a spike before the last timestep"
    geo, records, _ = encode(net, image, 4, 9, fault="no-reset")
    lg = geo.layers[0]
    wrong = [(t, lg.neuron_at(addr, j)) for _, t, addr, ok, _, values in records for j in range(4)
             if (ok >> j) & 1 and values[j] != int(golden.membrane[(t, 0) + lg.neuron_at(addr, j)])]
    assert wrong and min(t for t, _ in wrong) >= 1
