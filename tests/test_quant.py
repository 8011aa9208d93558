import pytest
import torch

from qpsnn.sw.quant import code_to_int, fake_quantize, int_to_code, kernel_gamma, levels, quantize_codes


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("mode", ["uniform", "rescaw"])
def test_levels_are_odd_symmetric_and_zero_free(bits, mode):
    w = torch.linspace(-3, 3, 20001).view(1, -1)
    q = fake_quantize(w, bits, mode)
    gamma = kernel_gamma(w, mode)
    values = torch.unique(torch.round(q / gamma * levels(bits)).to(torch.int64))
    assert len(values) == 2 ** bits
    assert torch.equal(values, -values.flip(0))  # symmetric
    assert not (values == 0).any()  # no zero level
    assert bool((values % 2 == 1).all())  # odd integers -(2^b-1) .. 2^b-1
    assert int(values.max()) == levels(bits)


def test_baseline_levels_for_two_bits():
    w = torch.tensor([[-5.0, -0.6, -0.2, 0.01, 0.4, 0.9, 7.0]])
    q = fake_quantize(w, 2, "uniform")
    assert torch.allclose(q, torch.tensor([[-1, -1 / 3, -1 / 3, 1 / 3, 1 / 3, 1, 1.0]]))


def test_rescaw_gamma_is_mean_abs_per_output_kernel():
    w = torch.randn(5, 3, 3, 3)
    gamma = kernel_gamma(w, "rescaw")
    assert gamma.shape == (5, 1, 1, 1)
    assert torch.allclose(gamma.flatten(), w.abs().flatten(1).mean(1))
    q = fake_quantize(w, 4, "rescaw")
    for k in range(5):  # each kernel's levels are its own gamma times the odd levels / 15
        assert torch.allclose((q[k] / gamma[k] * 15).round(), q[k] / gamma[k] * 15, atol=1e-4)
        assert float(q[k].abs().max()) <= float(gamma[k]) + 1e-6


def test_rescaw_uses_more_levels_than_baseline_on_small_weights():
    w = torch.randn(8, 64) * 0.05
    used = lambda mode: len(torch.unique(quantize_codes(w, 4, mode)[0]))  # noqa: E731
    assert used("rescaw") > 2 * used("uniform")


def test_ste_gradient_passes_inside_clip_and_stops_outside():
    w = torch.tensor([[-2.0, -0.5, 0.1, 0.7, 1.5]], requires_grad=True)
    fake_quantize(w, 4, "uniform").sum().backward()
    assert torch.equal(w.grad, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]]))


def test_code_map_round_trip():
    for bits in (2, 4, 8):
        codes = torch.arange(2 ** bits)
        ints = code_to_int(codes, bits)
        assert ints[0] == -levels(bits) and ints[-1] == levels(bits)
        assert torch.equal(int_to_code(ints, bits), codes)
