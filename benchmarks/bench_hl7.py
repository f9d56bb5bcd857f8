"""HL7 intake throughput over one persistent MLLP connection; same as `tace bench hl7`.

python benchmarks/bench_hl7.py [--messages 2000]
"""

from tace.app.cli import main

if __name__ == "__main__":
    import sys

    main(["bench", "hl7", *sys.argv[1:]])
