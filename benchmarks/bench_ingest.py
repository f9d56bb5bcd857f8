"""Listener ingest against a bare pynetdicom write+fsync SCP and DCMTK storescp; same as `tace bench ingest`.

python benchmarks/bench_ingest.py [--parallel 1,2] [--processes 1,2] [--rounds 3] [--slices 100]
"""

from tace.app.cli import main

if __name__ == "__main__":
    import sys

    main(["bench", "ingest", *sys.argv[1:]])
