"""BankWeights: the rotated per-bank weight copies of a kernel-parallel layer, against the geometry's own
bank arithmetic (an independent reference) and in amaranth.sim."""
import itertools

import numpy as np
from amaranth.sim import Simulator

from qpsnn.hw.geometry import KERNEL, PARALLEL_OFFSETS
from qpsnn.hw.kernel_weights import BankWeights, phase_of
from qpsnn.sw.geometry import LayerGeometry


def test_phase_of_agrees_with_the_bank_each_output_lives_in():
    """For every event position and kernel offset: the output it reaches lies in the bank whose copy, read at
    the event's phase, holds that offset. Checked with `LayerGeometry.bank_of`, not `interleave.py`."""
    geo = LayerGeometry(index=1, kind="conv", lanes=4, channels=4, in_channels=2, height=7, width=8, pool=1,
                        in_height=7, in_width=8, bits=4, weight_shift=0, membrane_bits=12, weight_rows=18,
                        first=False, offsets=PARALLEL_OFFSETS)
    for y, x, ky, kx in itertools.product(range(7), range(8), range(KERNEL), range(KERNEL)):
        oy, ox = y + 1 - ky, x + 1 - kx
        if 0 <= oy < 7 and 0 <= ox < 8:
            bank, _ = geo.bank_of(0, oy, ox)
            assert phase_of(bank, ky * KERNEL + kx) == (y % KERNEL) * KERNEL + x % KERNEL
    # and each bank sees each offset at exactly one phase
    for k in range(PARALLEL_OFFSETS):
        assert sorted(phase_of(k, o) for o in range(PARALLEL_OFFSETS)) == list(range(PARALLEL_OFFSETS))


def _run(rows, words, reads, fault_row=None):
    dut = BankWeights(rows, 16, fault_row)
    got, back = [], []

    async def tb(ctx):
        for a, w in enumerate(words):  # offset-major flat addresses, as the host writes them
            ctx.set(dut.w_en, 1)
            ctx.set(dut.w_addr, a)
            ctx.set(dut.w_data, w)
            await ctx.tick()
        ctx.set(dut.w_en, 0)
        for phase, row in reads:
            ctx.set(dut.phase, phase)
            ctx.set(dut.r_row, row)
            await ctx.tick()
            got.append([ctx.get(dut.r_data[k]) for k in range(PARALLEL_OFFSETS)])
        for a in range(len(words)):
            ctx.set(dut.rd, 1)
            ctx.set(dut.rd_addr, a)
            await ctx.tick()
            back.append(ctx.get(dut.rd_data))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return got, back


def test_each_bank_reads_the_offset_that_reaches_it():
    rows = 5
    words = [int(w) for w in np.random.default_rng(0).integers(0, 1 << 16, PARALLEL_OFFSETS * rows)]
    reads = [(ph, r) for ph in range(PARALLEL_OFFSETS) for r in range(rows)]
    got, back = _run(rows, words, reads)
    for (ph, r), banks in zip(reads, got):
        for k, word in enumerate(banks):
            o = next(o for o in range(PARALLEL_OFFSETS) if phase_of(k, o) == ph)
            assert word == words[o * rows + r], (ph, r, k)
    assert back == words  # read-back returns what the host wrote, by flat address


def test_the_bank_offset_fault_changes_what_bank_row_0_reads():
    rows = 2
    words = list(range(1, PARALLEL_OFFSETS * rows + 1))
    reads = [(ph, 0) for ph in range(PARALLEL_OFFSETS)]
    good, _ = _run(rows, words, reads)
    bad, _ = _run(rows, words, reads, fault_row=1)
    differs = {k for g, b in zip(good, bad) for k in range(PARALLEL_OFFSETS) if g[k] != b[k]}
    assert differs == {0, 1, 2}  # bank row 0 only
