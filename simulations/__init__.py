"""Benchmark entry points; ``python -m simulations.run_benchmarks`` writes BENCHMARKS.md."""
