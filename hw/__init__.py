"""Amaranth HDL accelerator."""
