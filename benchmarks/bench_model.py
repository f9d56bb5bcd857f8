"""CLDCA forward vs bare ResNet-50 throughput; same as `tace bench model`.

python benchmarks/bench_model.py [--device cuda] [--slices 32] [--batches 32,64,128,256,512]
"""

from tace.app.cli import main

if __name__ == "__main__":
    import sys

    main(["bench", "model", *sys.argv[1:]])
