"""Cycle model and cocotb benches."""
