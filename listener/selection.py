"""Which series of a study the model reads, per phase, and why every other one is left out.

Pure: it sees the study's series with their phase decisions and the model's
input contract, and returns the choice with a reason for each series, so the
same study always gives the same answer and the answer can be explained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from listener.phases import Phase, PhaseDecision, SeriesTags
from tace.contract import LEGACY, ModelInputContract, to_dict
from tace.model_contract import ANY_PHASE as ANY

LEGACY_PREFERENCE = (Phase.portal_venous, Phase.delayed, Phase.arterial, Phase.unknown)
"""One-phase checkpoints read the series the CLDCA paper's models saw most: portal venous first."""
REFERENCE_PREFERENCE = ("portal_venous", "delayed", "arterial", "non_contrast")


@dataclass(frozen=True)
class SeriesFacts:
    series_id: int
    series_instance_uid: str
    series_number: int | None
    description: str | None
    state: str
    """receiving, complete (eligible) or ineligible."""
    ineligible_reason: str | None
    generation: int
    slices: int
    tags: SeriesTags | None


@dataclass(frozen=True)
class SeriesChoice:
    series_id: int
    series_instance_uid: str
    series_number: int | None
    description: str | None
    phase: str | None
    confidence: str | None
    evidence: str | None
    generation: int
    used_for: str | None
    """The contract phase this series is read as, or None."""
    reason: str
    """Why it is used, or the short reason it is not."""

    @property
    def label(self) -> str:
        number = "?" if self.series_number is None else str(self.series_number)
        return f"series {number} {self.description or '(no description)'!r}"


@dataclass(frozen=True)
class Selection:
    phases: tuple[str, ...]
    series: tuple[SeriesChoice, ...]
    missing: tuple[str, ...]
    reference: str | None
    """The phase whose slice positions the others are resampled onto."""
    contract: ModelInputContract = LEGACY

    @property
    def ready(self) -> bool:
        return not self.missing

    def chosen(self) -> dict[str, SeriesChoice]:
        return {s.used_for: s for s in self.series if s.used_for is not None}

    def key(self) -> tuple[tuple[str, str, int], ...]:
        """What makes two selections the same input: series and their generations, per phase."""
        return tuple(sorted((p, s.series_instance_uid, s.generation) for p, s in self.chosen().items()))

    def reference_series(self) -> SeriesChoice | None:
        return self.chosen().get(self.reference) if self.reference else None

    def missing_reason(self) -> str:
        needed = "any contrast phase" if self.phases == (ANY,) else ", ".join(_words(p) for p in self.phases)
        missing = " or ".join(_words(p) for p in self.missing)
        return f"no complete eligible {missing} series (the model needs {needed})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "contract": to_dict(self.contract),
            "phases": list(self.phases),
            "reference": self.reference,
            "missing": list(self.missing),
            "series": [asdict(s) for s in self.series],
        }


def _words(phase: str) -> str:
    if phase == ANY:
        return "contrast"
    return "non-contrast" if phase == "non_contrast" else phase.replace("_", " ")


def _thickness(facts: SeriesFacts) -> float | None:
    return facts.tags.slice_thickness if facts.tags else None


def _distance(thickness: float | None, trained: tuple[float, float]) -> float:
    if thickness is None:
        return float("inf")
    low, high = trained
    return max(low - thickness, thickness - high, 0.0)


def _original_primary(facts: SeriesFacts) -> bool:
    image_type = set(facts.tags.image_type) if facts.tags else set()
    return {"ORIGINAL", "PRIMARY"} <= image_type


def _rank(facts: SeriesFacts, trained: tuple[float, float]) -> tuple[float, int, int, int, str]:
    return (
        _distance(_thickness(facts), trained),
        0 if _original_primary(facts) else 1,
        -facts.slices,
        facts.series_number if facts.series_number is not None else 1 << 30,
        facts.series_instance_uid,
    )


def _why_not(loser: SeriesFacts, winner: SeriesFacts, trained: tuple[float, float]) -> str:
    low, high = trained
    if _distance(_thickness(loser), trained) != _distance(_thickness(winner), trained):
        return (
            f"{_mm(_thickness(winner))} of series {winner.series_number} is nearer the trained "
            f"{low:g}-{high:g} mm than {_mm(_thickness(loser))}"
        )
    if _original_primary(loser) != _original_primary(winner):
        return f"series {winner.series_number} is ORIGINAL/PRIMARY"
    if loser.slices != winner.slices:
        return f"series {winner.series_number} has more slices ({winner.slices} vs {loser.slices})"
    return f"series {winner.series_number} comes first by number"


def _mm(value: float | None) -> str:
    return "unknown thickness" if value is None else f"{value:g} mm"


def select(
    series: Sequence[SeriesFacts], decisions: dict[str, PhaseDecision], contract: ModelInputContract
) -> Selection:
    """The series per contract phase (legacy: the best contrast series) and a reason for every series."""
    trained = contract.slice_thickness_mm
    eligible = [s for s in series if s.state == "complete" and s.slices >= contract.min_slices]
    by_phase: dict[str, list[SeriesFacts]] = {}
    for facts in eligible:
        decision = decisions.get(facts.series_instance_uid)
        by_phase.setdefault(str(decision.phase if decision else Phase.unknown), []).append(facts)
    winners: dict[str, SeriesFacts] = {}
    missing: list[str] = []
    legacy_phase: str | None = None
    if contract.any_phase:
        order = [str(p) for p in LEGACY_PREFERENCE]
        contrast_any = any(by_phase.get(p) for p in order)
        if not contrast_any:
            order.append(str(Phase.non_contrast))
        legacy_phase = next((p for p in order if by_phase.get(p)), None)
        if legacy_phase is None:
            missing.append(ANY)
        else:
            winners[ANY] = min(by_phase[legacy_phase], key=lambda f: _rank(f, trained))
    else:
        for phase in contract.phases:
            candidates = by_phase.get(phase, [])
            if candidates:
                winners[phase] = min(candidates, key=lambda f: _rank(f, trained))
            else:
                missing.append(phase)
    used = {w.series_id: phase for phase, w in winners.items()}
    choices = []
    for facts in sorted(
        series, key=lambda f: (f.series_number if f.series_number is not None else 1 << 30, f.series_id)
    ):
        decision = decisions.get(facts.series_instance_uid)
        decided = str(decision.phase) if decision else None
        used_for = used.get(facts.series_id)
        reason = _reason(facts, decided, used_for, winners, contract, legacy_phase)
        choices.append(
            SeriesChoice(
                series_id=facts.series_id,
                series_instance_uid=facts.series_instance_uid,
                series_number=facts.series_number,
                description=facts.description,
                phase=decided,
                confidence=str(decision.confidence) if decision else None,
                evidence=_evidence(decision) if decision else None,
                generation=facts.generation,
                used_for=used_for,
                reason=reason,
            )
        )
    reference = None
    if winners:
        reference = ANY if contract.any_phase else next(p for p in REFERENCE_PREFERENCE if p in winners)
    return Selection(contract.phases, tuple(choices), tuple(missing), reference, contract)


def _evidence(decision: PhaseDecision) -> str:
    if decision.conflicts:
        return f"{decision.evidence}; conflicts: {'; '.join(decision.conflicts)}"
    return decision.evidence


def _reason(
    facts: SeriesFacts,
    phase: str | None,
    used_for: str | None,
    winners: dict[str, SeriesFacts],
    contract: ModelInputContract,
    legacy_phase: str | None,
) -> str:
    trained = contract.slice_thickness_mm
    if used_for is not None:
        what = _words(legacy_phase or "") if used_for == ANY else _words(used_for)
        return f"used as {what} phase"
    if facts.state == "receiving":
        return "still arriving"
    if facts.state == "ineligible":
        return facts.ineligible_reason or "ineligible"
    if facts.slices < contract.min_slices:
        return f"{facts.slices} slice(s), the model needs {contract.min_slices}"
    if contract.any_phase:
        winner = winners.get(ANY)
        if winner is not None and phase == legacy_phase:
            return _why_not(facts, winner, trained)
        if phase == str(Phase.non_contrast):
            return "non-contrast"
        return f"{_words(phase or 'unknown')} phase; {_words(legacy_phase or '')} preferred"
    if phase in winners:
        return _why_not(facts, winners[phase], trained)
    return f"{_words(phase or 'unknown')} phase not read by the model"
