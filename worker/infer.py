"""The infer stage: a completed series and its labs -> a prediction and a stored SR.

Every refusal (unreadable volume, labs missing past the deadline) ends the job
as failed with a reason an administrator can read in `tace jobs show`; labs that
may still come put the job in ``waiting_for_labs`` instead, before any pixel is
decoded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from hl7_clinical.explain import explain_missing_labs
from hl7_clinical.identity import IdentityRules
from model.predictor import PredictionResult
from tace.db import Instance, Job, JobState, Prediction, Series, Stage, Study, session_scope, utcnow
from tace.display import probability_text
from tace.jobs import MODEL_CHANGED, Lease, mark_published, refresh_predecessor
from tace.logging import get_logger
from tace.metrics import metric
from tace.queue import BrokerUnavailable
from tace.storage import atomic_write
from worker import pipeline
from worker.context import WorkerContext
from worker.stage import StageOutcome, StageResult, run_claimed

log = get_logger("tace.worker.infer")


@dataclass(frozen=True)
class _Job:
    created_at: dt.datetime
    study_instance_uid: str
    case: pipeline.Case
    selected_for: tuple[str, ...] | None
    """The phases of the contract the study was selected for; None: a job of one series."""
    slice_thickness_mm: float | None = None
    """The reference series' Slice Thickness as the listener read it."""


def study_time(study: Study, series: Series) -> dt.datetime:
    """The time labs are assembled for: the study date, else when the series arrived (local time)."""
    if study.study_datetime is not None:
        return study.study_datetime
    arrived = series.first_received_at or utcnow()
    return arrived.astimezone().replace(tzinfo=None)


def _paths(ctx: WorkerContext, session: Session, series_id: int) -> list[Path]:
    return [
        ctx.storage.resolve(p)
        for p in session.exec(
            select(Instance.path).where(Instance.series_id == series_id).order_by(col(Instance.id))
        )
    ]


def inputs_report(selection: dict[str, Any]) -> tuple[str, ...]:
    """The SR's account of the study: per phase the series read, then every other series and why not."""
    used, unused = [], []
    for item in selection.get("series", []):
        label = f"series {item.get('series_number', '?')} {item.get('description') or '(no description)'!r}"
        phase = (item.get("phase") or "unknown").replace("_", " ")
        evidence = f"{phase}, {item.get('confidence')} confidence: {item.get('evidence')}"
        if item.get("used_for"):
            used.append(f"{item['reason'][0].upper()}{item['reason'][1:]}: {label} ({evidence})")
        else:
            unused.append(f"Not used: {label}: {item['reason']}")
    return (*used, *unused)


def _phases(
    ctx: WorkerContext, session: Session, selection: dict[str, Any]
) -> tuple[tuple[pipeline.PhaseInput, ...], str | None]:
    chosen = {item["used_for"]: item for item in selection.get("series", []) if item.get("used_for")}
    order = [p for p in selection.get("phases", []) if p in chosen]
    phases = tuple(pipeline.PhaseInput(p, _paths(ctx, session, chosen[p]["series_id"])) for p in order)
    return phases, selection.get("reference")


def _predecessor(ctx: WorkerContext, session: Session, job: Job) -> Path | None:
    if refresh_predecessor(session, job) is None:
        return None
    previous = session.exec(select(Prediction).where(Prediction.job_id == job.predecessor_job_id)).first()
    if previous is None or previous.sr_path is None:
        return None
    return ctx.storage.resolve(previous.sr_path)


def _load(ctx: WorkerContext, job_id: int) -> _Job:
    with session_scope(ctx.engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        series = session.get(Series, job.series_id)
        assert series is not None
        study = session.get(Study, series.study_id)
        assert study is not None
        selection = job.selection or {}
        contract = selection.get("contract") or {}
        phases, reference = _phases(ctx, session, selection) if selection else ((), None)
        rules = IdentityRules.from_settings(ctx.settings)
        issuer = rules.issuer(study.issuer_of_patient_id)
        case = pipeline.Case(
            paths=phases[0].paths if len(phases) == 1 else _paths(ctx, session, series.id or 0),
            phases=phases if len(phases) > 1 else (),
            reference=reference,
            min_slices=int(contract.get("min_slices", 1)),
            study_instance_uid=study.study_instance_uid,
            inputs_report=inputs_report(selection),
            predecessor=_predecessor(ctx, session, job),
            patient_id=study.patient_id or "",
            issuer=issuer,
            patient_hash=study.patient_hash,
            at=study_time(study, series),
            generation=job.generation,
            lab_issuers=tuple(rules.lab_issuers(issuer)),
            patient_sex=study.patient_sex,
        )
        selected_for = tuple(contract["phases"]) if "phases" in contract else None
        thickness = (series.tags or {}).get("slice_thickness")
        return _Job(
            job.created_at,
            study.study_instance_uid,
            case,
            selected_for,
            float(thickness) if thickness else None,
        )


def _prefetching(ctx: WorkerContext) -> bool:
    """On a CPU the look-ahead's decode competes with the model for the same cores (and the GIL)."""
    mode = ctx.settings.worker_prefetch
    return mode == "on" or (mode == "auto" and ctx.predictor.device.type == "cuda")


def _next_series(ctx: WorkerContext, current: int) -> list[Sequence[Path]]:
    """The series of the oldest other job queued for inference: what the worker will most likely run next."""
    with session_scope(ctx.engine) as session:
        following = session.exec(
            select(Job.id)
            .where(Job.state == JobState.queued, Job.stage == Stage.infer, Job.id != current)
            .order_by(col(Job.created_at), col(Job.id))
            .limit(1)
        ).first()
    if following is None:
        return []
    case = _load(ctx, following).case
    return [phase.paths for phase in case.phases] if case.phases else [case.paths]


def run_infer(ctx: WorkerContext, job_id: int) -> StageOutcome:
    """Claim and run the infer stage; a prediction is handed to the send queue at once."""
    outcome = run_claimed(ctx, job_id, Stage.infer, lambda lease: _infer(ctx, lease))
    if outcome is StageOutcome.predicted:
        try:
            ctx.publisher(job_id, Stage.send)
            mark_published(ctx.engine, job_id, JobState.predicted)
        except BrokerUnavailable:
            log.warning("job.send_publish_deferred", note="the relay will publish it")
    return outcome


def _infer(ctx: WorkerContext, lease: Lease) -> StageResult:
    settings = ctx.settings
    job = _load(ctx, lease.job_id)
    selected_for = job.selected_for
    reads = ctx.predictor.meta.input_contract.phases
    if selected_for is not None and selected_for != reads:
        log.warning("job.model_changed", selected_for=list(selected_for), model_reads=list(reads))
        return StageResult.failed(
            f"{MODEL_CHANGED}: this study was selected for {', '.join(selected_for)}, the checkpoint now "
            f"reads {', '.join(reads)}; the listener selects the study again for it"
        )
    remaining = settings.labs_deadline_seconds - (utcnow() - job.created_at).total_seconds()
    rule = pipeline.LabsRule(
        settings.required_features, impute=remaining <= 0 and settings.labs_missing_policy == "impute"
    )
    result = pipeline.run_case(
        job.case,
        labs=ctx.engine,
        predictor=ctx.predictor,
        labs_rule=rule,
        decode_pool=ctx.decode_pool,
        read=ctx.prefetch.read,
        on_gathered=partial(ctx.prefetch.start, partial(_next_series, ctx, lease.job_id))
        if _prefetching(ctx)
        else None,
    )
    if isinstance(result, pipeline.LabsMissing):
        definitions = ctx.predictor.meta.schema.by_name()
        names = ", ".join(definitions[name].label if name in definitions else name for name in result.missing)
        why = explain_missing_labs(
            ctx.engine,
            patient_id=job.case.patient_id,
            issuer=job.case.issuer,
            at=job.case.at,
            definitions=definitions,
            features=result.missing,
            rules=IdentityRules.from_settings(settings),
        )
        if remaining > 0:
            retry_in = min(settings.labs_retry_seconds, remaining)
            log.info("job.waiting_for_labs", missing=result.missing, why=str(why), retry_in=round(retry_in))
            return StageResult(
                StageOutcome.waiting_for_labs,
                detail=f"waiting for labs: {names} ({why})",
                not_before=utcnow() + dt.timedelta(seconds=retry_in),
            )
        return StageResult.failed(
            f"labs: missing after {settings.labs_deadline_seconds:.0f} s: {names} ({why})"
        )
    if isinstance(result, pipeline.Refused):
        log.warning(f"job.{result.stage}_refused", reason=result.reason)
        return StageResult.failed(f"{result.stage}: {result.reason}")
    path = ctx.storage.sr_path(job.study_instance_uid, result.identity.sop_instance_uid)
    atomic_write(path, result.sr, ctx.storage.staging_dir)
    for stage in ("read_volume", "features", "model", "sr"):
        metric("stage").labels(stage=stage).observe(result.timings[stage])
    prediction = result.prediction
    log.info(
        "job.predicted",
        label=prediction.label,
        probability=round(prediction.probability, 4),
        demo=prediction.demo,
        missing=len(prediction.missing_features),
        timings=result.timings,
    )
    return StageResult(
        StageOutcome.predicted,
        detail=f"{prediction.label} p={probability_text(prediction.probability)}",
        record=partial(
            _save_prediction, lease.job_id, result, ctx.storage.relative(path), _image_stats(job, prediction)
        ),
    )


def _image_stats(job: _Job, prediction: PredictionResult) -> dict[str, Any] | None:
    """The predictor's volume statistics with the reference series' slice thickness, for image drift."""
    if prediction.image_stats is None:
        return None
    return {**prediction.image_stats, "slice_thickness_mm": job.slice_thickness_mm}


def _save_prediction(
    job_id: int,
    result: pipeline.Predicted,
    sr_path: str,
    image_stats: dict[str, Any] | None,
    session: Session,
) -> None:
    prediction = result.prediction
    session.execute(sa.delete(Prediction).where(col(Prediction.job_id) == job_id))
    session.add(
        Prediction(
            job_id=job_id,
            probability=prediction.probability,
            label=prediction.label,
            model_name=prediction.model_name,
            model_version=prediction.model_version,
            checkpoint_sha256=prediction.checkpoint_sha256,
            threshold=prediction.threshold,
            demo_model=prediction.demo,
            features=result.features.provenance(),
            missing_features=list(prediction.missing_features),
            timings=result.timings,
            sr_sop_instance_uid=result.identity.sop_instance_uid,
            sr_series_instance_uid=result.identity.series_instance_uid,
            sr_path=sr_path,
            image_stats=image_stats,
        )
    )
