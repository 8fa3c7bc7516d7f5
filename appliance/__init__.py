"""Centralka: the firmware of a phone appliance for small clinics."""

__version__ = "0.1.0"
