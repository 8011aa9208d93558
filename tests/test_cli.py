"""The CLI's bad inputs end with one line on stderr and exit code 2, never a traceback."""
import json
import subprocess
import sys

import pytest

from qpsnn.sw.cli import main


def _fails_cleanly(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exc:  # argparse errors
        code = main(argv)
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert fragment in err, err
    return err


@pytest.mark.parametrize("argv, fragment", [
    (["eval", "missing.qpsnn"], "no such model file"),
    (["inspect", "missing.qpsnn"], "no such model file"),
    (["train", "--dataset", "imagenet", "--epochs", "1"], "unknown data set 'imagenet'"),
    (["train", "--bits", "3"], "invalid choice: 3"),
    (["train", "--prune", "1.5"], "outside [0, 1)"),
    (["train", "--prune", "half"], "not a number"),
    (["train", "--spec", "c8-x3-fc10"], "bad token 'x3'"),
    (["train", "--dataset", "mnist-idx"], "--data-path"),
    (["train", "--dataset", "cifar10", "--data-path", "/nonexistent"], "does not exist"),
    (["ablate", "--bits", "2,3"], "bits 3 is not one of"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_inputs(capsys, tmp_path, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    err = _fails_cleanly(capsys, argv, fragment)
    if not err.startswith("usage"):
        assert len(err.strip().splitlines()) == 1


def test_corrupt_model_file(capsys, tmp_path):
    bad = tmp_path / "bad.qpsnn"
    bad.write_bytes(b"QPSNN\x00\r\n" + b"\x01" * 20)
    _fails_cleanly(capsys, ["eval", str(bad)], "bad.qpsnn")


def test_entry_point_exit_code_and_json(tmp_path, trained_digits):
    _, _, path = trained_digits
    proc = subprocess.run([sys.executable, "-m", "qpsnn.sw.cli", "eval", str(path), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    for key in ("accuracy_int", "accuracy_float", "samples", "weight_bytes", "file_bytes", "spikes_per_sample", "sops_per_sample"):
        assert key in metrics
    assert metrics["samples"] == 360
    assert abs(metrics["accuracy_float"] - metrics["accuracy_int"]) <= 1.0
    proc = subprocess.run([sys.executable, "-m", "qpsnn.sw.cli", "eval", str(tmp_path / "x.qpsnn")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_inspect_json_has_the_manifest(capsys, trained_digits):
    _, net, path = trained_digits
    assert main(["inspect", str(path), "--json", "--weights"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    layers = manifest["layers"]
    assert [l["kind"] for l in layers] == ["conv", "conv", "output"]
    for key in ("bits", "code_map", "kept_channels", "threshold", "bias", "in_shape", "out_shape", "weights"):
        assert key in layers[0]
    assert manifest["neuron"]["leak_shift"] == 1 and manifest["neuron"]["reset"] == "zero"
    assert manifest["timesteps"] == 4 and manifest["classes"] == 10 and "provenance" in manifest
    assert layers[0]["weights"] == net.layers[0].weights().tolist()
    assert len(layers[1]["kept_channels"]) == 8  # c16 pruned by half


COMMANDS = {"demo", "train", "eval", "inspect", "ablate", "infer", "reset", "sim", "postsynth", "serve-sim", "bench-link",
            "bench-density",
            "build", "sweep", "flash", "export-nir", "import-nir"}


@pytest.mark.parametrize("missing, argv, extra", [
    ("amaranth", ["sim", "model.qpsnn"], "hw"),
    ("cocotb", ["serve-sim", "model.qpsnn"], "hw"),
    ("amaranth", ["bench-link", "model.qpsnn"], "hw"),
    ("amaranth", ["bench-density", "model.qpsnn"], "hw"),
    ("amaranth", ["postsynth", "model.qpsnn", "--board", "icebreaker"], "hw"),
    ("amaranth", ["sweep", "model.qpsnn", "--board", "icebreaker"], "hw"),
    ("amaranth_boards", ["build", "model.qpsnn", "--board", "icebreaker"], "fpga"),
    ("nir", ["export-nir", "model.qpsnn", "out.nir"], "nir"),
    ("nir", ["import-nir", "graph.nir"], "nir"),
])
def test_a_command_without_its_extra_says_which_to_install(monkeypatch, capsys, tmp_path, missing, argv, extra):
    """Every subcommand is registered whatever is installed; one whose extra is missing (its package set to None
    in sys.modules: an import of it fails as when it is not installed) refuses in one line naming the extra."""
    from qpsnn.sw.cli import build_parser

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, missing, None)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == COMMANDS
    assert main(argv) == 2
    captured = capsys.readouterr()
    command = argv[0]
    assert captured.err == f"qpsnn: error: qpsnn {command} needs the " \
        f"{ {'hw': 'hardware', 'fpga': 'FPGA', 'nir': 'NIR'}[extra]} extras: pip install 'qpsnn[{extra}]'\n"
    assert captured.out == "" and not list(tmp_path.iterdir())


def test_a_broken_extra_is_not_hidden(monkeypatch, capsys):
    """A package that is installed but fails to import (here: one of amaranth's own imports) is a real error,
    not a missing extra: it is reported as one, with its traceback under --debug."""
    from qpsnn.sw.errors import require_extra

    def broken(name, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'jschon'", name="jschon")

    monkeypatch.setattr("importlib.import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="jschon"):
        require_extra("sim", "hw", "amaranth")
