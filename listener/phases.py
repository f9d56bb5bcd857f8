"""Which contrast phase a CT series shows, with the evidence that decided it.

A routed liver study holds non-contrast, arterial, portal venous and delayed
series next to localizers, reformats and a dose report, and the model reads
particular phases. Each series' phase is decided from its header in a fixed
order of trust: the Enhanced CT phase tag, the time since the bolus started,
the absence of a contrast agent, the site's naming; then, for contrast series
still unknown, their order of acquisition in the study. Every decision names
what decided it and what disagreed, so a site can tune its rules before going
live (``tace series classify``) and a radiologist can see why a series was
used. Disagreement is reported, never settled by a guess.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import itertools
import re
import struct
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

DEFAULT_RULES_FILE = "phase_rules.yaml"
_DAY = 86400.0


class Phase(enum.StrEnum):
    non_contrast = "non_contrast"
    arterial = "arterial"
    portal_venous = "portal_venous"
    delayed = "delayed"
    unknown = "unknown"

    @property
    def words(self) -> str:
        return self.value.replace("_", " ").replace("non contrast", "non-contrast")


class Confidence(enum.StrEnum):
    high = "high"
    medium = "medium"
    low = "low"


class Kind(enum.StrEnum):
    """What a rule says about a series: a phase, contrast without a phase, or no phase series at all."""

    non_contrast = "non_contrast"
    arterial = "arterial"
    portal_venous = "portal_venous"
    delayed = "delayed"
    contrast = "contrast"
    localizer = "localizer"
    dose_report = "dose_report"
    bolus_tracking = "bolus_tracking"

    @property
    def phase(self) -> Phase | None:
        return Phase(self.value) if self.value in Phase.__members__ else None


PHASE_KINDS = (Kind.non_contrast, Kind.arterial, Kind.portal_venous, Kind.delayed)
NOT_IMAGE = {
    Kind.localizer: "a localizer",
    Kind.dose_report: "a dose report",
    Kind.bolus_tracking: "a bolus-tracking monitoring series",
}
NOT_IMAGE_MODALITIES = frozenset({"SR", "OT", "KO", "PR", "DOC", "REG", "SEG", "RWV"})
ORDER = {Phase.arterial: 1, Phase.portal_venous: 2, Phase.delayed: 3}
"""Contrast phases by when they are acquired after the injection."""


class PhaseRulesError(ValueError):
    """A rule file that cannot be used; the message names the file and the key."""


# -- what classification reads from a header ---------------------------------------------------

_READ_ERRORS = (ValueError, TypeError, LookupError, AttributeError, OverflowError, struct.error)


def _value(ds: Dataset, keyword: str) -> Any:
    """The element's value, None when absent or when pydicom cannot decode it."""
    try:
        return ds.get(keyword)
    except _READ_ERRORS:
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    value = _value(ds, keyword)
    if value is None or isinstance(value, DicomSequence):
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, MultiValue | list | tuple):
        value = "\\".join(str(part) for part in value)
    text = str(value).replace("\x00", "").strip()
    return text or None


def _number(ds: Dataset, keyword: str) -> float | None:
    value = _value(ds, keyword)
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if value else None
    try:
        number = float(value) if value is not None and value != "" else None
    except _READ_ERRORS:
        return None
    return number if number is not None and number == number and abs(number) != float("inf") else None


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    value = _value(ds, keyword)
    return [item for item in value if isinstance(item, Dataset)] if isinstance(value, DicomSequence) else []


def _in_functional_groups(ds: Dataset, macro: str, keyword: str, read: Any) -> Any:
    """A value of an Enhanced CT functional group macro: shared groups first, then the first frame's."""
    for group in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for frame in _items(ds, group)[:1]:
            for item in _items(frame, macro):
                found = read(item, keyword)
                if found is not None:
                    return found
    return None


def _time_of_datetime(value: str | None) -> str | None:
    """The TM part of a DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX)."""
    if not value or len(value) <= 8:
        return None
    return re.split(r"[+-]", value[8:])[0] or None


def _agent(ds: Dataset) -> str | None:
    """Contrast/Bolus Agent (0018,0010), else the agent code of the Enhanced Contrast/Bolus module."""
    text = _text(ds, "ContrastBolusAgent")
    if text:
        return text
    for item in _items(ds, "ContrastBolusAgentSequence"):
        meaning = _text(item, "CodeMeaning") or _text(item, "CodeValue")
        if meaning:
            return meaning
    return None


def _image_type(ds: Dataset) -> tuple[str, ...]:
    value = _value(ds, "ImageType")
    if value is None:
        value = _in_functional_groups(ds, "CTImageFrameTypeSequence", "FrameType", _value)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        value = value.split("\\")
    if not isinstance(value, MultiValue | list | tuple):
        return ()
    return tuple(str(part).strip().upper() for part in value if str(part).strip())


def _series_number(ds: Dataset) -> int | None:
    number = _number(ds, "SeriesNumber")
    return int(number) if number is not None and number.is_integer() else None


@dataclass(frozen=True)
class SeriesTags:
    """What classification needs from a series' first instance header (stored as JSON on the series row)."""

    series_instance_uid: str
    series_number: int | None = None
    series_description: str = ""
    protocol_name: str = ""
    image_type: tuple[str, ...] = ()
    contrast_agent: str | None = None
    contrast_phase: str | None = None
    """Contrast/Bolus Agent Phase (0018,9344), upper case."""
    contrast_start_time: str | None = None
    acquisition_time: str | None = None
    series_time: str | None = None
    slice_thickness: float | None = None
    modality: str | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> SeriesTags:
        """Read tolerantly: a missing or undecodable value is None, never an exception."""
        phase = _text(ds, "ContrastBolusAgentPhase") or _in_functional_groups(
            ds, "ContrastBolusUsageSequence", "ContrastBolusAgentPhase", _text
        )
        acquired = (
            _text(ds, "AcquisitionTime")
            or _time_of_datetime(_text(ds, "AcquisitionDateTime"))
            or _time_of_datetime(
                _in_functional_groups(ds, "FrameContentSequence", "FrameAcquisitionDateTime", _text)
            )
        )
        thickness = _number(ds, "SliceThickness")
        if thickness is None:
            thickness = _in_functional_groups(ds, "PixelMeasuresSequence", "SliceThickness", _number)
        modality = _text(ds, "Modality")
        return cls(
            series_instance_uid=_text(ds, "SeriesInstanceUID") or "",
            series_number=_series_number(ds),
            series_description=_text(ds, "SeriesDescription") or "",
            protocol_name=_text(ds, "ProtocolName") or "",
            image_type=_image_type(ds),
            contrast_agent=_agent(ds),
            contrast_phase=phase.upper() if phase else None,
            contrast_start_time=_text(ds, "ContrastBolusStartTime"),
            acquisition_time=acquired,
            series_time=_text(ds, "SeriesTime"),
            slice_thickness=thickness,
            modality=modality.upper() if modality else None,
        )

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_type"] = list(self.image_type)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeriesTags:
        """Unknown keys are ignored and missing ones take their defaults, so older rows stay readable."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if not isinstance(values.get("series_instance_uid"), str):
            raise ValueError("series tags need a series_instance_uid")
        values["image_type"] = tuple(str(part) for part in values.get("image_type") or ())
        return cls(**values)

    @property
    def label(self) -> str:
        return f"series {self.series_number}" if self.series_number is not None else self.series_instance_uid


@dataclass(frozen=True)
class PhaseDecision:
    phase: Phase
    confidence: Confidence
    evidence: str
    conflicts: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase.value,
            "confidence": self.confidence.value,
            "evidence": self.evidence,
            "conflicts": list(self.conflicts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhaseDecision:
        return cls(
            phase=Phase(data["phase"]),
            confidence=Confidence(data["confidence"]),
            evidence=str(data["evidence"]),
            conflicts=tuple(str(c) for c in data.get("conflicts") or ()),
        )


# -- rules -----------------------------------------------------------------------------------------

_SEPARATORS = r"[\s_\-./]*"
_BEFORE = r"(?<![^\W\d_])"
_AFTER = r"(?![^\W\d_])"
_TOP_KEYS = (
    "windows",
    "same_acquisition_seconds",
    "contrast_phase_values",
    "agent_none_values",
    "keywords",
    "patterns",
    "drop",
)


def fold(text: str) -> str:
    """Lower case without accents, so "Portalvenös", "PORTALVENOS" and "portalvenos" read alike."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@dataclass(frozen=True)
class Window:
    """Seconds after the bolus start, from ``start`` (inclusive) to ``end`` (exclusive); None is open."""

    phase: Phase
    start: float | None
    end: float | None

    def contains(self, seconds: float) -> bool:
        return (self.start is None or seconds >= self.start) and (self.end is None or seconds < self.end)

    def __str__(self) -> str:
        start = "-inf" if self.start is None else f"{self.start:g}"
        end = "inf" if self.end is None else f"{self.end:g}"
        return f"[{start}, {end}) s"


@dataclass(frozen=True)
class KeywordRule:
    kind: Kind
    text: str
    """The keyword or pattern as written in the rule file, quoted in evidence."""
    regex: re.Pattern[str]
    is_pattern: bool = False


@dataclass(frozen=True)
class PhaseRules:
    """Timing windows and naming rules; :meth:`default` ships with the package, :meth:`load` adds a site's."""

    windows: tuple[Window, ...]
    same_acquisition_seconds: float
    contrast_phase_values: tuple[tuple[str, Kind], ...]
    agent_none_values: frozenset[str]
    keyword_rules: tuple[KeywordRule, ...]
    source: str = "default rules"

    @classmethod
    def default(cls) -> PhaseRules:
        return _default_rules()

    @classmethod
    def load(cls, path: Path | str) -> PhaseRules:
        """The defaults with a site YAML applied; errors name the file and the key."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PhaseRulesError(f"{path}: cannot read the phase rules: {exc}") from None
        site = _parse_yaml(text, str(path))
        return _build(_merge(_default_document(), site, str(path)), str(path))

    def phase_of_tag(self, value: str) -> Kind | None:
        return dict(self.contrast_phase_values).get(value.strip().upper())


def _parse_yaml(text: str, name: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PhaseRulesError(f"{name}: not valid YAML{line}: {problem}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise PhaseRulesError(f"{name}: the phase rules must be a mapping of {', '.join(_TOP_KEYS)}")
    unknown = [str(key) for key in document if key not in _TOP_KEYS]
    if unknown:
        raise PhaseRulesError(f"{name}: {unknown[0]}: unknown key (known: {', '.join(_TOP_KEYS)})")
    return document


@functools.cache
def _default_document() -> dict[str, Any]:
    text = resources.files("listener").joinpath(DEFAULT_RULES_FILE).read_text(encoding="utf-8")
    return _parse_yaml(text, f"listener/{DEFAULT_RULES_FILE}")


@functools.cache
def _default_rules() -> PhaseRules:
    return _build(_default_document(), f"listener/{DEFAULT_RULES_FILE}", source="default rules")


def _mapping(value: Any, name: str, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PhaseRulesError(f"{name}: {key}: must be a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _kind(value: Any, name: str, key: str, allowed: Sequence[Kind]) -> Kind:
    if isinstance(value, str) and value in Kind.__members__ and Kind(value) in allowed:
        return Kind(value)
    raise PhaseRulesError(f"{name}: {key}: {value!r} is not one of {', '.join(allowed)}")


def _texts(value: Any, name: str, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PhaseRulesError(f"{name}: {key}: must be a list, got {type(value).__name__}")
    texts = []
    for index, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise PhaseRulesError(
                f"{name}: {key}[{index}]: {item!r} is not text (quote words YAML reads as yes/no)"
            )
        if not str(item).strip():
            raise PhaseRulesError(f"{name}: {key}[{index}]: empty")
        texts.append(str(item).strip())
    return texts


def _seconds(value: Any, name: str, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PhaseRulesError(f"{name}: {key}: {value!r} is not a number of seconds")
    return float(value)


def _merge(default: dict[str, Any], site: dict[str, Any], name: str) -> dict[str, Any]:
    """Apply a site document to the defaults: windows and values replaced, keywords added or dropped."""
    merged: dict[str, Any] = {
        "windows": dict(_mapping(default.get("windows"), name, "windows")),
        "same_acquisition_seconds": default.get("same_acquisition_seconds"),
        "contrast_phase_values": dict(
            _mapping(default.get("contrast_phase_values"), name, "contrast_phase_values")
        ),
        "agent_none_values": list(default.get("agent_none_values") or []),
        "keywords": {
            k: list(v or []) for k, v in _mapping(default.get("keywords"), name, "keywords").items()
        },
        "patterns": {
            k: list(v or []) for k, v in _mapping(default.get("patterns"), name, "patterns").items()
        },
    }
    merged["windows"].update(_mapping(site.get("windows"), name, "windows"))
    if "same_acquisition_seconds" in site:
        merged["same_acquisition_seconds"] = site["same_acquisition_seconds"]
    merged["contrast_phase_values"].update(
        {
            k.upper(): v
            for k, v in _mapping(site.get("contrast_phase_values"), name, "contrast_phase_values").items()
        }
    )
    merged["agent_none_values"] += _texts(site.get("agent_none_values"), name, "agent_none_values")
    for section in ("keywords", "patterns"):
        for kind_name, items in _mapping(site.get(section), name, section).items():
            kind = _kind(kind_name, name, f"{section}.{kind_name}", list(Kind))
            merged[section].setdefault(kind.value, [])
            texts = _texts(items, name, f"{section}.{kind_name}")
            for index, text in enumerate(texts):
                _compile(kind, text, section == "patterns", name, f"{section}.{kind_name}[{index}]")
            merged[section][kind.value] += texts
    for kind_name, items in _mapping(site.get("drop"), name, "drop").items():
        kind = _kind(kind_name, name, f"drop.{kind_name}", list(Kind))
        for index, text in enumerate(_texts(items, name, f"drop.{kind_name}")):
            removed = False
            for section in ("keywords", "patterns"):
                present = merged[section].get(kind.value, [])
                if text in present:
                    present.remove(text)
                    removed = True
            if not removed:
                raise PhaseRulesError(
                    f"{name}: drop.{kind_name}[{index}]: {text!r} is not a default keyword or pattern "
                    f"of {kind_name}"
                )
    return merged


def _compile(kind: Kind, text: str, is_pattern: bool, name: str, key: str) -> KeywordRule:
    if is_pattern:
        try:
            regex = re.compile(f"{_BEFORE}(?:{text}){_AFTER}")
        except re.error as exc:
            raise PhaseRulesError(f"{name}: {key}: {text!r} is not a regular expression: {exc}") from None
    else:
        tokens = fold(text).split()
        regex = re.compile(_BEFORE + _SEPARATORS.join(re.escape(token) for token in tokens) + _AFTER)
    return KeywordRule(kind=kind, text=text, regex=regex, is_pattern=is_pattern)


def _build(document: dict[str, Any], name: str, source: str | None = None) -> PhaseRules:
    windows = []
    for phase_name, bounds in _mapping(document.get("windows"), name, "windows").items():
        key = f"windows.{phase_name}"
        kind = _kind(phase_name, name, key, PHASE_KINDS)
        if bounds is None:
            continue
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise PhaseRulesError(
                f"{name}: {key}: must be [from, to] in seconds (null for open), got {bounds!r}"
            )
        start, end = _seconds(bounds[0], name, key), _seconds(bounds[1], name, key)
        if start is not None and end is not None and start >= end:
            raise PhaseRulesError(f"{name}: {key}: from {start:g} s is not before to {end:g} s")
        phase = kind.phase
        assert phase is not None
        windows.append(Window(phase, start, end))
    windows.sort(key=lambda w: -_DAY if w.start is None else w.start)
    for before, after in itertools.pairwise(windows):
        if before.end is None or after.start is None or before.end > after.start:
            raise PhaseRulesError(f"{name}: windows: {before.phase} {before} overlaps {after.phase} {after}")
    same = document.get("same_acquisition_seconds")
    same_seconds = _seconds(same, name, "same_acquisition_seconds")
    if same_seconds is None or same_seconds < 0:
        raise PhaseRulesError(f"{name}: same_acquisition_seconds: must be a number of seconds, 0 or more")
    tag_values = []
    for value, kind_name in _mapping(
        document.get("contrast_phase_values"), name, "contrast_phase_values"
    ).items():
        if kind_name is None:
            continue
        allowed = [*PHASE_KINDS, Kind.contrast]
        tag_values.append((value.upper(), _kind(kind_name, name, f"contrast_phase_values.{value}", allowed)))
    none_values = _texts(document.get("agent_none_values"), name, "agent_none_values")
    rules = []
    for section, is_pattern in (("keywords", False), ("patterns", True)):
        for kind_name, items in _mapping(document.get(section), name, section).items():
            kind = _kind(kind_name, name, f"{section}.{kind_name}", list(Kind))
            for index, text in enumerate(_texts(items, name, f"{section}.{kind_name}")):
                rules.append(_compile(kind, text, is_pattern, name, f"{section}.{kind_name}[{index}]"))
    return PhaseRules(
        windows=tuple(windows),
        same_acquisition_seconds=same_seconds,
        contrast_phase_values=tuple(tag_values),
        agent_none_values=frozenset(v.upper() for v in none_values),
        keyword_rules=tuple(rules),
        source=source or name,
    )


# -- evidence --------------------------------------------------------------------------------------

_TM = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?$")


def seconds_of_day(value: str | None) -> float | None:
    """A DICOM TM (HHMMSS.FFFFFF, or the old HH:MM:SS) as seconds after midnight; None if unusable."""
    match = _TM.match((value or "").strip())
    if not match:
        return None
    hours, minutes, seconds, fraction = match.groups()
    h, m, s = int(hours), int(minutes or 0), int(seconds or 0)
    if h > 23 or m > 59 or s > 60:
        return None
    return h * 3600 + m * 60 + s + (float(fraction) if fraction else 0.0)


def _between(start: float, end: float) -> float:
    """Seconds from one time of day to another, across midnight when that is the shorter way."""
    delta = end - start
    if delta <= -_DAY / 2:
        delta += _DAY
    elif delta > _DAY / 2:
        delta -= _DAY
    return delta


@dataclass(frozen=True)
class _Match:
    rule: KeywordRule
    start: int
    end: int


@dataclass(frozen=True)
class _Reading:
    """What the keyword rules find in one text."""

    field: str
    text: str
    matches: tuple[_Match, ...]

    def of(self, *kinds: Kind) -> list[_Match]:
        return [m for m in self.matches if m.rule.kind in kinds]

    @property
    def phases(self) -> dict[Phase, _Match]:
        found: dict[Phase, _Match] = {}
        for match in self.of(*PHASE_KINDS):
            phase = match.rule.kind.phase
            assert phase is not None
            found.setdefault(phase, match)
        return found

    def says(self, match: _Match) -> str:
        what = "pattern" if match.rule.is_pattern else "keyword"
        kind = match.rule.kind
        named = kind.phase.words if kind.phase else kind.value.replace("_", " ")
        return f"{self.field} {self.text!r} matches the {named} {what} {match.rule.text!r}"


def _read(field: str, text: str, rules: PhaseRules) -> _Reading:
    folded = fold(text)
    found = [
        _Match(rule, m.start(), m.end())
        for rule in rules.keyword_rules
        for m in rule.regex.finditer(folded)
        if m.end() > m.start()
    ]
    kept = tuple(
        m
        for m in found
        if not any(
            o.start <= m.start and m.end <= o.end and (o.end - o.start) > (m.end - m.start) for o in found
        )
    )
    return _Reading(field, text, kept)


@dataclass(frozen=True)
class _Signal:
    """One piece of evidence: the phase it names (or only that contrast was given) and the sentence."""

    kind: Kind
    sentence: str

    @property
    def phase(self) -> Phase | None:
        return self.kind.phase


@dataclass(frozen=True)
class _Analysis:
    decision: PhaseDecision
    contrast: bool
    """Known to show contrast, so the study's acquisition order may place it."""
    seconds: float | None
    agent_only: bool = False
    """Non-contrast on the absence of an agent alone."""


def _tag_signal(tags: SeriesTags, rules: PhaseRules) -> tuple[_Signal | None, str | None]:
    if not tags.contrast_phase:
        return None, None
    kind = rules.phase_of_tag(tags.contrast_phase)
    sentence = f"Contrast/Bolus Agent Phase (0018,9344) is {tags.contrast_phase}"
    if kind is None:
        return None, f"{sentence}, which no rule maps to a phase"
    return _Signal(kind, sentence), None


def _acquired(tags: SeriesTags) -> tuple[float | None, str]:
    seconds = seconds_of_day(tags.acquisition_time)
    if seconds is not None:
        return seconds, "acquired"
    return seconds_of_day(tags.series_time), "Series Time (no Acquisition Time) is"


def _timing_signal(tags: SeriesTags, rules: PhaseRules) -> tuple[_Signal | None, bool, str | None]:
    """The timing signal, whether it came from Series Time, and a note when it decides nothing."""
    start = seconds_of_day(tags.contrast_start_time)
    if start is None:
        return None, False, None
    at, how = _acquired(tags)
    if at is None:
        return (
            None,
            False,
            "Contrast/Bolus Start Time (0018,1042) is set but the series has no acquisition time",
        )
    delta = _between(start, at)
    side = "after" if delta >= 0 else "before"
    said = f"{how} {abs(delta):.0f} s {side} Contrast/Bolus Start Time (0018,1042)"
    from_series_time = how != "acquired"
    for window in rules.windows:
        if window.contains(delta):
            return (
                _Signal(Kind(window.phase.value), f"{said}, in the {window.phase.words} window {window}"),
                from_series_time,
                None,
            )
    if delta > 0:
        return _Signal(Kind.contrast, f"{said}, outside every phase window"), from_series_time, None
    return None, from_series_time, f"{said}, outside every phase window"


def _agent_signal(tags: SeriesTags, rules: PhaseRules) -> _Signal:
    agent = (tags.contrast_agent or "").strip()
    if not agent:
        return _Signal(Kind.non_contrast, "Contrast/Bolus Agent (0018,0010) is absent")
    if agent.upper() in rules.agent_none_values:
        return _Signal(Kind.non_contrast, f"Contrast/Bolus Agent (0018,0010) is {agent!r}")
    return _Signal(Kind.contrast, f"Contrast/Bolus Agent (0018,0010) is {agent!r}")


def _not_image(tags: SeriesTags, description: _Reading) -> str | None:
    if "LOCALIZER" in tags.image_type:
        return "a localizer: Image Type (0008,0008) includes LOCALIZER"
    if tags.modality in NOT_IMAGE_MODALITIES:
        return f"not an image series: Modality (0008,0060) is {tags.modality}"
    for match in description.of(*NOT_IMAGE):
        return f"{NOT_IMAGE[match.rule.kind]}: {description.says(match)}"
    return None


def _disagreeing(decided: Phase, signals: Sequence[_Signal | None]) -> list[str]:
    """Sentences of signals naming another phase, or contrast against a non-contrast decision."""
    conflicts = []
    for signal in signals:
        if signal is None:
            continue
        if signal.phase is not None and signal.phase is not decided:
            conflicts.append(f"{signal.sentence}, which says {signal.phase.words}")
        elif signal.kind is Kind.contrast and decided is Phase.non_contrast:
            conflicts.append(f"{signal.sentence}, which says contrast was given")
    return conflicts


def _keyword_signals(reading: _Reading) -> list[_Signal]:
    signals = [_Signal(m.rule.kind, reading.says(m)) for m in reading.phases.values()]
    signals += [_Signal(Kind.contrast, reading.says(m)) for m in reading.of(Kind.contrast)[:1]]
    return signals


def _tie(reading: _Reading) -> str:
    named = [f"{phase.words} ({m.rule.text!r})" for phase, m in reading.phases.items()]
    return f"{reading.field} {reading.text!r} names {' and '.join(named)}"


def _join(*sentences: str | None) -> str:
    return "; ".join(s for s in sentences if s)


def _lower(confidence: Confidence) -> Confidence:
    return Confidence.medium if confidence is Confidence.high else Confidence.low


def _analyse(tags: SeriesTags, rules: PhaseRules) -> _Analysis:
    acquired, _ = _acquired(tags)
    description = _read("Series Description", tags.series_description, rules)
    not_image = _not_image(tags, description)
    if not_image:
        return _Analysis(PhaseDecision(Phase.unknown, Confidence.high, not_image), False, acquired)
    protocol = _read("Protocol Name", tags.protocol_name, rules)
    tag, tag_note = _tag_signal(tags, rules)
    timing, from_series_time, timing_note = _timing_signal(tags, rules)
    agent = _agent_signal(tags, rules)
    words = _keyword_signals(description) + _keyword_signals(protocol)
    ties = [_tie(r) for r in (description, protocol) if len(r.phases) > 1]

    for signal, base in ((tag, Confidence.high), (timing, Confidence.high)):
        if signal is None or signal.phase is None:
            continue
        if signal is timing and from_series_time:
            base = Confidence.medium
        others = [s for s in (tag, timing, *words) if s is not signal]
        conflicts = [*_disagreeing(signal.phase, others), *ties]
        confidence = _lower(base) if conflicts else base
        decision = PhaseDecision(signal.phase, confidence, signal.sentence, tuple(conflicts))
        return _Analysis(decision, signal.phase in ORDER, acquired)

    notes = [tag_note, timing_note]
    for reading, base in ((description, Confidence.high), (protocol, Confidence.medium)):
        phases = reading.phases
        if len(phases) > 1:
            evidence = _join(f"{reading.field} names more than one phase", *notes)
            return _Analysis(
                PhaseDecision(Phase.unknown, Confidence.low, evidence, tuple(ties)), False, acquired
            )
        if not phases:
            continue
        phase, match = next(iter(phases.items()))
        others = [tag, timing, *(s for s in words if s.sentence != reading.says(match))]
        conflicts = [*_disagreeing(phase, others), *ties]
        given = [s for s in (tag, timing) if s is not None and s.kind is Kind.contrast]
        support = given[0].sentence if given and phase in ORDER else agent.sentence
        if phase in ORDER and agent.kind is Kind.non_contrast and not given:
            conflicts.append(f"{agent.sentence}, which alone would mean no contrast")
        elif phase is Phase.non_contrast and agent.kind is Kind.contrast:
            conflicts.append(f"{agent.sentence}, which says contrast was given")
        evidence = _join(reading.says(match), None if conflicts else support, *notes)
        confidence = _lower(base) if conflicts else base
        return _Analysis(
            PhaseDecision(phase, confidence, evidence, tuple(conflicts)), phase in ORDER, acquired
        )

    contrast = [s for s in (tag, timing, agent, *words) if s is not None and s.kind is Kind.contrast]
    if contrast:
        evidence = _join(contrast[0].sentence, "nothing names the phase", *notes)
        return _Analysis(PhaseDecision(Phase.unknown, Confidence.low, evidence), True, acquired)
    evidence = _join(agent.sentence, "nothing else names a phase", *notes)
    decision = PhaseDecision(Phase.non_contrast, Confidence.low, evidence)
    return _Analysis(decision, False, acquired, agent_only=True)


def classify_series(tags: SeriesTags, rules: PhaseRules) -> PhaseDecision:
    """The phase of one series from its own header (the study-level order step is :func:`classify_study`)."""
    return _analyse(tags, rules).decision


# -- the study ------------------------------------------------------------------------------------


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


@dataclass
class _Acquisition:
    """Series of one study acquired within ``same_acquisition_seconds`` of each other."""

    seconds: float
    members: list[tuple[SeriesTags, _Analysis]]

    @property
    def anchors(self) -> list[tuple[SeriesTags, Phase]]:
        return [(t, a.decision.phase) for t, a in self.members if a.decision.phase in ORDER]

    @property
    def unknown(self) -> list[SeriesTags]:
        return [t for t, a in self.members if a.decision.phase is Phase.unknown]

    @property
    def phase(self) -> Phase | None:
        phases = {phase for _, phase in self.anchors}
        return phases.pop() if len(phases) == 1 else None

    def named(self) -> str:
        tags, phase = self.anchors[0]
        return f"{tags.label} ({phase.words})"


def _acquisitions(timed: list[tuple[SeriesTags, _Analysis, float]], gap: float) -> list[_Acquisition]:
    if timed and max(s for *_, s in timed) - min(s for *_, s in timed) > _DAY / 2:
        timed = [(t, a, s + _DAY if s < _DAY / 2 else s) for t, a, s in timed]
    groups: list[_Acquisition] = []
    for tags, analysis, seconds in sorted(timed, key=lambda item: item[2]):
        if groups and seconds - groups[-1].seconds <= gap:
            groups[-1].members.append((tags, analysis))
        else:
            groups.append(_Acquisition(seconds, [(tags, analysis)]))
        groups[-1].seconds = max(groups[-1].seconds, seconds)
    return groups


def _out_of_order(groups: list[_Acquisition]) -> str | None:
    for group in groups:
        if group.anchors and group.phase is None:
            named = " and ".join(f"{t.label} ({p.words})" for t, p in group.anchors)
            return f"{named} were acquired together but name different phases"
    anchored = [g for g in groups if g.phase is not None]
    for before, after in itertools.pairwise(anchored):
        assert before.phase is not None and after.phase is not None
        if ORDER[before.phase] > ORDER[after.phase]:
            return f"{before.named()} was acquired before {after.named()}"
    return None


def _place(groups: list[_Acquisition], decisions: dict[str, PhaseDecision], same: float) -> None:
    """Give the study's unknown contrast acquisitions the phase their order allows, or say why not."""
    problem = _out_of_order(groups)
    if problem:
        for group in groups:
            for tags in group.unknown:
                _add_conflict(decisions, tags, f"acquisition order not used: {problem}")
        return
    for group in groups:
        if group.phase is not None:
            for tags in group.unknown:
                _assign(
                    decisions,
                    tags,
                    group.phase,
                    f"acquired within {same:g} s of {group.named()}: the same acquisition",
                )
    index = 0
    while index < len(groups):
        if groups[index].phase is not None:
            index += 1
            continue
        end = index
        while end < len(groups) and groups[end].phase is None:
            end += 1
        before = groups[index - 1] if index > 0 else None
        after = groups[end] if end < len(groups) else None
        _place_run(groups[index:end], before, after, decisions)
        index = end


def _place_run(
    run: list[_Acquisition],
    before: _Acquisition | None,
    after: _Acquisition | None,
    decisions: dict[str, PhaseDecision],
) -> None:
    low = ORDER[before.phase] if before and before.phase else 0
    high = ORDER[after.phase] if after and after.phase else len(ORDER) + 1
    by_order = {rank: phase for phase, rank in ORDER.items()}
    between = [by_order[rank] for rank in range(low + 1, high)]
    bounds = (
        " ".join(
            part
            for part in (
                f"after {before.named()}" if before else "",
                f"before {after.named()}" if after else "",
            )
            if part
        )
        or "with no series of a stated phase in the study"
    )
    if len(between) == len(run):
        chosen = between
    elif not between and (low == high or high == 1 or low == len(ORDER)):
        only = by_order[low if low else high]
        chosen = [only] * len(run)
    else:
        slots = ", ".join(p.words for p in between) or "no phase"
        problem = (
            f"acquisition order leaves {len(run)} unnamed contrast acquisition(s) {bounds} "
            f"for {len(between)} phase(s) ({slots}): not guessed"
        )
        for group in run:
            for tags in group.unknown:
                _add_conflict(decisions, tags, problem)
        return
    for position, (group, phase) in enumerate(zip(run, chosen, strict=True), start=1):
        place = f"the {_ordinal(position)} of {len(run)}"
        reason = f"acquisition order: {place} unnamed contrast acquisition(s) {bounds}"
        for tags in group.unknown:
            _assign(decisions, tags, phase, reason)


def _assign(decisions: dict[str, PhaseDecision], tags: SeriesTags, phase: Phase, reason: str) -> None:
    old = decisions[tags.series_instance_uid]
    decisions[tags.series_instance_uid] = PhaseDecision(
        phase, Confidence.low, _join(reason, old.evidence), old.conflicts
    )


def _add_conflict(decisions: dict[str, PhaseDecision], tags: SeriesTags, conflict: str) -> None:
    old = decisions[tags.series_instance_uid]
    decisions[tags.series_instance_uid] = dataclasses.replace(old, conflicts=(*old.conflicts, conflict))


def _iter_contrast(
    analysed: Sequence[tuple[SeriesTags, _Analysis]], decisions: dict[str, PhaseDecision]
) -> Iterator[tuple[SeriesTags, _Analysis, float]]:
    for tags, analysis in analysed:
        if not analysis.contrast:
            continue
        if analysis.seconds is None:
            if analysis.decision.phase is Phase.unknown:
                _add_conflict(
                    decisions, tags, "no acquisition time, so the acquisition order cannot place it"
                )
            continue
        yield tags, analysis, analysis.seconds


def classify_study(series: Sequence[SeriesTags], rules: PhaseRules) -> dict[str, PhaseDecision]:
    """Each series' decision, keyed by Series Instance UID, with the study-level steps added.

    The absence of an agent counts for more when other series of the study record
    one; contrast series that their own header leaves unknown are placed by the
    order of acquisition among the study's contrast series (low confidence), and
    only where that order allows one answer.
    """
    analysed = [(tags, _analyse(tags, rules)) for tags in series]
    decisions = {tags.series_instance_uid: analysis.decision for tags, analysis in analysed}
    recording = [t for t in series if _agent_signal(t, rules).kind is Kind.contrast]
    if recording:
        for tags, analysis in analysed:
            if analysis.agent_only:
                decisions[tags.series_instance_uid] = dataclasses.replace(
                    analysis.decision,
                    confidence=Confidence.medium,
                    evidence=_join(
                        analysis.decision.evidence, f"{recording[0].label} of this study records an agent"
                    ),
                )
    timed = list(_iter_contrast(analysed, decisions))
    groups = _acquisitions(timed, rules.same_acquisition_seconds)
    if any(group.unknown for group in groups):
        _place(groups, decisions, rules.same_acquisition_seconds)
    return decisions
