"""`make bench` (python -m benchmarks.bench): time to an answer, side by side in one run."""
