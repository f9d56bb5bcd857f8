"""The phase of every series under a folder, as the gateway would decide it, before going live.

A site tunes its phase rules on exported studies (``tace series classify DIR``);
reading headers only keeps that quick on a folder of whole studies, and files
that are not DICOM (notes, DICOMDIR viewers, archives) are counted, not fatal.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from listener.phases import PhaseDecision, PhaseRules, SeriesTags, classify_study


@dataclass(frozen=True)
class SurveyedSeries:
    study_instance_uid: str
    tags: SeriesTags
    instances: int
    decision: PhaseDecision


@dataclass
class FolderSurvey:
    series: list[SurveyedSeries] = field(default_factory=list)
    files: int = 0
    skipped: int = 0
    """Files that are not DICOM, or DICOM without a study and series (a DICOMDIR)."""

    @property
    def studies(self) -> list[str]:
        return list(dict.fromkeys(s.study_instance_uid for s in self.series))


def _headers(folder: Path, survey: FolderSurvey) -> Iterator[Dataset]:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        survey.files += 1
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, ValueError, EOFError, struct.error):
            survey.skipped += 1
            continue
        if not str(dataset.get("StudyInstanceUID", "") or "") or not str(
            dataset.get("SeriesInstanceUID", "") or ""
        ):
            survey.skipped += 1
            continue
        yield dataset


def _instance_number(dataset: Dataset) -> float:
    try:
        return float(dataset.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        return 0.0


def survey_folder(folder: Path, rules: PhaseRules) -> FolderSurvey:
    """Group by study, then series; classify each study from the lowest-numbered instance of each series."""
    survey = FolderSurvey()
    first: dict[str, dict[str, tuple[float, Dataset]]] = {}
    counts: dict[str, int] = {}
    for dataset in _headers(folder, survey):
        study = str(dataset.StudyInstanceUID).strip()
        series = str(dataset.SeriesInstanceUID).strip()
        counts[series] = counts.get(series, 0) + 1
        number = _instance_number(dataset)
        held = first.setdefault(study, {}).get(series)
        if held is None or number < held[0]:
            first[study][series] = (number, dataset)
    for study, by_series in first.items():
        tags = [SeriesTags.from_dataset(dataset) for _, dataset in by_series.values()]
        tags.sort(key=lambda t: (t.series_number is None, t.series_number or 0, t.series_instance_uid))
        decisions = classify_study(tags, rules)
        for t in tags:
            survey.series.append(
                SurveyedSeries(study, t, counts[t.series_instance_uid], decisions[t.series_instance_uid])
            )
    return survey
