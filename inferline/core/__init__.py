"""Core types and parameters shared by every layer: ``types``, ``configs``, ``batch``."""
