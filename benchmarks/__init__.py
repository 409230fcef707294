"""cifartune's benchmarks and the GPU machine check, run from the repository root as modules
(``python -m benchmarks.NAME``); see benchmarks/README.md for what each measures and the dated
results."""
