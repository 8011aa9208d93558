"""Architecture spec strings such as ``c16-p2-c32-p2-fc10``.

Tokens: ``cN`` is a 3x3 convolution (padding 1) with N output channels followed by LIF neurons;
``p2`` is a 2x2 max-pool on the preceding convolution's spikes (an OR); ``fcN`` is a fully
connected layer. The last token must be ``fcK`` and is the non-firing output layer with K classes.
Pooling is stored as an attribute of the convolution it follows, because the hardware pools while
it emits that layer's spikes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import SpecError

DEFAULT_SPECS = {
    "digits": "c32-p2-c64-p2-fc10",
    "mnist5k": "c32-p2-c64-p2-fc10",
    "mnist5k-12": "c16-p2-c32-p2-fc10",
    "mnist-idx": "c32-p2-c64-p2-fc10",
    "fashion-mnist": "c32-p2-c64-p2-fc10",
    "cifar10": "c64-p2-c128-p2-c128-p2-fc10",
}

_TOKEN = re.compile(r"^(c|fc|p)(\d+)$")
MAX_CHANNELS = 4096  # per layer; the accelerator's widest built layer is 128
MAX_WEIGHTS = 1 << 24  # 16 M weights in all: 8 MB at 4 bits, far beyond any board's memories


@dataclass
class LayerSpec:
    kind: str  # "conv" | "fc" | "output"
    out_channels: int
    pool: int = 1

    def token(self) -> str:
        head = f"c{self.out_channels}" if self.kind == "conv" else f"fc{self.out_channels}"
        return head + (f"-p{self.pool}" if self.pool > 1 else "")


@dataclass
class NetSpec:
    layers: list[LayerSpec] = field(default_factory=list)

    def __str__(self) -> str:
        return "-".join(layer.token() for layer in self.layers)

    @property
    def num_classes(self) -> int:
        return self.layers[-1].out_channels

    def with_channels(self, channels: list[int]) -> "NetSpec":
        """The same topology with other conv/fc widths (used after pruning)."""
        layers = [LayerSpec(l.kind, c, l.pool) for l, c in zip(self.layers, channels)]
        return NetSpec(layers)


def parse_spec(text: str) -> NetSpec:
    tokens = [t for t in text.strip().lower().split("-") if t]
    if not tokens:
        raise SpecError("empty architecture spec")
    layers: list[LayerSpec] = []
    for token in tokens:
        match = _TOKEN.match(token)
        if not match:
            raise SpecError(f"bad token {token!r} in spec {text!r} (expected cN, pN or fcN)")
        kind, n = match.group(1), int(match.group(2)[:12])
        if n < 1:
            raise SpecError(f"token {token!r} in spec {text!r} needs a positive size")
        if n > MAX_CHANNELS and kind != "p":
            raise SpecError(f"token {token!r} in spec {text!r}: at most {MAX_CHANNELS} channels a layer")
        if kind == "p":
            if not layers or layers[-1].kind != "conv" or layers[-1].pool != 1:
                raise SpecError(f"pooling {token!r} must follow a convolution (spec {text!r})")
            if n != 2:
                raise SpecError(f"only 2x2 pooling is supported, got {token!r}")
            layers[-1].pool = n
        elif kind == "c":
            if layers and layers[-1].kind == "fc":
                raise SpecError(f"convolution {token!r} after a fully connected layer (spec {text!r})")
            layers.append(LayerSpec("conv", n))
        else:
            layers.append(LayerSpec("fc", n))
    if layers[-1].kind != "fc":
        raise SpecError(f"spec {text!r} must end with the output layer fcK")
    layers[-1].kind = "output"
    if layers[-1].out_channels < 2:
        raise SpecError(f"spec {text!r}: the output layer needs at least 2 classes")
    return NetSpec(layers)


def layer_shapes(spec: NetSpec, in_shape: tuple[int, int, int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input shape, output shape after pooling) per layer; conv shapes are (C, H, W), fc shapes (N,)."""
    shapes = []
    shape: tuple[int, ...] = tuple(in_shape)
    for layer in spec.layers:
        if layer.kind == "conv":
            c, h, w = shape
            if h < layer.pool or w < layer.pool:
                raise SpecError(f"spec {spec}: a {h}x{w} map is too small to pool by {layer.pool}")
            out = (layer.out_channels, h // layer.pool, w // layer.pool)
        else:
            out = (layer.out_channels,)
        shapes.append((shape, out))
        shape = out
    return shapes


def check_size(spec: NetSpec, in_shape: tuple[int, int, int]) -> int:
    """The number of weights of ``spec`` on ``in_shape`` images; refuses a net over `MAX_WEIGHTS` (before
    anything is allocated)."""
    total = 0
    for layer, (shape, _) in zip(spec.layers, layer_shapes(spec, in_shape)):
        fan_in = shape[0] * 9 if layer.kind == "conv" else _prod(shape)
        total += fan_in * layer.out_channels
    if total > MAX_WEIGHTS:
        raise SpecError(f"spec {spec} on {tuple(in_shape)} images has {total:,} weights, more than the "
                        f"{MAX_WEIGHTS:,} allowed")
    return total


def _prod(shape) -> int:
    out = 1
    for v in shape:
        out *= v
    return out
