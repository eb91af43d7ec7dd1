"""Benchmarks behind ``python -m fasttx bench`` (installed as fasttx.benchmarks)."""
