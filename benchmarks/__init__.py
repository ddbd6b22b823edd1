"""txmq's benchmarks: ``python -m benchmarks`` measures txmq and its baselines side by side
(see ``benchmarks/__main__.py``)."""
