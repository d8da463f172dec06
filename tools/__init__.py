"""Developer and operator tools: the demo, the broker launcher, benchmarks."""
