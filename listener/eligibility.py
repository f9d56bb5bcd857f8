"""Which complete series the model may see: axial original CT with enough slices.

Scanners send scouts, reformats, dose reports and thin/thick duplicates along
with the series the model was trained on; running it on those would produce
confident nonsense, so they are recorded as ineligible with the reason instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from listener.ingest import CT_SOP_CLASSES
from tace.db import Instance, table


@dataclass(frozen=True)
class EligibilityRules:
    min_slices: int = 16
    description_pattern: str | None = None
    modality: str = "CT"


def _is_primary_axial(image_type: str | None, plane: str | None) -> bool:
    parts = {p.strip().upper() for p in (image_type or "").split("\\")}
    return "ORIGINAL" in parts and "PRIMARY" in parts and "LOCALIZER" not in parts and plane == "axial"


def _not_axial_original(rows: Sequence[Row[Any, Any, Any, Any]]) -> str:
    """A reformat or derived series, in the words a radiologist uses for it."""
    planes = sorted({r.plane or "unknown plane" for r in rows})
    derived = any("DERIVED" in (r.image_type or "").upper() for r in rows)
    kind = "DERIVED reformat" if derived else "series"
    return f"{'/'.join(planes)} {kind}, no axial ORIGINAL/PRIMARY slices"


def ineligibility(
    connection: Connection,
    series_id: int,
    modality: str | None,
    description: str | None,
    rules: EligibilityRules,
) -> str | None:
    """None if the series may go to the model, else the reason in words."""
    if (modality or "").upper() != rules.modality:
        return f"modality {modality or 'missing'} is not {rules.modality}"
    if rules.description_pattern and not re.search(
        rules.description_pattern, description or "", re.IGNORECASE
    ):
        return f"series description {description or ''!r} does not match {rules.description_pattern!r}"
    instance = table(Instance)
    rows = connection.execute(
        sa.select(instance.c.sop_class_uid, instance.c.image_type, instance.c.plane, instance.c.frames).where(
            instance.c.series_id == series_id
        )
    ).all()
    ct_rows = [r for r in rows if r.sop_class_uid in CT_SOP_CLASSES]
    if not ct_rows:
        return "no CT images"
    localizers = sum("LOCALIZER" in (r.image_type or "").upper() for r in ct_rows)
    if localizers == len(ct_rows):
        return "localizer (scout) series"
    slices = sum(r.frames for r in ct_rows if _is_primary_axial(r.image_type, r.plane))
    if slices == 0:
        return _not_axial_original(ct_rows)
    if slices < rules.min_slices:
        return f"{slices} axial ORIGINAL/PRIMARY slice(s), {rules.min_slices} needed"
    return None
