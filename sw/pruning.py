"""Structured (channel) pruning: the SVS criterion of QP-SNN, the L1 baseline, and channel removal.

SVS scores a channel by how rich its spike activity is: the spike map of each image, averaged over the
T timesteps to an H x W matrix, has a number of singular values above ``eps * sigma_max``; the channel's
score is that count averaged over N images. Channels whose activity is (near) low rank carry little
information and go first.
"""
from __future__ import annotations

import torch
from torch import nn

from .model import QPSNN
from .spec import LayerSpec, NetSpec

CRITERIA = ("svs", "l1")


def svs_counts_from_maps(spike_maps: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Counts [C] from spike maps [T, N, C, H, W]: the sum over the N images of the number of singular values
    > eps * sigma_max (what data-parallel ranks add up; `svs_scores_from_maps` divides by N)."""
    avg = spike_maps.float().mean(0)  # [N, C, H, W]
    if avg.device.type == "mps":  # no SVD kernel there
        avg = avg.cpu()
    sv = torch.linalg.svdvals(avg)  # [N, C, min(H, W)]
    top = sv[..., :1]
    return ((sv > eps * top) & (top > 0)).sum(-1).sum(0).double().cpu()


def svs_scores_from_maps(spike_maps: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    """Scores [C] from spike maps [T, N, C, H, W]: mean over N of the count of singular values > eps * sigma_max."""
    return (svs_counts_from_maps(spike_maps, eps) / spike_maps.shape[1]).float()


@torch.no_grad()
def svs_counts(model: QPSNN, images: torch.Tensor, eps: float = 0.1) -> dict[int, torch.Tensor]:
    """Summed SVS counts (float64 on the CPU) of every conv channel over ``images`` (float, [N, C, H, W], on the
    model's device); zeros for no images."""
    if not len(images):
        return {i: torch.zeros(spec.out_channels, dtype=torch.float64)
                for i, spec in enumerate(model.spec.layers) if spec.kind == "conv"}
    was_training = model.training
    model.eval()
    _, spikes = model(images, record=True)
    model.train(was_training)
    return {i: svs_counts_from_maps(s, eps) for i, (spec, s) in enumerate(zip(model.spec.layers, spikes))
            if spec.kind == "conv"}


@torch.no_grad()
def svs_scores(model: QPSNN, images: torch.Tensor, eps: float = 0.1) -> dict[int, torch.Tensor]:
    """SVS score of every conv channel, from the model's spikes on ``images`` (float, [N, C, H, W])."""
    return {i: (c / len(images)).float() for i, c in svs_counts(model, images, eps).items()}


@torch.no_grad()
def l1_scores(model: QPSNN) -> dict[int, torch.Tensor]:
    return {i: layer.weight.abs().flatten(1).sum(1)
            for i, (spec, layer) in enumerate(zip(model.spec.layers, model.layers)) if spec.kind == "conv"}


def keep_count(channels: int, ratio: float) -> int:
    return max(1, int(round(channels * (1 - ratio))))


def select_channels(scores: dict[int, torch.Tensor], ratio: float) -> dict[int, torch.Tensor]:
    """Indices (ascending) of the highest-scoring channels per layer; ties keep the lower index."""
    keep = {}
    for i, score in scores.items():
        k = keep_count(len(score), ratio)
        order = sorted(range(len(score)), key=lambda c: (-float(score[c]), c))
        keep[i] = torch.tensor(sorted(order[:k]), dtype=torch.long)
    return keep


@torch.no_grad()
def prune(model: QPSNN, keep: dict[int, torch.Tensor]) -> QPSNN:
    """A new, smaller model holding only the kept channels (and the matching inputs of the next layer)."""
    widths = [len(keep[i]) if i in keep else l.out_channels for i, l in enumerate(model.spec.layers)]
    new_spec = NetSpec([LayerSpec(l.kind, w, l.pool) for l, w in zip(model.spec.layers, widths)])
    new = QPSNN(new_spec, model.in_shape, model.timesteps, model.quant)
    in_keep: torch.Tensor | None = None
    for i, (old_layer, new_layer, old_norm, new_norm) in enumerate(
            zip(model.layers, new.layers, model.norms, new.norms)):
        w = old_layer.weight
        if in_keep is not None:
            if old_layer.kind == "conv":
                w = w[:, in_keep]
            else:  # fc after a conv: inputs are (C, H, W) flattened
                c_in, h, wd = model.shapes[i][0]
                w = w.view(w.shape[0], c_in, h, wd)[:, in_keep].reshape(w.shape[0], -1)
        out_keep = keep.get(i)
        if out_keep is not None:
            w = w[out_keep]
        new_layer.weight.copy_(w)
        if old_layer.bias is not None:
            new_layer.bias.copy_(old_layer.bias if out_keep is None else old_layer.bias[out_keep])
        if isinstance(old_norm, (nn.BatchNorm1d, nn.BatchNorm2d)):
            sel = slice(None) if out_keep is None else out_keep
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new_norm, name).copy_(getattr(old_norm, name)[sel])
            new_norm.num_batches_tracked.copy_(old_norm.num_batches_tracked)
        in_keep = out_keep
    return new
