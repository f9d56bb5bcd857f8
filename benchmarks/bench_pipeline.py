"""Stored series -> SR bytes, per stage; same as `tace bench pipeline`.

python benchmarks/bench_pipeline.py [--series 4] [--decode-processes 8] [--device cuda]
"""

from tace.app.cli import main

if __name__ == "__main__":
    import sys

    main(["bench", "pipeline", *sys.argv[1:]])
