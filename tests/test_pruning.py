import torch

from qpsnn.sw.pruning import keep_count, l1_scores, prune, select_channels, svs_scores, svs_scores_from_maps
from qpsnn.sw.spec import parse_spec

from conftest import random_model


def _rank_k_map(k: int, size: int = 8) -> torch.Tensor:
    m = torch.zeros(size, size)
    for i in range(k):
        m[i, i] = 1.0  # k independent rows
    return m


def test_svs_counts_singular_values_of_known_rank():
    T, N = 4, 3
    maps = torch.zeros(T, N, 4, 8, 8)
    for c, rank in enumerate([0, 1, 3, 6]):
        maps[:, :, c] = _rank_k_map(rank)
    scores = svs_scores_from_maps(maps, eps=0.1)
    assert scores.tolist() == [0.0, 1.0, 3.0, 6.0]


def test_svs_averages_over_time_and_images():
    maps = torch.zeros(2, 2, 1, 6, 6)
    maps[0, 0, 0] = _rank_k_map(4, 6)  # image 0: rank 4 at t=0 only -> average still rank 4
    maps[:, 1, 0] = torch.ones(6, 6)  # image 1: rank 1
    assert svs_scores_from_maps(maps).tolist() == [2.5]


def test_svs_eps_is_relative_to_largest_singular_value():
    m = torch.diag(torch.tensor([1.0, 0.5, 0.05, 0.0]))
    maps = m.expand(1, 1, 1, 4, 4)
    assert svs_scores_from_maps(maps, eps=0.1).item() == 2.0
    assert svs_scores_from_maps(maps, eps=0.01).item() == 3.0


def test_l1_order_keeps_largest_kernels():
    model = random_model("c4-p2-fc3", (1, 4, 4))
    with torch.no_grad():
        for c, scale in enumerate([0.1, 3.0, 0.5, 2.0]):
            model.layers[0].weight[c] = scale * torch.ones_like(model.layers[0].weight[c])
    keep = select_channels(l1_scores(model), 0.5)
    assert keep[0].tolist() == [1, 3]


def test_keep_count():
    assert keep_count(32, 0.5) == 16 and keep_count(32, 0.75) == 8 and keep_count(3, 0.99) == 1


def test_prune_removes_channels_and_next_layer_inputs():
    model = random_model("c6-p2-c8-fc3", (1, 4, 4))
    keep = {0: torch.tensor([0, 2, 5]), 1: torch.tensor([1, 2, 3, 7])}
    small = prune(model, keep)
    assert str(small.spec) == "c3-p2-c4-fc3"
    assert small.layers[0].weight.shape == (3, 1, 3, 3)
    assert small.layers[1].weight.shape == (4, 3, 3, 3)
    assert small.layers[2].weight.shape == (3, 4 * 2 * 2)
    assert torch.equal(small.layers[1].weight, model.layers[1].weight[[1, 2, 3, 7]][:, [0, 2, 5]])
    fc_old = model.layers[2].weight.view(3, 8, 2, 2)[:, [1, 2, 3, 7]].reshape(3, -1)
    assert torch.equal(small.layers[2].weight, fc_old)
    assert torch.equal(small.norms[0].running_var, model.norms[0].running_var[[0, 2, 5]])


def test_pruning_channels_that_never_fire_changes_nothing():
    """A channel whose spikes are always zero contributes nothing: removing it keeps every logit.
    (Uniform quantizer: ReScaW's layer-wide output gamma would legitimately change with fewer inputs.)"""
    model = random_model("c4-p2-fc3", (1, 4, 4), mode="uniform")
    with torch.no_grad():
        model.norms[0].bias[1] = -100.0  # channel 1 never reaches the threshold
        model.norms[0].weight[1] = 0.0
    x = torch.rand(5, 1, 4, 4)
    small = prune(model, {0: torch.tensor([0, 2, 3])})
    small.eval()
    assert torch.allclose(model(x), small(x), atol=1e-5)


def test_svs_scores_cover_every_conv_layer():
    model = random_model("c4-p2-c5-fc3", (1, 8, 8))
    scores = svs_scores(model, torch.rand(6, 1, 8, 8))
    assert sorted(scores) == [0, 1] and scores[0].shape == (4,) and scores[1].shape == (5,)
    assert parse_spec("c4-p2-c5-fc3").layers[1].out_channels == 5
