"""The benchmark suite (W0-W7); run it with ``python -m benchmarks``."""
