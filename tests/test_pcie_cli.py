"""`qpsnn serve-sim --link pcie` without the pcie extra (cocotbext-pcie, cocotbext-axi) refuses in one line naming
it, before anything is built, like every command without its extra (tests/test_cli.py)."""
import sys

import pytest

from qpsnn.sw.cli import main

pytest.importorskip("amaranth", reason="the hw extra is needed to get as far as the pcie check")
pytest.importorskip("cocotb", reason="the hw extra is needed to get as far as the pcie check")


@pytest.mark.parametrize("missing", ["cocotbext.pcie", "cocotbext.axi"])
def test_serve_sim_pcie_without_the_pcie_extra_says_which_to_install(monkeypatch, capsys, tmp_path, missing):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, missing, None)
    assert main(["serve-sim", "model.qpsnn", "--link", "pcie"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "qpsnn: error: qpsnn serve-sim --link pcie needs the PCIe extras: pip install 'qpsnn[pcie]'\n"
    assert captured.out == "" and not list(tmp_path.iterdir())
