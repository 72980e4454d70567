"""Corral: one control plane for containers on mixed ARM / x86 fleets."""

__version__ = "0.1.0"
