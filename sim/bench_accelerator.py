"""cocotb bench of the accelerator: loads a `.qpsnn` through the configuration port, streams samples as
bit-plane input events, and checks every trace record (membrane and spike of every neuron, every layer and
timestep) against the golden model, the cycle of every record against the cycle model, and class,
potentials and total cycles. Run through `qpsnn.sim.runner`; the job comes in the file $QPSNN_BENCH_JOB.
"""
from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
import torch
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from qpsnn.hw.geometry import geometry_of
from qpsnn.sim.cycle_model import input_events, timings_for
from qpsnn.sw import modelfile
from qpsnn.sw.golden import run_golden
from qpsnn.sw.device import model_words


async def _cycle(dut):
    await RisingEdge(dut.clk)


async def write_config(dut, net, geo):
    async def write(layer, region, addr, value):
        dut.cfg_en.value = 1
        dut.cfg_layer.value, dut.cfg_region.value, dut.cfg_addr.value = layer, region, addr
        dut.cfg_data.value = value
        await _cycle(dut)

    for layer, region, words in model_words(net, geo.lanes):  # what the host link's WRITEs carry
        for addr, word in enumerate(words):
            await write(layer, region, addr, word)
    dut.cfg_en.value = 0
    dut.init_start.value = 1
    await _cycle(dut)
    dut.init_start.value = 0
    await _cycle(dut)
    while int(dut.busy.value):
        await _cycle(dut)


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


@cocotb.test()
async def accelerator_matches_golden(dut):
    with open(os.environ["QPSNN_BENCH_JOB"]) as f:
        job = json.load(f)
    net = modelfile.load(job["model"])
    geo = geometry_of(net, job["lanes"])
    images = np.load(job["images"])
    golden = run_golden(net, torch.from_numpy(images), trace=True)
    timings = timings_for(geo, images, golden)
    P, V = geo.lanes, geo.membrane_bits

    Clock(dut.clk, 2, unit="step").start()  # timing-free RTL: the simulator precision does not matter
    for name in ("cfg_en", "cfg_rd", "in_valid", "res_ready", "init_start", "in_none", "in_last"):
        getattr(dut, name).value = 0
    dut.rst.value = 1
    await _cycle(dut)
    await _cycle(dut)
    dut.rst.value = 0
    await write_config(dut, net, geo)

    results, mismatches = [], []
    started = time.time()
    limit = job.get("max_mismatches", 20)

    def mismatch(**kw):
        if len(mismatches) < limit:
            mismatches.append(kw)
        else:
            mismatches.append(None)

    for n in range(len(images)):
        expected = timings[n]
        beats = input_events(images[n]) or [None]
        traced = 0
        bi = 0
        done = False

        def present(i):
            beat = beats[i]
            dut.in_valid.value = 1
            dut.in_last.value = int(i == len(beats) - 1)
            dut.in_none.value = int(beat is None)
            if beat is not None:
                c, y, x, k = beat
                dut.in_channel.value, dut.in_y.value, dut.in_x.value, dut.in_plane.value = c, y, x, k

        present(0)
        while not done:
            await RisingEdge(dut.clk)
            # values read here are the ones the design had in the cycle that just ended
            if bi < len(beats) and int(dut.in_valid.value) and int(dut.in_ready.value):
                bi += 1
                if bi < len(beats):
                    present(bi)
                else:
                    dut.in_valid.value = 0
            if int(dut.trace_valid.value):
                traced += 1
                layer, t, addr = int(dut.trace_layer.value), int(dut.trace_t.value), int(dut.trace_addr.value)
                cyc = int(dut.trace_cycle.value)
                lanes, spikes, vbits = int(dut.trace_lanes.value), int(dut.trace_spikes.value), int(dut.trace_v.value)
                lg = geo.layers[layer]
                want_cycle = expected.record_cycle(layer, t, addr)
                if cyc != want_cycle:
                    mismatch(sample=n, layer=layer, timestep=t, neuron=list(lg.neuron_at(addr, 0)), what="cycle",
                             cycle=cyc, expected=want_cycle, got=cyc)
                tr = golden.trace[layer]
                for j in range(P):
                    if not (lanes >> j) & 1:
                        continue
                    idx = lg.neuron_at(addr, j)
                    v = _signed(vbits >> (j * V), V)
                    s = (spikes >> j) & 1
                    ev, es = int(tr.membrane[(t, n) + idx]), int(tr.spikes[(t, n) + idx])
                    if v != ev or s != es:
                        mismatch(sample=n, layer=layer, timestep=t, neuron=list(idx), what="membrane/spike", cycle=cyc,
                                 expected=[ev, es], got=[v, s])
            if int(dut.res_valid.value) and bi >= len(beats):
                cls, cycles = int(dut.res_class.value), int(dut.res_cycles.value)
                pots_raw = int(dut.res_potentials.value)
                pots = [_signed(pots_raw >> (k * V), V) for k in range(geo.classes)]
                dut.res_ready.value = 1
                await RisingEdge(dut.clk)
                dut.res_ready.value = 0
                want_pots = golden.potentials[n].tolist()
                if cls != int(golden.classes[n]):
                    mismatch(sample=n, what="class", expected=int(golden.classes[n]), got=cls)
                if pots != want_pots:
                    mismatch(sample=n, what="potentials", expected=want_pots, got=pots)
                if cycles != expected.total:
                    mismatch(sample=n, what="total cycles", expected=expected.total, got=cycles)
                neurons = sum(geo.timesteps * lg.channels * lg.positions for lg in geo.layers)
                if traced != sum(geo.timesteps * lg.neuron_words for lg in geo.layers):
                    mismatch(sample=n, what="trace records", expected=neurons, got=traced)
                results.append({"sample": n, "class": cls, "cycles": cycles, "expected_cycles": expected.total,
                                "bound_cycles": expected.bound, "events": expected.events})
                done = True
    out = {"results": results, "mismatches": [m for m in mismatches if m is not None],
           "mismatch_count": len(mismatches), "sim_seconds": time.time() - started}
    with open(job["out"], "w") as f:
        json.dump(out, f)
    assert not mismatches, f"{len(mismatches)} mismatches; first: {mismatches[0]}"
