"""The few header values the gateway keys on, read the same way wherever a dataset is opened.

The listener records them when an instance arrives and `tace predict` reads them
from a folder; both must agree on what an empty value is and on the study time,
or labs would be assembled for a different moment than the worker's.
"""

from __future__ import annotations

import datetime as dt

from pydicom.dataset import Dataset


def text(dataset: Dataset, keyword: str, limit: int = 64) -> str | None:
    """The value as stripped text, cut to the column's length; None when absent or empty."""
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip()[:limit] or None


def study_datetime(dataset: Dataset) -> dt.datetime | None:
    """StudyDate and StudyTime as the site's local wall-clock time (naive), None if unusable."""
    date = text(dataset, "StudyDate")
    if not date:
        return None
    time = (text(dataset, "StudyTime") or "000000").split(".")[0].ljust(6, "0")[:6]
    try:
        return dt.datetime.strptime(date[:8] + time, "%Y%m%d%H%M%S")
    except ValueError:
        return None
