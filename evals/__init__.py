"""The world simulator, the scenario suite, the scorer and the benchmarks."""
