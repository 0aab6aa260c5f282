"""Benchmarks on disk to processor-ready samples: protocol files (`load_benchmark`, `Sample`),
video reading (`load_video`, `vreason.data.video`, with its readers, time limit and frame cache),
one sample's model inputs (`prepare_item`), the synthetic benchmark (`vreason.data.synthetic`)
and the Lightning data module (`vreason.data.datamodule`)."""
from vreason.data.benchmark import BenchmarkError, Sample, load_benchmark
from vreason.data.errors import VideoError
from vreason.data.items import prepare_item
from vreason.data.video import load_video

__all__ = ["BenchmarkError", "Sample", "VideoError", "load_benchmark", "load_video", "prepare_item"]
