"""Latency, memory and quality benchmarks."""
