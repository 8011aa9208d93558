"""The golden model against an independent, event-by-event scalar implementation of contract 1, and the
fold against the float model."""
import numpy as np
import pytest
import torch

from qpsnn.sw.fold import fold
from qpsnn.sw.golden import run_golden
from qpsnn.sw.train import to_float

from conftest import random_model


def scalar_reference(net, image: np.ndarray):
    """Per-event integer simulation: the way the accelerator works, written with plain Python ints."""
    T = net.timesteps
    layers = net.layers
    V = [np.zeros(l.neuron_shape, dtype=object) + np.array(l.bias.tolist(), dtype=object).reshape((-1,) + (1,) * (len(l.neuron_shape) - 1)) for l in layers]
    first = np.zeros(layers[0].neuron_shape, dtype=object)
    w0 = layers[0].weights().tolist()
    C, H, W = image.shape
    for c in range(C):  # bit-plane input events, once
        for y in range(H):
            for x in range(W):
                for k in range(8):
                    if (int(image[c, y, x]) >> k) & 1:
                        for ky in range(3):
                            for kx in range(3):
                                oy, ox = y - ky + 1, x - kx + 1
                                if 0 <= oy < H and 0 <= ox < W:
                                    for o in range(layers[0].channels):
                                        first[o, oy, ox] += (w0[o][c][ky][kx] << k) << layers[0].weight_shift
    membranes = [[] for _ in layers]
    for t in range(T):
        events = None
        for i, l in enumerate(layers):
            if i == 0:
                V[i] = V[i] + first
            else:
                w = l.weights().tolist()
                for ev in events:
                    if l.kind == "conv":
                        c, y, x = ev
                        H2, W2 = l.neuron_shape[1:]
                        for ky in range(3):
                            for kx in range(3):
                                oy, ox = y - ky + 1, x - kx + 1
                                if 0 <= oy < H2 and 0 <= ox < W2:
                                    for o in range(l.channels):
                                        V[i][o, oy, ox] += w[o][c][ky][kx] << l.weight_shift
                    else:
                        flat = int(np.ravel_multi_index(ev, layers[i - 1].out_shape)) if len(ev) > 1 else ev[0]
                        for o in range(l.channels):
                            V[i][o] += w[o][flat] << l.weight_shift
            membranes[i].append(V[i].copy())
            if not l.fires:
                if t + 1 < T:
                    V[i] = V[i] + np.array(l.bias.tolist(), dtype=object)
                continue
            th = np.array(l.threshold.tolist(), dtype=object).reshape((-1,) + (1,) * (len(l.neuron_shape) - 1))
            spikes = V[i] >= th
            bias = np.array(l.bias.tolist(), dtype=object).reshape(th.shape)
            V[i] = np.where(spikes, 0, V[i])
            V[i] = np.vectorize(lambda v: v >> net.leak_shift, otypes=[object])(V[i]) + bias
            if l.pool > 1:
                p = l.pool
                pooled = spikes.reshape(spikes.shape[0], spikes.shape[1] // p, p, spikes.shape[2] // p, p).any(axis=(2, 4))
            else:
                pooled = spikes
            events = [tuple(int(v) for v in idx) for idx in np.argwhere(pooled)]
    potentials = [int(v) for v in V[-1]]
    return potentials, membranes


@pytest.mark.parametrize("spec, shape, bits, seed", [
    ("c3-p2-fc4", (1, 6, 6), 4, 0),
    ("c4-p2-c3-fc5", (2, 4, 4), 2, 1),
    ("c2-fc6-fc3", (1, 3, 5), 8, 2),
])
def test_golden_equals_scalar_event_reference(spec, shape, bits, seed):
    net = fold(random_model(spec, shape, bits=bits, seed=seed), lanes=4)
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (3, *shape), generator=gen, dtype=torch.int64).to(torch.uint8)
    result = run_golden(net, images, trace=True)
    for n in range(len(images)):
        potentials, membranes = scalar_reference(net, images[n].numpy())
        assert result.potentials[n].tolist() == potentials
        for i, layer_trace in enumerate(result.trace):
            for t in range(net.timesteps):
                assert layer_trace.membrane[t, n].tolist() == np.array(membranes[i][t], dtype=np.int64).tolist()
    assert any(bool(tr.spikes.any()) for tr in result.trace[:-1]), "test needs some spikes to mean anything"


def test_argmax_ties_go_to_lowest_class():
    net = fold(random_model("c2-fc3", (1, 2, 2)), lanes=2)
    out = net.layers[-1]
    out.codes.fill_((1 << out.bits) // 2)  # all weights equal: every class gets the same current
    out.bias.zero_()
    result = run_golden(net, torch.zeros(2, 1, 2, 2, dtype=torch.uint8))
    assert result.classes.tolist() == [0, 0]


def test_event_and_sop_counts():
    net = fold(random_model("c3-p2-fc4", (1, 4, 4)), lanes=4)
    image = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    image[0, 0, 0, 0] = 0b101  # two bit-plane events at a corner: 4 valid kernel offsets each
    image[0, 0, 1, 1] = 0b1  # one event inside: 9 offsets
    result = run_golden(net, image)
    assert int(result.input_events[0]) == 3
    assert int(result.layer_sops[0][0]) == (2 * 4 + 9) * 3


def test_membrane_bound_is_never_reached(digits):
    net = fold(random_model("c8-p2-c16-p2-fc10", (1, 8, 8), bits=8, seed=5), lanes=8)
    result = run_golden(net, torch.from_numpy(digits.test.images[:50]), trace=True)
    for layer, tr in zip(net.layers, result.trace):
        assert int(tr.membrane.abs().max()) < (1 << (layer.membrane_bits - 1)) - 1


def test_fold_agrees_with_float_model_on_99_percent(trained_digits, digits):
    model, net, _ = trained_digits
    images = digits.test.images
    with torch.no_grad():
        float_pred = model(to_float(images)).argmax(1)
    int_pred = run_golden(net, torch.from_numpy(images)).classes
    agreement = float((float_pred == int_pred).float().mean())
    assert agreement >= 0.99, agreement
    accuracy = float((int_pred == torch.from_numpy(digits.test.labels)).float().mean())
    assert accuracy > 0.8  # a real model, not a constant classifier


def test_negative_batchnorm_gain_is_folded_into_codes():
    model = random_model("c4-p2-fc3", (1, 4, 4), seed=11)
    with torch.no_grad():
        model.norms[0].weight[:2] = -model.norms[0].weight[:2].abs() - 0.5
    net = fold(model, lanes=4)
    images = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.int64).to(torch.uint8)
    with torch.no_grad():
        float_pred = model(to_float(images)).argmax(1)
    assert float((run_golden(net, images).classes == float_pred).float().mean()) >= 0.95
