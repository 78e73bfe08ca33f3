"""Simulation: the offline data generators, the tiny-model factory, tokenizer training and warm starts.

What a local federation (``lada-coordinator federation``), the tests and the benchmarks build
before any device runs; no device imports it.
"""
