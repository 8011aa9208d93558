"""The dev boards qpsnn builds for: their platform (amaranth-boards), clock, UART and the resources the
report compares against. A model is checked against a board's memories before synthesis starts."""
from __future__ import annotations

from dataclasses import dataclass

from qpsnn.sw.errors import QpsnnError


LUT_RAM = "distributed"  # the ram_style of LUT RAM (ECP5): reads can be asynchronous, so `LutRamBank` works


@dataclass(frozen=True)
class Flow:
    """How yosys and nextpnr run for one kind of design on a board. ``lut_mapper`` "abc" maps LUTs with abc
    instead of abc9 (`board_build.ABC_LUT_MAP`); ``membranes`` is the ram_style of a kernel-parallel layer's
    interleaved membrane banks (None: the family's block RAM)."""
    synth_opts: str = ""
    nextpnr_opts: str = ""
    lut_mapper: str = "abc9"
    membranes: str | None = None


@dataclass(frozen=True)
class Board:
    name: str
    family: str  # ice40 | ecp5
    device: str
    platform_name: str  # attribute of amaranth_boards.<module>
    module: str
    clock_resource: str
    clock_mhz: float  # the oscillator
    default_mhz: float  # what `qpsnn build` asks the PLL for unless --clock says otherwise: what every kept
    # serial build of the board meets (iCEBreaker: Fmax 16.88-18.07; ULX3S: 32.58-37.23)
    logic: int  # LCs (iCE40) or LUT4s (ECP5)
    logic_name: str
    bram: int  # blocks
    bram_bits: int  # bits per block
    bram_name: str
    spram: int = 0  # 256-kbit single-port RAMs (iCE40 UP)
    dsp: int = 0
    default_offsets: int = 9  # kernel offsets per cycle: 9 where block RAMs are many, 1 where they are scarce
    weights_in_spram: bool = False
    small_in_bram: bool = False  # memories of a few hundred bits in block RAM too: blocks to spare, logic scarce
    max_payload: int = 1024  # the host link's frame buffer
    serial: Flow = Flow()  # yosys's extra synth_ice40 / synth_ecp5 options and nextpnr's, of serial builds
    max_auto_lanes: int = 64  # where logic, not memory, runs out first: the largest P `--lanes auto` tries
    pnr_device: tuple = ()  # nextpnr's device options (what amaranth's build script passes), for pack-only counts
    kernel_parallel: Flow | None = None  # the flow of kernel-parallel builds where it differs from the serial one

    def flow(self, offsets: int) -> Flow:
        return self.kernel_parallel if offsets > 1 and self.kernel_parallel is not None else self.serial

    def placement(self, offsets: int, unrolled: bool = False) -> "Placement":
        """Where this board's build with ``offsets`` kernel offsets per cycle puts its memories. An unrolled
        build (MNIST on the UP5K) also moves the serial encoder's image to an SPRAM; the event-driven builds
        keep it in block RAM, so that the kept bitstreams rebuild bit for bit."""
        from .params import Placement  # the RTL's side imports the boards (memory plan): not at module level

        return Placement(self.weights_in_spram, self.small_in_bram, self.flow(offsets).membranes,
                         image_in_spram=self.weights_in_spram and unrolled and offsets == 1)

    def platform(self):
        import importlib

        return getattr(importlib.import_module(f"amaranth_boards.{self.module}"), self.platform_name)()


BOARDS = {
    "icebreaker": Board("icebreaker", "ice40", "iCE40UP5K-SG48", "ICEBreakerPlatform", "icebreaker", "clk12", 12.0, 16.0,
                        5280, "LC", 30, 4096, "SB_RAM40_4K", spram=4, dsp=8, default_offsets=1,
                        weights_in_spram=True, small_in_bram=True, max_payload=512,
                        max_auto_lanes=2,  # P=2 digits: 4,629-4,732 LCs with small memories in block RAM; P=4 does not place
                        serial=Flow("-dsp"), pnr_device=("--up5k", "--package", "sg48")),  # the encoder's multipliers in the SB_MAC16 blocks, not in logic
    "ulx3s-85f": Board("ulx3s-85f", "ecp5", "LFE5U-85F-6BG381C", "ULX3S_85F_Platform", "ulx3s", "clk25", 25.0, 30.0,
                       # serial by default and P <= 16 from auto: what places, routes and meets timing here today
                       # (the kernel-parallel build does not yet route; docs/DESIGN.md, "Boards")
                       83640, "LUT4", 208, 18432, "DP16KD", dsp=156, default_offsets=1, max_auto_lanes=16,
                       # no LUT RAM: tried against yosys 0.70's abc9 assertion (rtlil.cc:3091) on the kernel-parallel
                       # digits design, which it does not avoid; kept so the kept bitstreams rebuild bit for bit.
                       # router2: router1 did not converge on the kernel-parallel MNIST design (docs/DESIGN.md)
                       serial=Flow("-nolutram", "--router router2"),
                       # kernel-parallel: the flow that routes it (docs/DESIGN.md, "Boards"): the nine membrane banks
                       # in LUT RAM beside their adders instead of 72 block RAMs, nextpnr's static placer (neither
                       # alone did), abc for the LUTs (abc9 trips yosys 0.70's assertion on this design)
                       kernel_parallel=Flow("", "--router router2 --placer static", "abc", LUT_RAM),
                       pnr_device=("--85k", "--package", "CABGA381", "--speed", "6")),
}


def board_named(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise QpsnnError(f"unknown board {name!r} (choose from {', '.join(BOARDS)})") from None
