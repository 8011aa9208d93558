"""NIR in and out (issue 10), checked in the peers' own simulators: snnTorch 1.0 and Norse 1.1 import what
`qpsnn export-nir` writes and must classify like qpsnn; a network trained in snnTorch and exported with its own
`export_to_nir` comes back through `qpsnn import-nir` as a `.qpsnn` that the RTL runs bit-exactly; and every
refusal is one line naming the node, exit code 2, nothing written."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")
try:
    import snntorch as snn
    from snntorch.export_nir import export_to_nir
    from snntorch.import_nir import import_from_nir
except ImportError:  # the refusal tests need NIR only
    snn = None
try:
    import norse.torch as norse_torch
except ImportError:
    norse_torch = None
needs_peers = pytest.mark.skipif(snn is None or norse_torch is None, reason="snnTorch or Norse not installed")

from qpsnn.sw import modelfile  # noqa: E402
from qpsnn.sw.cli import main  # noqa: E402
from qpsnn.sw.golden import run_golden  # noqa: E402
from qpsnn.sw.nir_io import DT, load_into, parse_graph  # noqa: E402
from qpsnn.sw.train import to_float  # noqa: E402

T = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These networks are tiny: on a busy 2-core machine one thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_model(request, one_thread):
    """The session's trained digits model, trained (when this module asks first) with one thread too."""
    return request.getfixturevalue("trained_digits")


def _quietly(fn, *args, **kwargs):
    """snnTorch's importer and exporter print warnings with whole parameter arrays on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _peer_classes(module, images: torch.Tensor, timesteps: int) -> np.ndarray:
    """The peer's own simulation of the imported graph: T steps on the static image; the readout sums the output
    (what the graph's metadata says for a portable graph)."""
    state, total = None, 0
    with torch.no_grad():
        for _ in range(timesteps):
            y, state = module(images) if state is None else module(images, state)
            total = total + y
    return total.argmax(1).numpy()


def _export(path, out, *flags) -> None:
    assert _quietly(main, ["export-nir", str(path), str(out), *flags]) == 0


# ---------------------------------------------------------------------------------------------- out

@needs_peers
def test_exports_run_in_snntorch_and_norse(digits_model, digits, tmp_path):
    """Done-when 1: the digits model, exported, classifies the 360 test images in snnTorch's and Norse's own
    simulators like qpsnn's float model (and, for the integer export, like the integer golden model)."""
    model, net, path = digits_model
    images = to_float(digits.test.images)
    with torch.no_grad():
        float_classes = model.eval()(images).argmax(1).numpy()
    golden = run_golden(net, torch.from_numpy(digits.test.images)).classes.numpy()
    assert len(golden) == 360
    for flags in ([], ["--float"]):
        out = tmp_path / f"digits{'_float' if flags else ''}.nir"
        _export(path, out, "--portable", *flags)
        graph = nir.read(out)
        assert graph.metadata["dt"] == DT and graph.metadata["timesteps"] == net.timesteps
        assert "pixel / 255" in graph.metadata["input_encoding"]
        peers = {"snntorch": _quietly(import_from_nir, nir.read(out)),
                 "norse": norse_torch.from_nir(nir.read(out), dt=float(graph.metadata["dt"]))}
        for peer, module in peers.items():
            classes = _peer_classes(module, images, net.timesteps)
            agree_float = float((classes == float_classes).mean())
            assert agree_float >= 0.99, (peer, flags, agree_float)
            if not flags:
                assert float((classes == golden).mean()) >= 0.99, (peer, "golden")


@needs_peers
def test_default_graph_is_the_documented_mapping(digits_model, digits, tmp_path):
    """The default graph: our LIF as nir.LIF (tau = 2 dt, r = 2, v_leak = v_reset = 0), OR-pooling as SumPool2d +
    Threshold, the output as nir.I (r = 1/dt); read back by our own importer it is the integer network again."""
    _, net, path = digits_model
    out = tmp_path / "digits.nir"
    _export(path, out)
    graph = nir.read(out)
    kinds = [type(graph.nodes[b]).__name__ for _, b in graph.edges]
    assert kinds == ["Conv2d", "LIF", "SumPool2d", "Threshold", "Conv2d", "LIF", "SumPool2d", "Threshold",
                     "Flatten", "Affine", "I", "Output"], kinds
    lif = graph.nodes["lif0"]
    assert np.allclose(lif.tau, 2 * DT) and np.all(lif.r == 2) and np.all(lif.v_leak == 0)
    assert np.all(lif.v_reset == 0) and np.all(lif.v_threshold == 1)
    assert np.all(graph.nodes["or0"].threshold == 0.5) and np.allclose(graph.nodes[f"integrator{len(net.layers) - 1}"].r, 1 / DT)
    conv = graph.nodes["conv0"]
    assert np.array_equal(conv.metadata["qpsnn_threshold"], net.layers[0].threshold.numpy())
    # the integer values come back out of the metadata's scale exactly
    levels = conv.weight / conv.metadata["qpsnn_weight_scale"].reshape(-1, 1, 1, 1)
    assert np.array_equal(np.rint(levels), net.layers[0].weights().numpy()) and np.allclose(levels, np.rint(levels))
    # our importer maps the graph back; its float model on the graph's weights is the integer network
    imported = parse_graph(graph, net.in_shape, DT)
    assert imported.spec == net.provenance["spec"]
    from qpsnn.sw.model import QPSNN, QuantConfig
    from qpsnn.sw.spec import parse_spec

    again = QPSNN(parse_spec(imported.spec), net.in_shape, net.timesteps, QuantConfig(mode="float"))
    load_into(imported, again, to_float(digits.train.images[:256]))
    with torch.no_grad():
        classes = again.eval()(to_float(digits.test.images)).argmax(1).numpy()
    golden = run_golden(net, torch.from_numpy(digits.test.images)).classes.numpy()
    assert float((classes == golden).mean()) >= 0.99
    # what the peers lack (README): snnTorch 1.0 has no Threshold and no I, Norse 1.1 neither
    with pytest.raises(ValueError, match="Unknown node type"):
        _quietly(import_from_nir, nir.read(out))
    with pytest.raises(Exception):
        norse_torch.from_nir(nir.read(out), dt=DT, ignore_warnings=True)


# ---------------------------------------------------------------------------------------------- in

def _leaky(beta: float, threshold: float, shape) -> torch.nn.Module:
    """snnTorch's LIF with qpsnn's semantics: reset to zero, no delay; per-neuron tensors because snnTorch 1.0
    exports scalar parameters with a shape NIR's type check rejects for conv layers."""
    return snn.Leaky(beta=torch.full(shape, beta), threshold=torch.full(shape, threshold), reset_mechanism="zero",
                     init_hidden=True, reset_delay=False)


def _snntorch_net() -> torch.nn.Sequential:
    # AvgPool2d then a LIF with beta 0 (tau = dt) and threshold 0.1: an OR of the 2x2 window's spikes
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), _leaky(0.5, 1.0, (8, 8, 8)),
        torch.nn.AvgPool2d((2, 2)), _leaky(0.0, 0.1, (8, 4, 4)),
        torch.nn.Conv2d(8, 16, 3, padding=1), _leaky(0.5, 1.0, (16, 4, 4)),
        torch.nn.AvgPool2d((2, 2)), _leaky(0.0, 0.1, (16, 2, 2)),
        torch.nn.Flatten(), torch.nn.Linear(64, 10))


def _snn_logits(net, x: torch.Tensor) -> torch.Tensor:
    for module in net.modules():
        if isinstance(module, snn.Leaky):
            module.reset_mem()
    return sum(net(x) for _ in range(T))


@pytest.fixture(scope="module")
def from_snntorch(digits, tmp_path_factory, one_thread):
    """A small network trained in snnTorch, exported with snnTorch's exporter, imported with `qpsnn import-nir`."""
    torch.manual_seed(0)
    net = _snntorch_net()
    x, y = to_float(digits.train.images), torch.from_numpy(digits.train.labels)
    epochs = 12
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 64):
            idx = order[i:i + 64]
            loss = torch.nn.functional.cross_entropy(_snn_logits(net, x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        acc_snn = 100.0 * float((_snn_logits(net, to_float(digits.test.images)).argmax(1)
                                 == torch.from_numpy(digits.test.labels)).float().mean())
    folder = tmp_path_factory.mktemp("from_snntorch")
    graph_path, out = folder / "snntorch.nir", folder / "imported.qpsnn"
    nir.write(graph_path, _quietly(export_to_nir, net, torch.zeros(1, 1, 8, 8), ignore_dims=[0]))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["import-nir", str(graph_path), "--dataset", "digits", "--bits", "4", "--epochs", "2",
                     "--timesteps", str(T), "--out", str(out), "--json"])
    assert code == 0
    return acc_snn, json.loads(stdout.getvalue()), out


@needs_peers
def test_snntorch_network_imports_within_two_points(from_snntorch):
    """Done-when 2: the integer accuracy of the imported, 4-bit fine-tuned network is within 2 points of the
    snnTorch float model's; before fine-tuning, qpsnn's float model on the graph's weights is that model."""
    acc_snn, metrics, out = from_snntorch
    assert acc_snn >= 80.0, acc_snn  # the check below means something only for a trained network
    assert abs(metrics["accuracy_graph_float"] - acc_snn) <= 0.6, (metrics["accuracy_graph_float"], acc_snn)
    assert abs(metrics["accuracy_int"] - acc_snn) <= 2.0, (metrics["accuracy_int"], acc_snn)
    assert metrics["imported_spec"] == "c8-p2-c16-p2-fc10"
    net = modelfile.load(out)
    assert net.layers[1].bits == 4
    prov = net.provenance["nir"]
    assert prov["spec"] == "c8-p2-c16-p2-fc10" and prov["dt"] == DT
    assert prov["notes"] == metrics["notes"] and any("float32 rounding of tau" in n for n in prov["notes"])


def _simulator():
    from qpsnn.sim.toolchain import available

    return next((s for s in ("icarus", "verilator") if available(s)), None)


@needs_peers
def test_imported_model_is_bit_exact_in_the_rtl(from_snntorch):
    """Done-when 2: `qpsnn sim` on 20 images of the imported model is bit-exact."""
    pytest.importorskip("cocotb")
    simulator = _simulator()
    if simulator is None:
        pytest.skip("neither Icarus nor Verilator is installed")
    _, _, out = from_snntorch
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["sim", str(out), "--samples", "20", "--simulator", simulator, "--json"])
    report = json.loads(stdout.getvalue())
    assert code == 0 and report["bit_exact"] and report["samples"] == 20, report


# ---------------------------------------------------------------------------------------------- refusals

def _full(shape, value):
    return np.full(shape, float(value))


def _lif(shape, tau=2 * DT, r=2.0, threshold=1.0):
    return nir.LIF(tau=_full(shape, tau), r=_full(shape, r), v_leak=_full(shape, 0), v_threshold=_full(shape, threshold),
                   v_reset=_full(shape, 0))


def _graph(change=None) -> "nir.NIRGraph":
    """A valid small graph (conv 3x3 -> LIF -> OR-pool -> linear), then ``change(nodes, edges)``."""
    rng = np.random.default_rng(0)
    nodes = {
        "input": nir.Input(input_type={"input": np.array([1, 8, 8])}),
        "conv": nir.Conv2d(input_shape=(8, 8), weight=rng.normal(size=(4, 1, 3, 3)), stride=1, padding=1, dilation=1,
                           groups=1, bias=np.zeros(4)),
        "lif": _lif((4, 8, 8)),
        "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "or": nir.Threshold(threshold=_full((4, 4, 4), 0.5)),
        "flat": nir.Flatten(input_type={"input": np.array([4, 4, 4])}, start_dim=0, end_dim=-1),
        "fc": nir.Affine(weight=rng.normal(size=(10, 64)), bias=np.zeros(10)),
        "output": nir.Output(output_type={"output": np.array([10])}),
    }
    names = list(nodes)
    edges = list(zip(names, names[1:]))
    if change:
        change(nodes, edges)
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def _conv5(nodes, edges):
    nodes["conv"] = nir.Conv2d(input_shape=(8, 8), weight=np.ones((4, 1, 5, 5)), stride=1, padding=2, dilation=1,
                               groups=1, bias=np.zeros(4))


def _stride2(nodes, edges):
    nodes["conv"] = nir.Conv2d(input_shape=(8, 8), weight=np.ones((4, 1, 3, 3)), stride=2, padding=1, dilation=1,
                               groups=1, bias=np.zeros(4))


def _unknown(nodes, edges):
    nodes["scale"] = nir.Scale(scale=_full((4, 8, 8), 2.0))
    edges[edges.index(("conv", "lif"))] = ("conv", "scale")
    edges.append(("scale", "lif"))


def _recurrent(nodes, edges):
    nodes["w_rec"] = nir.Conv2d(input_shape=(8, 8), weight=np.ones((4, 4, 3, 3)), stride=1, padding=1, dilation=1,
                                groups=1, bias=np.zeros(4))
    edges += [("lif", "w_rec"), ("w_rec", "lif")]


def _firing_output(nodes, edges):
    nodes["lif_out"] = _lif((10,))
    edges[edges.index(("fc", "output"))] = ("fc", "lif_out")
    edges.append(("lif_out", "output"))


def _set(name, node):
    def change(nodes, edges):
        nodes[name] = node
    return change


def _write_valid(path):
    nir.write(path, _graph())


REFUSALS = {
    "unknown node": (_unknown, "node 'scale' of type Scale has no counterpart"),
    "bad kernel": (_conv5, "node 'conv': kernel 5x5"),
    "stride": (_stride2, "node 'conv': stride (2, 2)"),
    "tau with no exact leak": (_set("lif", _lif((4, 8, 8), tau=DT / 0.1)), "node 'lif': tau = 0.001 s gives a leak of 0.9"),
    "power-of-two leak not ours": (_set("lif", _lif((4, 8, 8), tau=DT / 0.75)), "a power-of-two leak, but not qpsnn's"),
    "leak towards v_leak": (_set("lif", nir.LIF(tau=_full((4, 8, 8), 2 * DT), r=_full((4, 8, 8), 2), v_leak=_full((4, 8, 8), 0.3),
                                                v_threshold=_full((4, 8, 8), 1), v_reset=_full((4, 8, 8), 0))),
                            "node 'lif': v_leak = 0.3"),
    "recurrent edge": (_recurrent, "recurrent edge 'w_rec' -> 'lif'"),
    "pooling without OR": (_set("or", nir.Threshold(threshold=_full((4, 4, 4), 1.5))), "node 'or': threshold 1.5"),
    "firing output layer": (_firing_output, "node 'lif_out': the graph ends with firing neurons"),
    "synaptic neuron": (_set("lif", nir.CubaLIF(tau_syn=_full((4, 8, 8), DT), tau_mem=_full((4, 8, 8), 2 * DT),
                                                 r=_full((4, 8, 8), 2), v_leak=_full((4, 8, 8), 0),
                                                 v_threshold=_full((4, 8, 8), 1))), "node 'lif' of type CubaLIF"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_import_refusals(case, tmp_path, capsys):
    """Done-when 3: one error line that names the node and says why, exit 2, nothing written."""
    change, fragment = REFUSALS[case]
    graph_path, out = tmp_path / "g.nir", tmp_path / "m.qpsnn"
    nir.write(graph_path, _graph(change))
    assert main(["import-nir", str(graph_path), "--dataset", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.nir"]


@pytest.mark.parametrize("damage", ["malformed", "truncated", "empty"])
def test_import_refuses_damaged_files(damage, tmp_path, capsys):
    graph_path, out = tmp_path / "g.nir", tmp_path / "m.qpsnn"
    _write_valid(graph_path)
    data = graph_path.read_bytes()
    graph_path.write_bytes({"malformed": bytes(np.random.default_rng(1).integers(0, 256, len(data), dtype=np.uint8)),
                            "truncated": data[:len(data) // 2], "empty": b""}[damage])
    assert main(["import-nir", str(graph_path), "--dataset", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not a readable NIR graph" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_valid_small_graph_is_accepted(digits):
    """The refusal cases above are single changes of this graph, which imports."""
    imported = parse_graph(_graph(), (1, 8, 8), DT)
    assert imported.spec == "c4-p2-fc10" and len(imported.notes) == 1 and "exact ties" in imported.notes[0]


def test_export_refusals_and_no_half_written_file(digits_model, tmp_path, capsys, monkeypatch):
    _, _, path = digits_model
    assert main(["export-nir", str(tmp_path / "missing.qpsnn"), str(tmp_path / "x.nir")]) == 2
    assert "no such model file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # refused by the option's type, before any work
        main(["export-nir", str(path), str(tmp_path)])
    assert exc.value.code == 2 and "is a directory" in capsys.readouterr().err
    lonely = tmp_path / "lonely.qpsnn"
    lonely.write_bytes(path.read_bytes())
    assert main(["export-nir", str(lonely), str(tmp_path / "x.nir"), "--float"]) == 2
    err = capsys.readouterr().err
    assert "float checkpoint" in err and "there is none" in err and len(err.strip().splitlines()) == 1
    # nor is the float checkpoint of another model beside it: this one differs in its provenance only
    lonely.with_suffix(".pt").write_bytes(path.with_suffix(".pt").read_bytes())
    other = modelfile.load(path)
    other.provenance = {**other.provenance, "note": "another model"}
    modelfile.save(other, lonely)
    assert main(["export-nir", str(lonely), str(tmp_path / "x.nir"), "--float"]) == 2
    err = capsys.readouterr().err
    assert "belongs to another model" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.nir").exists()
    # a write that dies half-way leaves neither the file nor its temporary
    out = tmp_path / "x.nir"

    def dies(filename, graph, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"\x89HDF half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nir, "write", dies)
    try:
        code = main(["export-nir", str(path), str(out)])
    except OSError:  # the command line may report it or let it through; either way nothing may stay behind
        code = None
    assert code != 0 and not out.exists() and not list(tmp_path.glob("*.part"))
