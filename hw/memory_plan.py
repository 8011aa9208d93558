"""Every memory the accelerator and its host link instantiate, and how many block RAMs (or SPRAMs) they take
on a board: the check that refuses a model before synthesis, naming the memory that does not fit.

The shapes mirror `layer_unit.py`, `event_queue.py` and `command_processor.py`; the block counts follow the
block RAM configurations of each family (the best aspect ratio per memory), as yosys's memory mapper picks."""
from __future__ import annotations

from dataclasses import dataclass

from .boards import Board
from .geometry import CapacityError, Geometry

# (depth, width) configurations of one block
BRAM_SHAPES = {
    "ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),
    "ecp5": ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
}
SPRAM_SHAPE = (16384, 16)
SMALL_MEMORY_BITS = 256  # kept in flip-flops (layer_unit): a block RAM for a handful of words wastes a scarce block


@dataclass(frozen=True)
class MemoryUse:
    name: str
    depth: int
    width: int
    copies: int = 1
    spram: bool = False

    @property
    def bits(self) -> int:
        return self.depth * self.width * self.copies


def blocks_for(depth: int, width: int, shapes) -> int:
    return min(-(-width // w) * -(-depth // d) for d, w in shapes)


def memories(geo: Geometry, max_payload: int = 1024, rx_fifo: int = 4, weights_in_spram: bool = False) -> list[MemoryUse]:
    P, out = geo.lanes, []
    for i, lg in enumerate(geo.layers):
        V = lg.membrane_bits
        out.append(MemoryUse(f"weight memory of layer {i}", max(2, lg.weight_words), P * lg.bits, spram=weights_in_spram))
        out.append(MemoryUse(f"membrane banks of layer {i}", max(2, lg.neuron_words), V, P))
        if lg.first:
            out.append(MemoryUse(f"input-current banks of layer {i}", max(2, lg.neuron_words), V, P))
        if lg.fires:
            out.append(MemoryUse(f"thresholds of layer {i}", max(2, lg.groups), V, P))
        out.append(MemoryUse(f"biases of layer {i}", max(2, lg.groups), V, P))
        if i:
            ig = geo.layers[i - 1]
            width = sum(max(1, (n - 1).bit_length()) for n in (ig.groups, ig.pooled_height, ig.pooled_width)) + P
            out.append(MemoryUse(f"spike queue of layer {i}", ig.groups * ig.out_positions + 1, width))
    out.append(MemoryUse("host link payload buffer", max_payload, 8))
    out.append(MemoryUse("UART receive FIFO", rx_fifo, 8))
    return out


@dataclass
class MemoryBudget:
    bram: int
    spram: int
    rows: list  # (memory, blocks, kind)


def budget(geo: Geometry, board: Board, max_payload: int = 1024) -> MemoryBudget:
    rows, bram, spram = [], 0, 0
    for mem in memories(geo, max_payload, weights_in_spram=board.weights_in_spram):
        if mem.spram:
            n = mem.copies * blocks_for(mem.depth, mem.width, (SPRAM_SHAPE,))
            spram += n
            rows.append((mem, n, "SPRAM"))
        elif mem.depth * mem.width <= SMALL_MEMORY_BITS:
            rows.append((mem, 0, "logic"))
        else:
            n = mem.copies * blocks_for(mem.depth, mem.width, BRAM_SHAPES[board.family])
            bram += n
            rows.append((mem, n, board.bram_name))
    return MemoryBudget(bram, spram, rows)


def check_board_fits(geo: Geometry, board: Board, max_payload: int = 1024) -> MemoryBudget:
    b = budget(geo, board, max_payload)
    if b.bram > board.bram:
        worst = max((r for r in b.rows if r[2] == board.bram_name), key=lambda r: r[1])
        raise CapacityError(
            f"{board.name}: the model needs {b.bram} {board.bram_name} block RAMs, the {board.device} has "
            f"{board.bram}; the largest is the {worst[0].name} ({worst[0].copies} x {worst[0].depth} words x "
            f"{worst[0].width} bits = {worst[1]} blocks). Prune more, use fewer lanes, or choose a larger board")
    if b.spram > board.spram:
        raise CapacityError(f"{board.name}: the weight memories (one per layer) need {b.spram} SPRAMs, the "
                            f"{board.device} has {board.spram}: use at most {board.spram} layers")
    return b
