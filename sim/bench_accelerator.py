"""cocotb bench of the accelerator: loads a `.qpsnn` through the configuration port, streams each sample's
pixels, and checks every trace record (membrane and spike of every neuron, every layer and
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
from qpsnn.hw.records import field_slices, result_layout, trace_layout
from qpsnn.sim.cycle_model import timings_for
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

    for layer, region, words in model_words(net, geo.lanes, geo.offsets, geo.unrolled):  # what the host link's WRITEs carry
        for addr, word in enumerate(words):
            await write(layer, region, addr, word)
    dut.cfg_en.value = 0
    dut.init_start.value = 1
    await _cycle(dut)
    dut.init_start.value = 0
    await _cycle(dut)
    while int(dut.busy.value):
        await _cycle(dut)


def _bits(value) -> int:
    """A port's value as an integer; bits that are X or Z (Icarus before a first write) read as 0."""
    return int(str(value).lower().replace("x", "0").replace("z", "0"), 2)


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


class Fields:
    """Reads the fields of a struct layout out of one integer (a flattened port)."""

    def __init__(self, layout):
        self.slices, self.size = field_slices(layout), layout.size

    def __call__(self, raw: int, name: str) -> int:
        offset, width = self.slices[name]
        return (raw >> offset) & ((1 << width) - 1)


@cocotb.test()
async def accelerator_matches_golden(dut):
    with open(os.environ["QPSNN_BENCH_JOB"]) as f:
        job = json.load(f)
    net = modelfile.load(job["model"])
    geo = geometry_of(net, job["lanes"], job.get("offsets", 1), job.get("unrolled", False))
    images = np.load(job["images"])
    golden = run_golden(net, torch.from_numpy(images), trace=True)
    timings = timings_for(geo, golden)
    P, V, K, T = geo.lanes, geo.membrane_bits, geo.classes, geo.timesteps
    rec, res = Fields(trace_layout(P, V)), Fields(result_layout(K, V))

    Clock(dut.clk, 2, unit="step").start()  # timing-free RTL: the simulator precision does not matter
    for name in ("cfg_en", "cfg_rd", "pixels__valid", "result__ready", "init_start"):
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

    expected_records = sum(T * lg.neuron_words for lg in geo.layers)
    for n in range(len(images)):
        expected = timings[n]
        pixels = np.ascontiguousarray(images[n], dtype=np.uint8).ravel().tolist()
        traced = 0
        sent = 0
        done = False
        dut.pixels__valid.value = 1
        dut.pixels__payload.value = pixels[0]
        waited = 0
        while not done:
            await RisingEdge(dut.clk)
            waited += 1
            if waited > 4 * expected.total + 1000:  # a design that never finishes is reported, not waited for
                mismatch(sample=n, what="hang", expected=expected.total, got=waited, busy=int(dut.busy.value),
                         sent=sent, traced=traced)
                break
            # values read here are the ones the design had in the cycle that just ended
            if sent < len(pixels) and int(dut.pixels__valid.value) and int(dut.pixels__ready.value):
                sent += 1
                if sent < len(pixels):
                    dut.pixels__payload.value = pixels[sent]
                else:
                    dut.pixels__valid.value = 0
            raw_trace = _bits(dut.trace_slots.value)
            cyc = int(dut.trace_cycle.value)
            for slot in range(T):
                raw = raw_trace >> (slot * rec.size)
                if not rec(raw, "valid"):
                    continue
                traced += 1
                # slot s > 0 is timestep s of the encoder (or of an unrolled layer); its constant fields are not
                # read from the port: some simulators never evaluate a process that drives only constants
                layer = rec(raw, "layer") if slot == 0 or geo.unrolled else 0
                t = rec(raw, "t") if slot == 0 else slot
                addr = rec(raw, "addr")
                lanes, spikes, vbits = rec(raw, "lanes"), rec(raw, "spikes"), rec(raw, "v")
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
            if int(dut.result__valid.value) and sent >= len(pixels):
                raw = _bits(dut.result__payload.value)
                cls, cycles = res(raw, "label"), res(raw, "cycles")
                pots = [_signed(res(raw, "potentials") >> (k * V), V) for k in range(K)]
                dut.result__ready.value = 1
                await RisingEdge(dut.clk)
                dut.result__ready.value = 0
                want_pots = golden.potentials[n].tolist()
                if cls != int(golden.classes[n]):
                    mismatch(sample=n, what="class", expected=int(golden.classes[n]), got=cls)
                if pots != want_pots:
                    mismatch(sample=n, what="potentials", expected=want_pots, got=pots)
                if cycles != expected.total:
                    mismatch(sample=n, what="total cycles", expected=expected.total, got=cycles)
                if traced != expected_records:
                    mismatch(sample=n, what="trace records", expected=expected_records, got=traced)
                results.append({"sample": n, "class": cls, "cycles": cycles, "expected_cycles": expected.total,
                                "bound_cycles": expected.bound, "events": expected.events})
                done = True
        if not done:
            break
    out = {"results": results, "mismatches": [m for m in mismatches if m is not None],
           "mismatch_count": len(mismatches), "sim_seconds": time.time() - started}
    with open(job["out"], "w") as f:
        json.dump(out, f)
    assert not mismatches, f"{len(mismatches)} mismatches; first: {mismatches[0]}"
