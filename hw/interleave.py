"""Coordinates interleaved over three banks by their residue mod 3, the arithmetic both kernel-parallel
datapaths share: an event at u reaches outputs u - 1, u, u + 1 (the encoder reads inputs u - 1, u, u + 1),
and exactly one of the three lies in each bank.

Written as arithmetic and muxes rather than lookup tables: a table becomes a case statement, and Icarus does
not evaluate a combinational case block until its index changes, so a coordinate that stays 0 from reset
would read stale values there (Verilator and the hardware are not affected).
"""
from __future__ import annotations

from amaranth import Mux

BANKS = 3


def split(u):
    """(u mod 3, u div 3)."""
    return u % BANKS, u // BANKS


def neighbour_in_bank(u, u3, uq, row: int, size: int):
    """Of u - 1, u, u + 1 the one whose residue is ``row``: (is u + 1, is u - 1, its word in the bank, whether it
    lies inside 0 .. size - 1)."""
    plus = u3 == (row + 2) % BANKS
    minus = u3 == (row + 1) % BANKS
    word = Mux(plus, uq + (u3 == BANKS - 1), Mux(minus, uq - (u3 == 0), uq))
    inside = Mux(plus, u + 1 < size, Mux(minus, u >= 1, 1))
    return plus, minus, word, inside


def bank_of_offset(u3, k: int):
    """The bank holding u + k - 1 (kernel offset k = 0, 1, 2 read by the output at u)."""
    shift = (k + BANKS - 1) % BANKS
    if shift == 0:
        return u3
    return Mux(u3 >= BANKS - shift, u3 + shift - BANKS, u3 + shift)
