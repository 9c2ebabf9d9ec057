"""Benchmarks and chaos runs against a real `receiver serve` (not part of the installed package)."""
