"""The top level a board runs: PLL, a power-on reset held until the PLL locks (iCE40 block RAMs read as zero
for a few microseconds after configuration), and the accelerator behind its UART host link on the board's
USB serial pins."""
from __future__ import annotations

from amaranth import ClockDomain, Elaboratable, Instance, Module, Signal

from .boards import Board
from .pll import PLLSettings
from .uart_host import UARTHost


class BoardTop(Elaboratable):
    def __init__(self, board: Board, host: UARTHost, pll: PLLSettings | None):
        self.board, self.host, self.pll = board, host, pll

    @property
    def clock_hz(self) -> float:
        return (self.pll.f_out_mhz if self.pll else self.board.clock_mhz) * 1e6

    def elaborate(self, platform):
        m = Module()
        cd_sync = ClockDomain("sync")
        cd_por = ClockDomain("por", local=True)
        m.domains += [cd_sync, cd_por]
        locked = Signal()
        board, pll = self.board, self.pll
        if pll is None:
            clk = platform.request(board.clock_resource)
            m.d.comb += [cd_sync.clk.eq(clk.i), locked.eq(1)]
        elif pll.family == "ice40":
            # the iCEBreaker's oscillator pin is the PLL's own pad: it must be the _PAD variant
            m.submodules.pll = Instance(
                "SB_PLL40_PAD", p_FEEDBACK_PATH="SIMPLE", p_DIVR=pll.params["DIVR"], p_DIVF=pll.params["DIVF"],
                p_DIVQ=pll.params["DIVQ"], p_FILTER_RANGE=pll.params["FILTER_RANGE"],
                io_PACKAGEPIN=platform.request(board.clock_resource, dir="-").io, i_RESETB=1, i_BYPASS=0,
                o_PLLOUTGLOBAL=cd_sync.clk, o_LOCK=locked)
        else:
            clk = platform.request(board.clock_resource)
            m.submodules.pll = Instance(
                "EHXPLLL", a_FREQUENCY_PIN_CLKI=str(pll.f_in_mhz), a_FREQUENCY_PIN_CLKOP=str(pll.f_out_mhz),
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED", p_DPHASE_SOURCE="DISABLED",
                p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED", p_FEEDBK_PATH="CLKOP",
                **{f"p_{k}": v for k, v in pll.params.items()},
                i_RST=0, i_STDBY=0, i_CLKI=clk.i, o_CLKOP=cd_sync.clk, i_CLKFB=cd_sync.clk, i_PHASESEL0=0,
                i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
                o_LOCK=locked)
        platform.add_clock_constraint(cd_sync.clk, self.clock_hz)
        delay = int(15e-6 * self.clock_hz)
        timer = Signal(range(delay + 1))
        ready = Signal()
        m.d.comb += [cd_por.clk.eq(cd_sync.clk), cd_por.rst.eq(~locked), cd_sync.rst.eq(~ready)]
        with m.If(timer == delay):
            m.d.por += ready.eq(1)
        with m.Else():
            m.d.por += timer.eq(timer + 1)

        uart = platform.request("uart", 0)
        m.submodules.host = self.host
        m.d.comb += [self.host.rx.eq(uart.rx.i), uart.tx.o.eq(self.host.tx)]
        return m
