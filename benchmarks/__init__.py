"""poseops' benchmarks: each compares poseops against a baseline measured in the same run.

Run one from the checkout's root as a module, e.g. `python -m benchmarks.serve`; `make bench`
runs them all (`benchmarks.run_all`) and writes docs/benchmarks.md.
"""
