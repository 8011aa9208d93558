"""EventQueue in amaranth.sim: entries become single events, lowest lane first, one per cycle, no bubbles;
with several regions (one per timestep), each drains only its own entries."""
from amaranth.sim import Simulator

from qpsnn.hw.event_queue import EventQueue


def run(entries, ready_pattern=None, cycles=20, regions=1, read_regions=(0,)):
    """``entries``: (region, group, y, x, mask); events are read region by region in ``read_regions``."""
    dut = EventQueue(lanes=4, groups=3, y_bits=3, x_bits=3, depth=8, regions=regions)
    seen = []

    async def tb(ctx):
        for r, g, y, x, mask in entries:
            ctx.set(dut.w_valid, 1 << r)
            ctx.set(dut.w_data[r], {"group": g, "y": y, "x": x, "mask": mask})
            await ctx.tick()
        ctx.set(dut.w_valid, 0)
        await ctx.tick()
        await ctx.tick()  # the buffered FIFO's latency
        for region in read_regions:
            ctx.set(dut.region, region)
            for cycle in range(cycles):
                ready = 1 if ready_pattern is None else ready_pattern[cycle % len(ready_pattern)]
                ctx.set(dut.ev_ready, ready)
                if ctx.get(dut.ev_valid) and ready:
                    ev = ctx.get(dut.ev)
                    seen.append((cycle, ev.channel, ev.y, ev.x))
                await ctx.tick()
            ctx.set(dut.ev_ready, 0)
            seen.append(("empty", ctx.get(dut.empty)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return seen


def test_events_lowest_lane_first_without_bubbles():
    seen = run([(0, 0, 1, 2, 0b1011), (0, 2, 3, 4, 0b0100), (0, 1, 0, 7, 0b1001)])
    events = [s[1:] for s in seen[:-1]]
    assert events == [(0, 1, 2), (1, 1, 2), (3, 1, 2), (10, 3, 4), (4, 0, 7), (7, 0, 7)]
    assert [s[0] for s in seen[:-1]] == list(range(6))  # one event every cycle
    assert seen[-1] == ("empty", 1)


def test_backpressure_keeps_every_event():
    seen = run([(0, 0, 0, 0, 0b1111), (0, 1, 1, 1, 0b0001)], ready_pattern=[1, 0, 0], cycles=30)
    assert [s[1] for s in seen[:-1]] == [0, 1, 2, 3, 4]


def test_regions_hold_their_timesteps_apart():
    """The encoder writes several timesteps at once; region t gives back exactly what was written to it."""
    entries = [(2, 0, 1, 1, 0b0001), (0, 1, 2, 2, 0b0010), (2, 2, 3, 3, 0b0100), (1, 0, 4, 4, 0b1000)]
    seen = run(entries, regions=3, read_regions=(0, 1, 2), cycles=6)
    per_region, current = [], []
    for s in seen:
        if s[0] == "empty":
            per_region.append(current)
            current = []
            assert s[1] == 1
        else:
            current.append(s[1:])
    assert per_region == [[(5, 2, 2)], [(3, 4, 4)], [(0, 1, 1), (10, 3, 3)]]
