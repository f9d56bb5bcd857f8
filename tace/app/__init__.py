"""The app wing: the one place that wires listener, clinical feed, model and worker together.

The command line, the admin API and pages, the supervisor of `tace up`, replay,
and the benchmarks live here; the kernel (`tace`) beside it knows none of the
feature packages.
"""
