"""LaneArgmax in amaranth.sim: first maximum wins inside a beat, a later beat only when strictly greater;
beats back to back, each visible two cycles after it is presented."""
from amaranth.sim import Simulator

from qpsnn.hw.argmax import LaneArgmax


def argmax_of(beats, lanes=4, bits=8):
    dut = LaneArgmax(lanes, bits, 8)
    out = []

    async def tb(ctx):
        for first, base, values, mask in beats:
            ctx.set(dut.en, 1)
            ctx.set(dut.first, first)
            ctx.set(dut.base, base)
            ctx.set(dut.lanes_valid, mask)
            ctx.set(dut.values, sum((v & ((1 << bits) - 1)) << (bits * j) for j, v in enumerate(values)))
            await ctx.tick()
            out.append((ctx.get(dut.index), ctx.get(dut.value)))
        ctx.set(dut.en, 0)
        await ctx.tick()  # two cycles of latency: a beat shows after the tick that follows it
        out.append((ctx.get(dut.index), ctx.get(dut.value)))
        del out[0]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return out


def test_ties_go_to_the_lowest_index():
    assert argmax_of([(1, 0, [3, 7, 7, -2], 0b1111)]) == [(1, 7)]
    assert argmax_of([(1, 0, [5, 1, 2, 3], 0b1111), (0, 4, [5, 5, 0, 0], 0b1111)]) == [(0, 5), (0, 5)]


def test_later_beats_and_invalid_lanes():
    out = argmax_of([(1, 0, [-9, -3, -5, -4], 0b1111), (0, 4, [-1, 100, 0, 0], 0b0001), (0, 8, [0, 0, 0, 0], 0b0011)])
    assert out == [(1, -3), (4, -1), (8, 0)]


def test_first_resets_the_running_best():
    out = argmax_of([(1, 0, [50, 0, 0, 0], 0b1111), (1, 0, [1, 2, 0, 0], 0b0011)])
    assert out == [(0, 50), (1, 2)]
