"""Benchmarks on disk to processor-ready samples: protocol files (`load_benchmark`, `Sample`),
video reading (`vreason.data.video`), the synthetic benchmark (`vreason.data.synthetic`) and the
Lightning data module (`vreason.data.datamodule`)."""
from vreason.data.benchmark import BenchmarkError, Sample, load_benchmark

__all__ = ["BenchmarkError", "Sample", "load_benchmark"]
