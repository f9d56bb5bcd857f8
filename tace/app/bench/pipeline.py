"""`tace bench pipeline`: stored 100-slice series -> SR bytes, timed stage by stage.

Stages: read+decode+rescale (the volume), clinical features, the model (CLDCA at
224x224 over every slice, untrained weights of the production configuration),
and the SR build. Sequential runs give the breakdown; a pipelined run overlaps
the decode of the next series with the model on the current one, which is how a
worker with spare cores keeps a GPU busy.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import torch

from model.checkpoint import CheckpointMeta, save_checkpoint
from model.config import CLDCAConfig, PreprocessConfig
from model.network import CLDCA
from model.predictor import Predictor
from model.schema import FeatureSchema
from tace.app.synthetic_ct import SeriesSpec, write_series
from tace.db import make_engine
from tace.schema import upgrade_schema
from worker import pipeline

Progress = Callable[[str, int, int], None]
STUDY_TIME = dt.datetime(2026, 1, 15, 9, 30)


def _checkpoint(folder: Path) -> Path:
    schema = FeatureSchema.load()
    torch.manual_seed(0)
    model = CLDCA(CLDCAConfig(clinical_inputs=len(schema.columns)))
    meta = CheckpointMeta(
        version="bench",
        config=model.config,
        preprocess=PreprocessConfig(),
        schema=schema,
        normalization=schema.fit([{}]),
        demo=True,
        training={"data": "none: untrained benchmark weights"},
    )
    path = folder / "bench.safetensors"
    save_checkpoint(path, model, meta)
    return path


def run_pipeline_benchmark(
    *,
    series: int = 4,
    slices: int = 100,
    device: str = "auto",
    pool: Executor | None = None,
    pool_name: str = "4 threads",
    progress: Progress | None = None,
) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="tace-bench-pipeline-") as tmp:
        work = Path(tmp)
        cases = []
        for index in range(series):
            folder = work / f"series-{index}"
            write_series(SeriesSpec(slices=slices, seed=2000 + index, series_number=index + 1), folder)
            cases.append(pipeline.Case(sorted(folder.glob("*.dcm")), "SYN0001", None, "bench", STUDY_TIME))
            if progress:
                progress("synthetic series", index + 1, series)
        predictor = Predictor.load(_checkpoint(work), device=device)
        engine = make_engine(f"sqlite:///{work / 'bench.db'}")
        upgrade_schema(engine)
        decode_pool = pool or ThreadPoolExecutor(4)
        rule = pipeline.LabsRule(required=(), impute=True)

        def run(case: pipeline.Case) -> pipeline.Predicted:
            result = pipeline.run_case(
                case, labs=engine, predictor=predictor, labs_rule=rule, decode_pool=decode_pool
            )
            assert isinstance(result, pipeline.Predicted), result
            return result

        def gather(case: pipeline.Case) -> pipeline.Inputs:
            inputs = pipeline.gather(
                case, labs=engine, predictor=predictor, labs_rule=rule, decode_pool=decode_pool
            )
            assert isinstance(inputs, pipeline.Inputs), inputs
            return inputs

        run(cases[0])
        timings: dict[str, list[float]] = {"read_volume": [], "features": [], "model": [], "sr": []}
        start = time.perf_counter()
        for index, case in enumerate(cases):
            result = run(case)
            for name, values in timings.items():
                values.append(result.timings[name])
            if progress:
                progress("sequential", index + 1, series)
        sequential = time.perf_counter() - start

        start = time.perf_counter()
        with ThreadPoolExecutor(1) as prefetch:
            upcoming = prefetch.submit(gather, cases[0])
            for index in range(series):
                inputs = upcoming.result()
                if index + 1 < series:
                    upcoming = prefetch.submit(gather, cases[index + 1])
                pipeline.predict(inputs, predictor=predictor)
                if progress:
                    progress("pipelined", index + 1, series)
        pipelined = time.perf_counter() - start
        engine.dispose()

    median = {name: statistics.median(values) * 1000 for name, values in timings.items()}
    total = sum(median.values())
    device_name = (
        torch.cuda.get_device_name(predictor.device)
        if predictor.device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    yield f"device: {device_name}; {series} series of {slices} slices 512x512; decode with {pool_name}"
    yield f"{'stage':<14} {'ms/series':>10} {'share':>6}"
    for name, value in median.items():
        yield f"{name:<14} {value:>10.1f} {value / total:>6.1%}"
    yield f"{'total':<14} {total:>10.1f}"
    yield (
        f"sequential: {series / sequential:.2f} series/s; "
        f"pipelined (decode overlaps model): {series / pipelined:.2f} series/s"
    )
    yield f"pipeline time / bare model time: {total / median['model']:.2f}"
