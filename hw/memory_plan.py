"""Every memory the design instantiates, and how many block RAMs (or SPRAMs) they take on a board: the check
that refuses a model before synthesis, naming the memory that does not fit.

The list is read from the elaborated design itself (each `amaranth.lib.memory.Memory` and each SPRAM
instance, with its path), not kept as a hand copy, so it cannot drift from the RTL. The block counts follow
the block RAM configurations of each family (the best aspect ratio per memory), as yosys's memory mapper
picks; a memory marked ``ram_style = "logic"`` stays in flip-flops (``"distributed"``: in LUT RAM), one marked
``"block"`` takes a block however small.
"""
from __future__ import annotations

from dataclasses import dataclass

from .boards import LUT_RAM, Board
from .geometry import CapacityError

# (depth, width) configurations of one block
BRAM_SHAPES = {
    "ice40": ((256, 16), (512, 8), (1024, 4), (2048, 2)),
    "ecp5": ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)),
}
SPRAM_SHAPE = (16384, 16)
SPRAM_CELL = "SB_SPRAM256KA"
SMALL_MEMORY_BITS = 256  # kept in flip-flops: a block RAM for a handful of bits wastes a scarce block
SHALLOW_WORDS = 4  # a memory this shallow stays in flip-flops whatever its width (a wide one would take many blocks)


LOGIC_STYLES = ("logic", LUT_RAM)  # flip-flops, LUT RAM: no block either way


def in_logic(width: int, depth: int) -> bool:
    return width * depth <= SMALL_MEMORY_BITS or depth <= SHALLOW_WORDS


@dataclass(frozen=True)
class MemoryUse:
    name: str  # the memory's path in the design, e.g. "layer1.membrane4"
    depth: int
    width: int
    copies: int = 1
    spram: bool = False
    logic: bool = False

    @property
    def bits(self) -> int:
        return self.depth * self.width * self.copies


def blocks_for(depth: int, width: int, shapes) -> int:
    return min(-(-width // w) * -(-depth // d) for d, w in shapes)


def design_memories(design) -> list[MemoryUse]:
    """The memories of an elaborated amaranth design (a component), found by walking its fragments."""
    from amaranth.hdl import Fragment, Instance, Shape
    from amaranth.hdl._mem import MemoryInstance

    out = []

    def walk(fragment, path):
        for sub, name, *_ in fragment.subfragments:
            here = path + (str(name),)
            if isinstance(sub, MemoryInstance):
                width = Shape.cast(sub._data.shape).width
                style = sub._attrs.get("ram_style")
                # a memory without a style (a library FIFO) stays in flip-flops only when yosys keeps it there:
                # when it is a few words deep, however few bits it holds
                logic = style in LOGIC_STYLES or (style is None and sub._data.depth <= SHALLOW_WORDS)
                out.append(MemoryUse(".".join(here), sub._data.depth, width, logic=logic))
            elif isinstance(sub, Instance):
                if sub.type == SPRAM_CELL:
                    out.append(MemoryUse(".".join(here), *SPRAM_SHAPE, spram=True))
            else:
                walk(sub, here)

    walk(Fragment.get(design, None), ())
    return out


@dataclass
class MemoryBudget:
    bram: int
    spram: int
    rows: list  # (memory, blocks, kind)


def budget(memories: list[MemoryUse], board: Board) -> MemoryBudget:
    rows, bram, spram = [], 0, 0
    for mem in memories:
        if mem.spram:
            spram += mem.copies
            rows.append((mem, mem.copies, "SPRAM"))
        elif mem.logic:
            rows.append((mem, 0, "logic"))
        else:
            n = mem.copies * blocks_for(mem.depth, mem.width, BRAM_SHAPES[board.family])
            bram += n
            rows.append((mem, n, board.bram_name))
    return MemoryBudget(bram, spram, rows)


def check_board_fits(design, board: Board) -> MemoryBudget:
    """``design``: the board's top-level component (its accelerator and host link), before synthesis."""
    b = budget(design_memories(design), board)
    if b.bram > board.bram:
        worst = max((r for r in b.rows if r[2] == board.bram_name), key=lambda r: r[1])
        raise CapacityError(
            f"{board.name}: the design needs {b.bram} {board.bram_name} block RAMs, the {board.device} has "
            f"{board.bram}; the largest is {worst[0].name} ({worst[0].depth} words x {worst[0].width} bits = "
            f"{worst[1]} blocks). Prune more, use fewer lanes, or choose a larger board")
    if b.spram > board.spram:
        raise CapacityError(f"{board.name}: the weight memories need {b.spram} SPRAMs, the {board.device} has "
                            f"{board.spram}: use fewer layers or fewer lanes")
    return b
