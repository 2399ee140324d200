"""Benchmarks of our trainer against kohya sd-scripts (GPU) and of our trainer alone (CPU): see
docs/benchmarks.md. Not part of the trainer; nothing in lib_trainer imports this package."""
