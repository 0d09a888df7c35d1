"""OpenEAS: an open Elastic Algorithm Service with a Triton-compatible processor."""

__version__ = "0.1.0"
