"""NIR (Neuromorphic Intermediate Representation, PyPI ``nir``) in and out.

Out: a `.qpsnn` model as a NIR graph, by default the integer network's exact values, with ``float=True``
the float checkpoint beside it. In: a feed-forward graph of 3x3 convolutions, linear layers, LIF neurons
and pooling (as snnTorch, Norse or Sinabs write it) as our float model with the weights loaded; the caller
then fine-tunes it quantization-aware and exports it. What does not map is refused with one line that
names the node; what maps only approximately is listed in the conversion notes, which go to the terminal
and into the provenance.

Time is discrete in qpsnn and continuous in NIR; the bridge is forward Euler with step ``dt`` (``DT``,
snnTorch's fixed value): a NIR LIF ``tau dv/dt = (v_leak - v) + r I`` becomes
``v <- v + dt/tau (v_leak - v + r I)``. docs/DESIGN.md has the whole mapping table.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import QpsnnError
from .intnet import INPUT_BITS, IntNet

DT = 1e-4  # seconds per timestep (snnTorch 1.0's importer and exporter hard-code it; Norse takes dt=)
LEAK = 0.5  # qpsnn's LIF: V <- V/2 + I, i.e. tau = 2 dt
LEAK_TOLERANCE = 1e-5  # |leak - 1/2| accepted as float32 rounding of tau, and stated
INPUT_ENCODING = (f"direct: the image as x = pixel / {(1 << INPUT_BITS) - 1} (8-bit pixels), the same x at every "
                  "one of the T timesteps")
SUPPORTED = "Input, Output, Conv2d, Affine, Linear, Flatten, LIF, SumPool2d, AvgPool2d, Threshold, I"


def _nir():
    try:
        import nir
    except ImportError:
        raise QpsnnError("NIR support needs the nir package: pip install 'qpsnn[nir]'") from None
    return nir


# ============================================================================================== export

@dataclass
class _Stage:
    """One layer in float terms: per-timestep current ``W x + b``, then (firing layers) LIF with threshold 1."""
    kind: str  # conv | fc | output
    weight: np.ndarray  # float64, conv [O, I, 3, 3], fc/output [O, I]
    bias: np.ndarray  # float64 [O]
    in_shape: tuple
    neuron_shape: tuple
    pool: int
    meta: dict = field(default_factory=dict)


def _integer_stages(net: IntNet) -> list[_Stage]:
    """The integer network in float terms. A firing layer's membrane is V / (theta - 2^-T) per channel.

    With exact halving instead of ``>> 1``, the float membrane V_f satisfies ``V = floor(V_f)`` (every bias
    and current is an integer, and floor(a/2) <= a/2 < floor(a/2) + 1/2), and V_f is a multiple of
    2^-(T-1); so ``V >= theta`` exactly when ``V_f > theta - 2^-T``, NIR's strict comparison.
    """
    margin = 2.0 ** -net.timesteps
    stages = []
    for i, layer in enumerate(net.layers):
        # weight = odd level x scale, scale per output channel
        scale = np.full(layer.channels, float(1 << layer.weight_shift))
        if i == 0:
            scale *= (1 << INPUT_BITS) - 1  # the graph's input is x = pixel / 255
        meta = {"qpsnn_bits": layer.bits, "qpsnn_weight_shift": layer.weight_shift,
                "qpsnn_bias": layer.bias.numpy().astype(np.int64)}
        unit = np.ones(layer.channels)  # membrane units per integer step
        if layer.fires:
            unit = 1.0 / (layer.threshold.double().numpy() - margin)
            meta["qpsnn_threshold"] = layer.threshold.numpy().astype(np.int64)
        scale *= unit
        meta["qpsnn_weight_scale"] = scale
        levels = layer.weights().double().numpy()
        w = levels * scale.reshape(-1, *([1] * (levels.ndim - 1)))
        b = layer.bias.double().numpy() * unit
        stages.append(_Stage(layer.kind, w, b, tuple(layer.in_shape), tuple(layer.neuron_shape), layer.pool, meta))
    return stages


@torch.no_grad()
def _float_stages(model) -> list[_Stage]:
    """The float model with its BatchNorms folded into weights and biases (exact up to float rounding)."""
    model.eval()
    stages = []
    for i, (spec, layer, norm) in enumerate(zip(model.spec.layers, model.layers, model.norms)):
        w = layer.quantized_weight().double()
        ishape, oshape = model.shapes[i]
        if spec.kind == "output":
            b = layer.bias.double()
            shape = tuple(oshape)
        else:
            a = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
            b = norm.bias.double() - a * norm.running_mean.double()
            w = w * a.view(-1, *([1] * (w.dim() - 1)))
            shape = (spec.out_channels, *ishape[1:]) if spec.kind == "conv" else (spec.out_channels,)
        stages.append(_Stage(spec.kind, w.numpy(), b.numpy(), tuple(ishape), shape, spec.pool))
    return stages


def _full(shape, value) -> np.ndarray:
    return np.full(tuple(shape), float(value), dtype=np.float64)


def build_graph(stages: list[_Stage], in_shape: tuple, timesteps: int, source: str, portable: bool):
    """The NIR graph of the stages and the notes that say what the graph's readers must know."""
    nir = _nir()
    nodes = {"input": nir.Input(input_type={"input": np.array(in_shape)})}
    order = ["input"]
    gain = 1.0 if portable else 2.0  # r: the current enters as dt/tau * r * I = I/2 * r
    wscale = 2.0 if portable else 1.0
    notes = []
    shape = tuple(in_shape)
    for i, st in enumerate(stages):
        if st.kind != "conv" and len(shape) > 1:
            name = f"flatten{i}"
            # dims counted from the end: (C, H, W) in NIR, and also (N, C, H, W) in a peer that keeps the batch
            nodes[name] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=-len(shape), end_dim=-1)
            order.append(name)
            shape = (int(np.prod(shape)),)
        name = f"conv{i}" if st.kind == "conv" else f"fc{i}"
        weight = st.weight * (wscale if st.kind != "output" else 1.0)
        bias = st.bias * (wscale if st.kind != "output" else 1.0)
        if st.kind == "conv":
            nodes[name] = nir.Conv2d(input_shape=tuple(shape[1:]), weight=weight, stride=1, padding=1, dilation=1,
                                     groups=1, bias=bias, metadata=dict(st.meta))
        else:
            nodes[name] = nir.Affine(weight=weight, bias=bias, metadata=dict(st.meta))
        order.append(name)
        if st.kind == "output":
            if not portable:
                name = f"integrator{i}"
                nodes[name] = nir.I(r=_full(st.neuron_shape, 1.0 / DT))
                order.append(name)
            break
        name = f"lif{i}"
        nodes[name] = nir.LIF(tau=_full(st.neuron_shape, DT / (1 - LEAK)), r=_full(st.neuron_shape, gain),
                              v_leak=_full(st.neuron_shape, 0), v_threshold=_full(st.neuron_shape, 1.0),
                              v_reset=_full(st.neuron_shape, 0))
        order.append(name)
        shape = st.neuron_shape
        if st.pool > 1:
            k = st.pool
            nodes[f"pool{i}"] = nir.SumPool2d(kernel_size=np.array([k, k]), stride=np.array([k, k]),
                                             padding=np.array([0, 0]))
            shape = (shape[0], shape[1] // k, shape[2] // k)
            if portable:  # a LIF with tau = dt forgets everything each step: a threshold the peers import
                nodes[f"or{i}"] = nir.LIF(tau=_full(shape, DT), r=_full(shape, 1), v_leak=_full(shape, 0),
                                          v_threshold=_full(shape, 0.5), v_reset=_full(shape, 0))
            else:
                nodes[f"or{i}"] = nir.Threshold(threshold=_full(shape, 0.5))
            order += [f"pool{i}", f"or{i}"]
    nodes["output"] = nir.Output(output_type={"output": np.array([stages[-1].weight.shape[0]])})
    order.append("output")
    readout = ("argmax over the classes of the sum, over the T timesteps, of the graph's output (the output "
               "layer's current; its integrator is left out)") if portable else \
        "argmax over the classes of the integrator's potential after T timesteps"
    metadata = {
        "generator": "qpsnn export-nir", "source": source, "dt": DT, "timesteps": int(timesteps),
        "input_encoding": INPUT_ENCODING, "readout": readout, "portable": int(portable),
        "neuron": (f"LIF: V <- V/2 + I (tau = 2 dt, r = {gain:g}{', weights x2' if portable else ''}), spike when "
                   "V > v_threshold, hard reset to 0; pooling: 2x2 OR of spikes = SumPool2d then a threshold 1/2"),
    }
    if source == "integer":
        notes.append(f"membranes in units of (threshold - 2^-{timesteps}) per channel, so every LIF threshold is 1; "
                     "exact halving instead of >> 1 fires on the same timesteps (V = floor(V_float))")
    else:
        notes.append("the float model fires at V >= 1, NIR at V > 1: equal except on exact ties")
    if portable:
        notes.append("portable: OR-pooling's Threshold written as a LIF with tau = dt, r = 1, threshold 1/2 (a "
                     "stateless threshold at step dt); LIF r = 1 with weights and biases x2; no output integrator")
    metadata["notes"] = "; ".join(notes)
    graph = nir.NIRGraph(nodes=nodes, edges=list(zip(order, order[1:])), metadata=metadata)
    return graph, notes


def export_nir(model_path: str | Path, out: str | Path, use_float: bool = False, portable: bool = False) -> dict:
    """Write MODEL's network as a NIR graph to OUT (atomically); return a summary."""
    from . import modelfile
    from .train import fingerprint, load_float_checkpoint

    nir = _nir()
    model_path, out = Path(model_path), Path(out)
    net = modelfile.load(model_path)
    if out.is_dir():
        raise QpsnnError(f"{out} is a directory; give the NIR file to write")
    if not out.parent.is_dir():
        raise QpsnnError(f"{out.parent} does not exist")
    if use_float:
        pt = model_path.with_suffix(".pt")
        model = load_float_checkpoint(pt, fingerprint(model_path.read_bytes()))
        if model is None:
            raise QpsnnError(f"--float needs the float checkpoint saved with the model, {pt}; "
                             f"{'it belongs to another model' if pt.exists() else 'there is none'}")
        stages, source = _float_stages(model), "float"
    else:
        stages, source = _integer_stages(net), "integer"
    graph, notes = build_graph(stages, tuple(net.in_shape), net.timesteps, source, portable)
    _atomic_write(out, lambda tmp: nir.write(tmp, graph))
    return {"model": str(model_path), "nir": str(out), "source": source, "portable": portable,
            "nodes": len(graph.nodes), "timesteps": net.timesteps, "dt": DT, "notes": notes}


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ============================================================================================== import

@dataclass
class ImportedLayer:
    kind: str  # conv | fc | output
    weight: np.ndarray  # float64, scaled so that the LIF threshold is 1 and the leak 1/2
    bias: np.ndarray
    pool: int = 1
    names: list[str] = field(default_factory=list)  # the NIR nodes it came from


@dataclass
class ImportedGraph:
    layers: list[ImportedLayer]
    in_shape: tuple
    spec: str
    notes: list[str]
    metadata: dict


def read_graph(path: str | Path):
    from .options import regular_file

    nir = _nir()
    path = Path(path)
    regular_file(path, "NIR file")
    try:
        return nir.read(path, type_check=False)
    except Exception as exc:  # h5py, KeyError, ValueError, AssertionError: a malformed or truncated file
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise QpsnnError(f"{path}: not a readable NIR graph ({type(exc).__name__}: {text[:200]})") from None


def _arr(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _pair(value, what: str, name: str) -> tuple[int, int]:
    if isinstance(value, str):
        raise QpsnnError(f"node {name!r}: {what} {value!r} is not supported")
    a = np.asarray(value).astype(np.int64).ravel()
    if a.size == 1:
        return int(a[0]), int(a[0])
    if a.size != 2:
        raise QpsnnError(f"node {name!r}: {what} {a.tolist()} is not a pair")
    return int(a[0]), int(a[1])


def _per_channel(value, channels: int, shape: tuple, what: str, name: str) -> np.ndarray:
    """A neuron parameter as one value per channel; refuse values that differ within a channel."""
    a = _arr(value)
    try:
        full = np.broadcast_to(a, shape) if a.ndim <= len(shape) else None
    except ValueError:
        full = None
    if full is None:
        raise QpsnnError(f"node {name!r}: {what} has shape {list(a.shape)}, the layer's neurons {list(shape)}")
    flat = full.reshape(channels, -1)
    if not np.all(flat == flat[:, :1]):
        raise QpsnnError(f"node {name!r}: {what} differs between neurons of one channel; qpsnn has one per channel")
    return flat[:, 0].copy()


def _chain(graph, nir) -> list[tuple[str, object]]:
    """The graph as one path from its Input to its Output; refuse cycles, branches and subgraphs."""
    nodes, edges = graph.nodes, [tuple(e) for e in graph.edges]
    for a, b in edges:
        for end in (a, b):
            if end not in nodes:
                raise QpsnnError(f"edge {a!r} -> {b!r} names a node {end!r} that is not in the graph")
    for name, node in nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise QpsnnError(f"node {name!r} is a subgraph (a recurrent layer?); qpsnn runs feed-forward chains only")
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    pred: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        succ[a].append(b)
        pred[b].append(a)
    # a cycle: depth-first search; report the edge that closes it
    state: dict[str, int] = {}
    for start in nodes:
        stack = [(start, iter(succ[start]))]
        state[start] = state.get(start, 0) or 1
        if state[start] == 2:
            continue
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise QpsnnError(f"node {nxt!r}: recurrent edge {node!r} -> {nxt!r} closes a cycle; "
                                 "qpsnn runs feed-forward networks only")
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(succ[nxt])))
    inputs = [n for n, v in nodes.items() if isinstance(v, nir.Input)]
    outputs = [n for n, v in nodes.items() if isinstance(v, nir.Output)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise QpsnnError(f"the graph has {len(inputs)} Input and {len(outputs)} Output nodes; qpsnn needs one of each")
    for name in nodes:
        if len(succ[name]) > 1:
            raise QpsnnError(f"node {name!r} feeds {len(succ[name])} nodes ({', '.join(succ[name])}); "
                             "qpsnn needs a chain without branches")
        if len(pred[name]) > 1:
            raise QpsnnError(f"node {name!r} sums {len(pred[name])} inputs; qpsnn needs a chain without branches")
    path, name = [], inputs[0]
    while True:
        path.append((name, nodes[name]))
        if name == outputs[0]:
            break
        if not succ[name]:
            raise QpsnnError(f"node {name!r} leads nowhere: no path from the Input to the Output")
        name = succ[name][0]
    unused = [n for n in nodes if n not in dict(path)]
    if unused:
        raise QpsnnError(f"node {unused[0]!r} is not on the path from the Input to the Output")
    return path


def _leak_gain(node, name: str, dt: float, channels: int, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """A LIF node's leak factor 1 - dt/tau and input gain r dt / tau, per channel."""
    tau = _per_channel(node.tau, channels, shape, "tau", name)
    r = _per_channel(node.r, channels, shape, "r", name)
    if not (np.all(np.isfinite(tau)) and np.all(tau > 0)):
        raise QpsnnError(f"node {name!r}: tau must be positive and finite")
    if not (np.all(np.isfinite(r)) and np.all(r > 0)):
        raise QpsnnError(f"node {name!r}: r must be positive and finite")
    return 1.0 - dt / tau, r * dt / tau


def _check_zero(value, what: str, name: str, why: str) -> None:
    if value is not None and not np.all(_arr(value) == 0):
        raise QpsnnError(f"node {name!r}: {what} = {float(np.max(np.abs(_arr(value)))):g}; {why}")


def _firing_lif(node, name: str, dt: float, channels: int, shape: tuple, notes: list[str]) -> np.ndarray:
    """Per-channel factor that turns the layer's current into qpsnn units (threshold 1, leak 1/2)."""
    _check_zero(node.v_leak, "v_leak", name, "qpsnn's LIF leaks towards 0")
    _check_zero(getattr(node, "v_reset", None), "v_reset", name, "qpsnn's LIF resets to 0")
    leak, gain = _leak_gain(node, name, dt, channels, shape)
    err = float(np.max(np.abs(leak - LEAK)))
    if err > LEAK_TOLERANCE:
        worst = float(leak[np.argmax(np.abs(leak - LEAK))])
        shift = -math.log2(worst) if 0 < worst < 1 else None
        kind = "a power-of-two leak, but not qpsnn's" if shift and abs(shift - round(shift)) < 1e-9 else "no power-of-two leak"
        raise QpsnnError(f"node {name!r}: tau = {float(node.tau.ravel()[0]) if np.ndim(node.tau) else float(node.tau):g} s "
                         f"gives a leak of {worst:.6g} per step at dt = {dt:g} s ({kind}); qpsnn's integer LIF "
                         f"halves V every step (tau = 2 dt): retrain with leak 1/2 or give the dt it was trained at")
    if err > 0:
        notes.append(f"{name}: leak {LEAK} taken for 1 - dt/tau = {LEAK} +- {err:.1e} (float32 rounding of tau)")
    theta = _per_channel(node.v_threshold, channels, shape, "v_threshold", name)
    if not (np.all(np.isfinite(theta)) and np.all(theta > 0)):
        raise QpsnnError(f"node {name!r}: v_threshold must be positive and finite")
    return gain / theta


def _or_threshold(node, name: str, pool_name: str, pool_unit: float, dt: float, shape: tuple, nir, notes) -> None:
    """The node after a pooling layer must turn a pooled count into one spike: an OR."""
    if isinstance(node, nir.Threshold):
        t = _arr(node.threshold)
    elif isinstance(node, nir.LIF):
        _check_zero(node.v_leak, "v_leak", name, "an OR after pooling must have none")
        leak, gain = _leak_gain(node, name, dt, shape[0], shape)
        err = float(np.max(np.abs(leak)))
        if err > LEAK_TOLERANCE:
            raise QpsnnError(f"node {name!r}: a LIF after pooling {pool_name!r} keeps {err:.3g} of its potential per "
                             f"step at dt = {dt:g} s; qpsnn pools by OR, which needs tau = dt (a stateless threshold)")
        if err > 0:
            notes.append(f"{name}: leak 0 taken for 1 - dt/tau = {err:.1e} (float32 rounding of tau)")
        t = _per_channel(node.v_threshold, shape[0], shape, "v_threshold", name) / gain
    else:
        raise QpsnnError(f"node {name!r} ({type(node).__name__}) follows pooling {pool_name!r}; qpsnn pools spikes "
                         "by OR, which needs a threshold there (Threshold, or a LIF with tau = dt)")
    # pooled values are k * pool_unit, k = 0..4: OR exactly when 0 <= threshold < pool_unit
    if not (np.all(t >= 0) and np.all(t < pool_unit)):
        raise QpsnnError(f"node {name!r}: threshold {float(np.max(t)):g} after pooling {pool_name!r} is not an OR "
                         f"(needs 0 <= threshold < {pool_unit:g})")


def parse_graph(graph, in_shape: tuple, dt: float) -> ImportedGraph:
    """Walk the graph and turn it into qpsnn layers, or refuse with the node and the reason."""
    nir = _nir()
    notes: list[str] = ["NIR's LIF fires when v > v_threshold, qpsnn's when V >= threshold: the same but on exact ties"]
    path = _chain(graph, nir)
    declared = path[0][1].input_type.get("input") if isinstance(path[0][1].input_type, dict) else None
    if declared is not None and tuple(int(v) for v in np.asarray(declared).ravel()) != tuple(in_shape):
        raise QpsnnError(f"node {path[0][0]!r}: the graph takes inputs of shape {np.asarray(declared).tolist()}, "
                         f"the data set has images {list(in_shape)}")
    shape = tuple(in_shape)
    layers: list[ImportedLayer] = []
    i, body = 0, path[1:-1]
    allowed = (nir.Conv2d, nir.Affine, nir.Linear, nir.Flatten, nir.LIF, nir.SumPool2d, nir.AvgPool2d,
               nir.Threshold, nir.I)
    for name, node in body:
        if not isinstance(node, allowed):
            raise QpsnnError(f"node {name!r} of type {type(node).__name__} has no counterpart in qpsnn "
                             f"(supported: {SUPPORTED})")
    while i < len(body):
        name, node = body[i]
        if isinstance(node, nir.Flatten):
            if len(shape) == 1:
                i += 1
                continue
            start, end = int(node.start_dim), int(node.end_dim)
            if (start % len(shape)) != 0 or (end % len(shape)) != len(shape) - 1:
                raise QpsnnError(f"node {name!r}: Flatten({start}, {end}) keeps some dimensions of {list(shape)}; "
                                 "qpsnn flattens a whole (C, H, W) map")
            shape = (int(np.prod(shape)),)
            i += 1
            continue
        if isinstance(node, nir.Conv2d):
            layer, shape = _conv(node, name, shape)
        elif isinstance(node, (nir.Affine, nir.Linear)):
            layer, shape = _affine(node, name, shape, nir, layers)
        else:
            raise QpsnnError(f"node {name!r} ({type(node).__name__}) must follow a Conv2d or Affine layer")
        layers.append(layer)
        i += 1
        nxt = body[i] if i < len(body) else None
        if nxt is None or isinstance(nxt[1], nir.I):  # the output layer: an integrator
            if layer.kind == "conv":
                raise QpsnnError(f"node {name!r}: the output layer must be an Affine/Linear layer, not a convolution")
            if nxt is not None:
                r = _arr(nxt[1].r).ravel()
                if not (np.all(np.isfinite(r)) and np.all(r > 0)):
                    raise QpsnnError(f"node {nxt[0]!r}: r must be positive and finite")
                gain = np.broadcast_to(r * dt, layer.weight.shape[:1])
                layer.weight = layer.weight * gain[:, None]
                layer.bias = layer.bias * gain
                layer.names.append(nxt[0])
                i += 1
            if i != len(body):
                raise QpsnnError(f"node {body[i][0]!r} follows the output integrator; it must be the last layer")
            layer.kind = "output"
            break
        lname, lif = nxt
        if not isinstance(lif, nir.LIF):
            why = {nir.Threshold: "a Threshold without leak", nir.SumPool2d: "pooling of currents",
                   nir.AvgPool2d: "pooling of currents"}.get(type(lif), type(lif).__name__)
            raise QpsnnError(f"node {lname!r}: layer {name!r} feeds {why}; qpsnn needs LIF neurons after every "
                             "hidden layer (or ends with the output layer)")
        channels = shape[0]
        factor = _firing_lif(lif, lname, dt, channels, shape, notes)
        layer.weight = layer.weight * factor.reshape(-1, *([1] * (layer.weight.ndim - 1)))
        layer.bias = layer.bias * factor
        layer.names.append(lname)
        i += 1
        if i == len(body):
            raise QpsnnError(f"node {lname!r}: the graph ends with firing neurons; qpsnn's output layer integrates "
                             "without firing: end with the Affine/Linear layer (or it and nir.I)")
        if isinstance(body[i][1], (nir.SumPool2d, nir.AvgPool2d)):
            pname, pool = body[i]
            if layer.kind != "conv":
                raise QpsnnError(f"node {pname!r}: pooling after a linear layer; qpsnn pools convolution maps only")
            k = _pair(pool.kernel_size, "kernel", pname)
            s = _pair(pool.stride, "stride", pname)
            p = _pair(pool.padding, "padding", pname)
            if k != (2, 2) or s != (2, 2) or p != (0, 0):
                raise QpsnnError(f"node {pname!r}: pooling kernel {k}, stride {s}, padding {p}; qpsnn pools 2x2 "
                                 "windows with stride 2 and no padding")
            if shape[1] % 2 or shape[2] % 2:
                raise QpsnnError(f"node {pname!r}: a {shape[1]}x{shape[2]} map cannot be pooled 2x2 evenly")
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
            unit = 0.25 if isinstance(pool, nir.AvgPool2d) else 1.0
            if i + 1 >= len(body):
                raise QpsnnError(f"node {pname!r}: the graph ends with pooling; qpsnn needs an output layer")
            tname, tnode = body[i + 1]
            _or_threshold(tnode, tname, pname, unit, dt, shape, nir, notes)
            layer.pool = 2
            layer.names += [pname, tname]
            i += 2
    if not layers or layers[-1].kind != "output":
        raise QpsnnError("the graph has no output layer (an Affine/Linear layer, optionally followed by nir.I)")
    if layers[0].kind != "conv":
        raise QpsnnError(f"node {layers[0].names[0]!r}: qpsnn's first layer is a 3x3 convolution")
    if len(layers) < 2:
        raise QpsnnError("the graph needs at least one convolution and an output layer")
    tokens = []
    for layer in layers:
        n = layer.weight.shape[0]
        tokens.append(f"c{n}" + ("-p2" if layer.pool > 1 else "") if layer.kind == "conv" else f"fc{n}")
    metadata = dict(getattr(graph, "metadata", None) or {})
    return ImportedGraph(layers, tuple(in_shape), "-".join(tokens), notes, metadata)


def _conv(node, name: str, shape: tuple) -> tuple[ImportedLayer, tuple]:
    w = _arr(node.weight)
    if w.ndim != 4:
        raise QpsnnError(f"node {name!r}: Conv2d weight has {w.ndim} dimensions, expected 4")
    if len(shape) != 3:
        raise QpsnnError(f"node {name!r}: a convolution after a flattened layer; qpsnn's convolutions come first")
    if tuple(w.shape[2:]) != (3, 3):
        raise QpsnnError(f"node {name!r}: kernel {w.shape[2]}x{w.shape[3]}; qpsnn's convolutions are 3x3")
    if w.shape[1] != shape[0]:
        raise QpsnnError(f"node {name!r}: takes {w.shape[1]} input channels, gets {shape[0]}")
    stride = _pair(node.stride, "stride", name)
    if stride != (1, 1):
        raise QpsnnError(f"node {name!r}: stride {stride}; qpsnn's convolutions have stride 1")
    if isinstance(node.padding, str):
        if node.padding != "same":
            raise QpsnnError(f"node {name!r}: padding {node.padding!r}; qpsnn pads by 1 ('same')")
    elif _pair(node.padding, "padding", name) != (1, 1):
        raise QpsnnError(f"node {name!r}: padding {_pair(node.padding, 'padding', name)}; qpsnn pads by 1")
    if _pair(node.dilation, "dilation", name) != (1, 1) or int(np.asarray(node.groups).ravel()[0]) != 1:
        raise QpsnnError(f"node {name!r}: dilation or groups other than 1; qpsnn's convolutions are dense 3x3")
    bias = _arr(node.bias).ravel() if node.bias is not None else np.zeros(w.shape[0])
    if bias.size == 1 and w.shape[0] > 1:
        bias = np.full(w.shape[0], bias[0])
    if bias.size != w.shape[0]:
        raise QpsnnError(f"node {name!r}: {bias.size} biases for {w.shape[0]} channels")
    return ImportedLayer("conv", w.copy(), bias, 1, [name]), (w.shape[0], shape[1], shape[2])


def _affine(node, name: str, shape: tuple, nir, layers) -> tuple[ImportedLayer, tuple]:
    w = _arr(node.weight)
    if w.ndim != 2:
        raise QpsnnError(f"node {name!r}: weight has {w.ndim} dimensions, expected 2")
    if len(shape) != 1:
        raise QpsnnError(f"node {name!r}: a linear layer on a {list(shape)} map needs a Flatten before it")
    if w.shape[1] != shape[0]:
        raise QpsnnError(f"node {name!r}: takes {w.shape[1]} inputs, gets {shape[0]}")
    bias = _arr(node.bias).ravel() if isinstance(node, nir.Affine) else np.zeros(w.shape[0])
    if bias.size == 1 and w.shape[0] > 1:
        bias = np.full(w.shape[0], bias[0])
    if bias.size != w.shape[0]:
        raise QpsnnError(f"node {name!r}: {bias.size} biases for {w.shape[0]} outputs")
    return ImportedLayer("fc", w.copy(), bias, 1, [name]), (w.shape[0],)


@torch.no_grad()
def load_into(imported: ImportedGraph, model, calibration: torch.Tensor) -> None:
    """Load the imported weights into a fresh QPSNN of the same spec.

    qpsnn's hidden layers have no bias of their own but a BatchNorm; it is set so that it computes
    ``x + bias`` both in eval mode and (for the fine-tune) in train mode: running mean and variance are the
    statistics of its input on ``calibration`` images, gain ``sqrt(var + eps)``, offset ``mean + bias``.
    """
    for layer, module, norm in zip(imported.layers, model.layers, model.norms):
        module.weight.copy_(torch.from_numpy(layer.weight).to(module.weight.dtype))
        if layer.kind == "output":
            module.bias.copy_(torch.from_numpy(layer.bias).to(module.bias.dtype))
            continue
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
        norm.weight.fill_(1.0)
        norm.bias.copy_(torch.from_numpy(layer.bias).to(norm.bias.dtype))
    stats = {}
    hooks = []
    for i, norm in enumerate(model.norms):
        if hasattr(norm, "running_mean"):
            def hook(mod, args, i=i):
                x = args[0].double()
                dims = [0] + ([2, 3] if x.dim() == 4 else [])
                stats[i] = (x.mean(dims), x.var(dims, unbiased=False))
            hooks.append(norm.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    mode = [layer.mode for layer in model.layers]
    for layer in model.layers:  # calibrate on the float weights the graph holds
        layer.mode = "float"
    try:
        model(calibration)
    finally:
        for h in hooks:
            h.remove()
        for layer, m in zip(model.layers, mode):
            layer.mode = m
        model.train(was_training)
    for i, (mean, var) in stats.items():
        norm = model.norms[i]
        bias = torch.from_numpy(imported.layers[i].bias)
        norm.running_mean.copy_(mean.to(norm.running_mean.dtype))
        norm.running_var.copy_(var.to(norm.running_var.dtype))
        norm.weight.copy_(torch.sqrt(var + norm.eps).to(norm.weight.dtype))
        norm.bias.copy_((mean + bias).to(norm.bias.dtype))


# ============================================================================================== import + train

class _float_weights:
    """Within the block the model computes with its float weights (the graph's own), not fake-quantized."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.modes = [layer.mode for layer in self.model.layers]
        for layer in self.model.layers:
            layer.mode = "float"
        return self.model

    def __exit__(self, *exc):
        for layer, mode in zip(self.model.layers, self.modes):
            layer.mode = mode


def _metadata_value(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return value if isinstance(value, (str, int, float, bool, list)) else str(value)


def import_nir(graph_path: str | Path, cfg, out: str | Path, dt: float | None = None, reporter=None,
               calibration_images: int = 256) -> dict:
    """Read, check and convert a NIR graph, fine-tune it quantization-aware (and prune it), export OUT.

    ``cfg`` is a ``TrainConfig``: dataset, bits, quant, prune, criterion, epochs (QAT fine-tune before
    pruning), finetune_epochs (after pruning), lr, batch size, seed, lanes; its ``timesteps`` may be None
    (then the graph's metadata or 4). Everything that can be refused is refused before any training.
    """
    import hashlib
    from dataclasses import asdict, replace

    from .datasets import load_dataset
    from .evaluate import evaluate
    from .model import QPSNN, QuantConfig
    from .progress import Reporter
    from .spec import parse_spec
    from .train import Trainer, TrainState, _optimizer, check_config, float_accuracy, to_float

    reporter = reporter or Reporter()
    graph_path, out = Path(graph_path), Path(out)
    if cfg.quant == "float":
        raise QpsnnError("import-nir fine-tunes quantization-aware: choose --quant rescaw or uniform")
    if out.is_dir():
        raise QpsnnError(f"{out} is a directory; give the .qpsnn file to write")
    graph = read_graph(graph_path)
    meta = {str(k): _metadata_value(v) for k, v in (getattr(graph, "metadata", None) or {}).items()}
    if dt is None:
        dt = float(meta["dt"]) if isinstance(meta.get("dt"), (int, float)) else DT
    if not (dt > 0 and math.isfinite(dt)):
        raise QpsnnError(f"dt must be a positive number of seconds, got {dt}")
    timesteps = cfg.timesteps or (int(meta["timesteps"]) if isinstance(meta.get("timesteps"), int) else 4)
    data = load_dataset(cfg.dataset, cfg.data_path)
    imported = parse_graph(graph, tuple(data.in_shape), dt)
    cfg = replace(cfg, spec=imported.spec, timesteps=timesteps)
    check_config(cfg)  # what `qpsnn train` refuses before training: data source, size, lanes, timesteps
    out.parent.mkdir(parents=True, exist_ok=True)
    for note in imported.notes:
        reporter.log(f"note: {note}")
    reporter.log(f"{graph_path}: {imported.spec}, dt = {dt:g} s, T = {timesteps}; "
                 f"input assumed {INPUT_ENCODING}")

    torch.manual_seed(cfg.seed)
    model = QPSNN(parse_spec(imported.spec), tuple(data.in_shape), timesteps, QuantConfig(mode=cfg.quant, bits=cfg.bits))
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(data.train.labels), generator=gen)[:calibration_images].numpy()
    load_into(imported, model, to_float(data.train.images[idx]))
    test_x, test_y = data.test.images, data.test.labels
    with _float_weights(model):
        acc_graph = float_accuracy(model, test_x, test_y)
    acc_quantized = float_accuracy(model, test_x, test_y)
    reporter.log(f"the graph in qpsnn's float model: {acc_graph:.2f} %; quantized to {cfg.bits} bits "
                 f"({cfg.quant}) before fine-tuning: {acc_quantized:.2f} %")

    # The fine-tune is the trainer's own run, resumed from a checkpoint at the start of QAT that holds the
    # imported weights: its phases (QAT, pruning, fine-tune), checkpoints and --resume apply unchanged.
    trainer = Trainer(cfg, out, reporter, data)
    opt, sched = _optimizer(model, cfg, cfg.epochs)
    start = {"config": asdict(cfg), "state": asdict(TrainState(phase="qat", epoch=0, spec=imported.spec)),
             "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "rng": torch.Generator().manual_seed(cfg.seed).get_state(), "torch_rng": torch.get_rng_state()}
    _atomic_write(trainer.ckpt, lambda tmp: torch.save(start, tmp))
    reporter.log(f"fine-tuning the imported weights: a training run from the checkpoint {trainer.ckpt}")
    model, state = trainer.run(resume=True)
    state.phase = "done"
    acc_float = float_accuracy(model, test_x, test_y)
    provenance = {"nir": {
        "graph": str(graph_path), "sha256": hashlib.sha256(graph_path.read_bytes()).hexdigest(), "dt": dt,
        "spec": imported.spec, "nodes": [n for layer in imported.layers for n in layer.names],
        "input_encoding": INPUT_ENCODING, "notes": imported.notes, "graph_metadata": meta,
        "accuracy_graph_float": round(acc_graph, 4), "accuracy_quantized_before_finetune": round(acc_quantized, 4),
    }}
    trainer.export(model, state, acc_float, extra_provenance=provenance)
    trainer.cleanup()
    metrics = evaluate(out, cfg.dataset, cfg.data_path).to_json()
    metrics.update({"spec": state.spec, "imported_spec": imported.spec, "accuracy_graph_float": round(acc_graph, 4),
                    "accuracy_quantized_before_finetune": round(acc_quantized, 4), "notes": imported.notes,
                    "dt": dt, "timesteps": timesteps})
    return metrics
