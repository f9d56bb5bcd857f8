"""Contrast phase of a series from its header: the table of vendor and language conventions, the
study-level order step, and the rule files a site writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from listener.phases import (
    Confidence,
    Phase,
    PhaseDecision,
    PhaseRules,
    PhaseRulesError,
    SeriesTags,
    classify_series,
    classify_study,
    seconds_of_day,
)

AGENT = "Ultravist 370"
LOCALIZER = ("ORIGINAL", "PRIMARY", "LOCALIZER")
AXIAL = ("ORIGINAL", "PRIMARY", "AXIAL")

NON = Phase.non_contrast
ART = Phase.arterial
PV = Phase.portal_venous
DEL = Phase.delayed
UNK = Phase.unknown
HIGH, MEDIUM, LOW = Confidence.high, Confidence.medium, Confidence.low


def series(description: str = "", uid: str = "1.2.3", **values: Any) -> SeriesTags:
    values.setdefault("image_type", AXIAL)
    values.setdefault("modality", "CT")
    return SeriesTags(series_instance_uid=uid, series_description=description, **values)


def case(
    id: str,
    tags: SeriesTags,
    phase: Phase,
    confidence: Confidence,
    conflicted: bool = False,
    evidence: str = "",
) -> Any:
    return pytest.param(tags, phase, confidence, conflicted, evidence, id=id)


def timed(start: str, acquired: str, description: str = "Abdomen 5.0", **values: Any) -> SeriesTags:
    return series(description, contrast_start_time=start, acquisition_time=acquired, **values)


TABLE = [
    # Siemens (German and English naming, Topogram, CARE Bolus, Patient Protocol)
    case(
        "siemens-topogram", series("Topogram 0.6 T20s", image_type=LOCALIZER), UNK, HIGH, evidence="LOCALIZER"
    ),
    case("siemens-nativ", series("Nativ 5.0 B30f"), NON, HIGH, evidence="'nativ'"),
    case("siemens-arteriell", series("Arteriell 1.0 I30f 3", contrast_agent=AGENT), ART, HIGH),
    case("siemens-spaetarteriell", series("Leber spät arteriell 1.0", contrast_agent=AGENT), ART, HIGH),
    case("siemens-portalvenoes-ascii", series("portalvenoes 5.0 Br40", contrast_agent=AGENT), PV, HIGH),
    case("siemens-portalvenös-umlaut", series("Portalvenös 3.0 B30f", contrast_agent=AGENT), PV, HIGH),
    case("siemens-venös", series("Abdomen venös 5.0", contrast_agent=AGENT), PV, HIGH),
    case("siemens-spät", series("Spät 5.0 B30f", contrast_agent=AGENT), DEL, HIGH),
    case("siemens-care-bolus", series("CARE Bolus", contrast_agent=AGENT), UNK, HIGH, evidence="bolus"),
    case("siemens-patient-protocol", series("Patient Protocol", image_type=()), UNK, HIGH, evidence="dose"),
    # GE (upper case, abbreviations, Scout, SmartPrep, Dose Report SR)
    case("ge-scout", series("Scout", image_type=LOCALIZER), UNK, HIGH),
    case("ge-ART", series("ART 1.25mm STD", contrast_agent="OMNIPAQUE 350"), ART, HIGH),
    case("ge-PV", series("PV 5mm", contrast_agent="OMNIPAQUE 350"), PV, HIGH),
    case("ge-DELAY-3MIN", series("DELAY 3MIN", contrast_agent="OMNIPAQUE 350"), DEL, HIGH),
    case("ge-WO-CONTRAST", series("ABD W/O CONTRAST"), NON, HIGH),
    case("ge-smartprep", series("SmartPrep", contrast_agent="OMNIPAQUE 350"), UNK, HIGH),
    case("ge-dose-report-sr", series("Dose Report", modality="SR", image_type=()), UNK, HIGH, evidence="SR"),
    # Philips (Surview, Bolus tracking, Dose Info)
    case("philips-surview", series("Surview", image_type=("ORIGINAL", "PRIMARY")), UNK, HIGH),
    case("philips-arterial", series("Arterial/Abdomen 2mm", contrast_agent="Iomeron"), ART, HIGH),
    case("philips-portal", series("Portal 5mm iDose (3)", contrast_agent="Iomeron"), PV, HIGH),
    case("philips-dose-info-OT", series("Dose Info", modality="OT"), UNK, HIGH, evidence="Modality"),
    case("philips-bolus-tracking", series("Bolus tracking", contrast_agent="Iomeron"), UNK, HIGH),
    # Canon (Scanogram, SureStart, ART/PVP/EQ)
    case("canon-scanogram", series("Scanogram", image_type=("ORIGINAL", "PRIMARY")), UNK, HIGH),
    case("canon-ART", series("ART 0.5 FC08", contrast_agent="Iopamiron"), ART, HIGH),
    case("canon-PVP", series("PVP 5.0 FC08", contrast_agent="Iopamiron"), PV, HIGH),
    case("canon-EQ", series("EQ 5.0 FC08", contrast_agent="Iopamiron"), DEL, HIGH),
    case("canon-surestart", series("SureStart", contrast_agent="Iopamiron"), UNK, HIGH),
    # French, Spanish, Italian, Dutch, Japanese romaji
    case("fr-sans-injection", series("Abdomen sans injection"), NON, HIGH),
    case("fr-arteriel-tardif", series("Temps artériel tardif", contrast_agent=AGENT), ART, HIGH),
    case("fr-temps-portal", series("Temps portal 1.25", contrast_agent=AGENT), PV, HIGH),
    case("fr-tardif", series("Foie tardif", contrast_agent=AGENT), DEL, HIGH),
    case("es-sin-contraste", series("Abdomen sin contraste"), NON, HIGH),
    case("es-fase-arterial", series("Fase arterial", contrast_agent=AGENT), ART, HIGH),
    case("es-fase-venosa", series("Fase venosa", contrast_agent=AGENT), PV, HIGH),
    case("es-fase-tardía", series("Fase tardía", contrast_agent=AGENT), DEL, HIGH),
    case("it-diretta", series("Addome diretta"), NON, HIGH),
    case("it-fase-arteriosa", series("Fase arteriosa", contrast_agent=AGENT), ART, HIGH),
    case("it-fase-portale", series("Fase portale", contrast_agent=AGENT), PV, HIGH),
    case("it-fase-tardiva", series("Fase tardiva", contrast_agent=AGENT), DEL, HIGH),
    case("nl-blanco", series("Lever blanco"), NON, HIGH),
    case("nl-arteriële", series("Arteriële fase", contrast_agent=AGENT), ART, HIGH),
    case("nl-portaal-veneus", series("Portaal veneus", contrast_agent=AGENT), PV, HIGH),
    case("nl-evenwichtsfase", series("Evenwichtsfase", contrast_agent=AGENT), DEL, HIGH),
    case("ja-tanjun", series("Tanjun 5mm"), NON, HIGH),
    case("ja-doumyakusou", series("Doumyakusou 1mm", contrast_agent=AGENT), ART, HIGH),
    case("ja-monmyakusou", series("Monmyakusou", contrast_agent=AGENT), PV, HIGH),
    case("ja-heikousou", series("Heikousou", contrast_agent=AGENT), DEL, HIGH),
    # English variants and word boundaries
    case("en-late-art", series("LATE_ART 1.25", contrast_agent=AGENT), ART, HIGH, evidence="'late art'"),
    case("en-AP", series("AP 5mm", contrast_agent=AGENT), ART, HIGH),
    case("en-APPENDIX-is-not-AP", series("APPENDIX 5mm", contrast_agent=AGENT), UNK, LOW),
    case("en-equilibrium", series("Equilibrium phase", contrast_agent=AGENT), DEL, HIGH),
    case("en-nephrographic", series("Nephrographic 100s", contrast_agent=AGENT), DEL, HIGH),
    case("en-pre-TACE-arterial", series("Pre TACE arterial", contrast_agent=AGENT), ART, HIGH),
    case("en-post-TACE-nativ", series("Post TACE nativ"), NON, HIGH),
    case("en-C+-no-phase", series("Abdomen C+"), UNK, LOW, evidence="'c\\\\+'"),
    # Contrast/Bolus Agent Phase (0018,9344)
    case("tag-arterial", series("", contrast_phase="ARTERIAL"), ART, HIGH, evidence="(0018,9344)"),
    case("tag-portal-venous", series("", contrast_phase="PORTAL_VENOUS"), PV, HIGH),
    case("tag-pre-contrast", series("", contrast_phase="PRE_CONTRAST", contrast_agent=AGENT), NON, HIGH),
    case("tag-beats-keyword", series("PV 5mm", contrast_phase="ARTERIAL"), ART, MEDIUM, True),
    case("tag-post-contrast+keyword", series("Delayed", contrast_phase="POST_CONTRAST"), DEL, HIGH),
    case("tag-unmapped-value", series("Venous", contrast_phase="WEIRD", contrast_agent=AGENT), PV, HIGH),
    # Time from Contrast/Bolus Start Time (0018,1042) to acquisition
    case("timing-arterial-35s", timed("101500", "101535"), ART, HIGH, evidence="(0018,1042)"),
    case("timing-portal-70s", timed("101500.000", "101610.5"), PV, HIGH),
    case("timing-delayed-180s", timed("101500", "101800"), DEL, HIGH),
    case("timing-before-injection", timed("101500", "101200"), NON, HIGH),
    case("timing-across-midnight", timed("235950", "000030"), ART, HIGH),
    case("timing-old-colons", timed("10:15:00", "10:16:10"), PV, HIGH),
    case("timing-gap-52s-then-keyword", timed("101500", "101552", "Venous 5mm"), PV, HIGH),
    case("timing-gap-52s-no-keyword", timed("101500", "101552"), UNK, LOW),
    case(
        "timing-beats-keyword", timed("101500", "101540", "PV 5mm", contrast_agent=AGENT), ART, MEDIUM, True
    ),
    case(
        "timing-from-series-time",
        series("Abdomen", contrast_start_time="101500", series_time="101610"),
        PV,
        MEDIUM,
        evidence="Series Time",
    ),
    # Contrast/Bolus Agent (0018,0010) present or absent
    case("agent-absent-alone", series("Abdomen 5.0 B30f"), NON, LOW, evidence="(0018,0010)"),
    case("agent-NONE", series("Abdomen", contrast_agent="NONE"), NON, LOW),
    case("agent-absent-vs-arterial", series("Arterial 1.0"), ART, MEDIUM, True),
    case("agent-present-vs-nativ", series("Nativ 5.0", contrast_agent=AGENT), NON, MEDIUM, True),
    case("agent-present-no-phase", series("Abdomen 5.0", contrast_agent=AGENT), UNK, LOW),
    # Protocol Name, and ties
    case(
        "protocol-only",
        series("Abdomen 1.0", protocol_name="Leber_arteriell", contrast_agent=AGENT),
        ART,
        MEDIUM,
    ),
    case(
        "description-beats-protocol",
        series("PV 5mm", protocol_name="Arterial", contrast_agent=AGENT),
        PV,
        MEDIUM,
        True,
    ),
    case("tie-ART+PV", series("ART+PV fused", contrast_agent=AGENT), UNK, LOW, True),
    case("tie-nativ-arterial", series("Nativ arterial"), UNK, LOW, True),
    case("tie-protocol", series("Abdomen", protocol_name="Art/Delay", contrast_agent=AGENT), UNK, LOW, True),
    case("empty-header", SeriesTags("1.2.3"), NON, LOW),
]


@pytest.mark.parametrize("tags,phase,confidence,conflicted,evidence", TABLE)
def test_classification_table(
    tags: SeriesTags, phase: Phase, confidence: Confidence, conflicted: bool, evidence: str
) -> None:
    decision = classify_series(tags, PhaseRules.default())
    assert (decision.phase, decision.confidence) == (phase, confidence), decision
    assert bool(decision.conflicts) == conflicted, decision
    assert decision.evidence
    assert evidence in decision.evidence, decision


def test_the_table_is_large_enough() -> None:
    assert len(TABLE) >= 40
    assert len({p.values[1] for p in TABLE}) == len(Phase)


def test_conflicts_name_the_disagreeing_evidence() -> None:
    rules = PhaseRules.default()
    decision = classify_series(series("PV 5mm", contrast_phase="ARTERIAL"), rules)
    assert decision.evidence == "Contrast/Bolus Agent Phase (0018,9344) is ARTERIAL"
    assert decision.conflicts == (
        "Series Description 'PV 5mm' matches the portal venous keyword 'pv', which says portal venous",
    )
    absent = classify_series(series("Arterial 1.0"), rules)
    assert absent.conflicts == (
        "Contrast/Bolus Agent (0018,0010) is absent, which alone would mean no contrast",
    )
    tie = classify_series(series("ART+PV fused"), rules)
    assert tie.conflicts == (
        "Series Description 'ART+PV fused' names arterial ('art') and portal venous ('pv')",
    )


# -- the study ------------------------------------------------------------------------------------


def contrast(uid: str, number: int, acquired: str, description: str = "Abdomen 5.0") -> SeriesTags:
    return series(description, uid=uid, series_number=number, acquisition_time=acquired, contrast_agent=AGENT)


def test_unnamed_contrast_series_are_placed_by_acquisition_order() -> None:
    study = [
        series("Abdomen 5.0", uid="n", series_number=2, acquisition_time="100000"),
        contrast("a", 3, "101540"),
        contrast("p", 4, "101620"),
        contrast("d", 5, "102000"),
    ]
    decisions = classify_study(study, PhaseRules.default())
    assert {uid: (d.phase, d.confidence) for uid, d in decisions.items()} == {
        "n": (NON, MEDIUM),
        "a": (ART, LOW),
        "p": (PV, LOW),
        "d": (DEL, LOW),
    }
    assert decisions["p"].evidence.startswith(
        "acquisition order: the 2nd of 3 unnamed contrast acquisition(s) with no series of a stated phase"
    )


def test_agent_absence_counts_for_more_when_the_study_records_agents() -> None:
    study = [series("Abdomen 5.0", uid="n", series_number=2), contrast("a", 3, "101540", "Arterial")]
    decisions = classify_study(study, PhaseRules.default())
    assert decisions["n"].confidence is MEDIUM
    assert decisions["n"].evidence.endswith("series 3 of this study records an agent")
    assert classify_study(study[:1], PhaseRules.default())["n"].confidence is LOW


def test_order_between_named_phases() -> None:
    study = [
        contrast("a", 3, "101540", "Arterial"),
        contrast("x", 4, "101620"),
        contrast("d", 5, "102000", "Delayed"),
    ]
    decision = classify_study(study, PhaseRules.default())["x"]
    assert (decision.phase, decision.confidence) == (PV, LOW)
    assert "after series 3 (arterial) before series 5 (delayed)" in decision.evidence


def test_same_acquisition_takes_the_named_reconstruction_phase() -> None:
    study = [contrast("thick", 3, "101540", "ART 5mm"), contrast("thin", 4, "101543", "1.0 I30f")]
    decision = classify_study(study, PhaseRules.default())["thin"]
    assert (decision.phase, decision.confidence) == (ART, LOW)
    assert decision.evidence.startswith("acquired within 10 s of series 3 (arterial): the same acquisition")


def test_after_the_delayed_phase_only_delayed_remains() -> None:
    study = [contrast("d", 5, "102000", "Delayed"), contrast("x", 6, "102600")]
    assert classify_study(study, PhaseRules.default())["x"].phase is DEL


def test_two_unnamed_acquisitions_are_a_tie_not_a_guess() -> None:
    study = [contrast("x", 3, "101540"), contrast("y", 4, "101620")]
    decisions = classify_study(study, PhaseRules.default())
    for uid in ("x", "y"):
        assert decisions[uid].phase is UNK
        assert decisions[uid].conflicts == (
            "acquisition order leaves 2 unnamed contrast acquisition(s) with no series of a stated phase "
            "in the study for 3 phase(s) (arterial, portal venous, delayed): not guessed",
        )


def test_an_unnamed_acquisition_between_adjacent_phases_is_not_guessed() -> None:
    study = [
        contrast("a", 3, "101540", "Arterial"),
        contrast("x", 4, "101600"),
        contrast("p", 5, "101620", "PV"),
    ]
    decision = classify_study(study, PhaseRules.default())["x"]
    assert decision.phase is UNK
    assert "for 0 phase(s) (no phase): not guessed" in decision.conflicts[0]


def test_named_phases_out_of_order_stop_the_order_step() -> None:
    study = [
        contrast("p", 3, "101540", "PV"),
        contrast("a", 4, "101620", "Arterial"),
        contrast("x", 5, "102000"),
    ]
    decision = classify_study(study, PhaseRules.default())["x"]
    assert decision.phase is UNK
    assert decision.conflicts == (
        "acquisition order not used: series 3 (portal venous) was acquired before series 4 (arterial)",
    )


def test_order_across_midnight() -> None:
    study = [
        contrast("a", 3, "235950", "Arterial"),
        contrast("x", 4, "000040"),
        contrast("d", 5, "000400", "Delayed"),
    ]
    assert classify_study(study, PhaseRules.default())["x"].phase is PV


def test_an_unnamed_series_without_acquisition_time_says_so() -> None:
    study = [contrast("a", 3, "101540", "Arterial"), series("Abdomen", uid="x", contrast_agent=AGENT)]
    decision = classify_study(study, PhaseRules.default())["x"]
    assert decision.phase is UNK
    assert decision.conflicts == ("no acquisition time, so the acquisition order cannot place it",)


def test_study_keeps_what_each_series_decided_alone() -> None:
    rules = PhaseRules.default()
    study = [contrast("a", 3, "101540", "Arterial"), series("Topogram", uid="t", image_type=LOCALIZER)]
    decisions = classify_study(study, rules)
    assert list(decisions) == ["a", "t"]
    assert decisions == {t.series_instance_uid: classify_series(t, rules) for t in study}


# -- headers ----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_tags_from_a_classic_ct_header_tolerate_garbled_values() -> None:
    garbled = {
        Tag(0x00200011): RawDataElement(Tag(0x00200011), "IS", 4, b"abc ", 0, True, True),
        Tag(0x00180050): RawDataElement(Tag(0x00180050), "DS", 6, b"thick ", 0, True, True),
    }
    ds = Dataset(garbled)
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.Modality = "CT"
    ds.SeriesDescription = "Arteriell 1.0 I30f "
    ds.ProtocolName = "Leber"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ContrastBolusAgent = "Ultravist"
    ds.ContrastBolusStartTime = "101500"
    ds.AcquisitionTime = "101535.25"
    ds.SeriesTime = "101600"
    tags = SeriesTags.from_dataset(ds)
    assert tags == SeriesTags(
        series_instance_uid="1.2.826.0.1.3680043.8.498.1",
        series_number=None,
        series_description="Arteriell 1.0 I30f",
        protocol_name="Leber",
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        contrast_agent="Ultravist",
        contrast_phase=None,
        contrast_start_time="101500",
        acquisition_time="101535.25",
        series_time="101600",
        slice_thickness=None,
        modality="CT",
    )
    assert SeriesTags.from_dataset(Dataset()) == SeriesTags("")


def test_tags_from_an_enhanced_ct_header() -> None:
    usage = Dataset()
    usage.ContrastBolusAgentPhase = "PORTAL_VENOUS"
    measures = Dataset()
    measures.SliceThickness = "5.0"
    content = Dataset()
    content.FrameAcquisitionDateTime = "20260101101610.000000+0100"
    shared = Dataset()
    shared.ContrastBolusUsageSequence = DicomSequence([usage])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    frame = Dataset()
    frame.FrameContentSequence = DicomSequence([content])
    agent = Dataset()
    agent.CodeValue = "C-B0300"
    agent.CodeMeaning = "Iopromide"
    ds = Dataset()
    ds.SeriesInstanceUID = "1.2.3"
    ds.SeriesNumber = 7
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.ContrastBolusAgentSequence = DicomSequence([agent])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([frame])
    tags = SeriesTags.from_dataset(ds)
    assert (tags.series_number, tags.contrast_phase, tags.contrast_agent) == (7, "PORTAL_VENOUS", "Iopromide")
    assert (tags.acquisition_time, tags.slice_thickness) == ("101610.000000", 5.0)
    decision = classify_series(tags, PhaseRules.default())
    assert (decision.phase, decision.confidence) == (PV, HIGH)


def test_tags_and_decisions_survive_json() -> None:
    tags = series(
        "ART 5mm", series_number=3, contrast_agent=AGENT, slice_thickness=5.0, acquisition_time="1015"
    )
    assert SeriesTags.from_dict(json.loads(json.dumps(tags.to_dict()))) == tags
    assert SeriesTags.from_dict({"series_instance_uid": "9", "added_later": 1}) == SeriesTags("9")
    with pytest.raises(ValueError, match="series_instance_uid"):
        SeriesTags.from_dict({"series_description": "x"})
    decision = classify_series(series("PV", contrast_phase="ARTERIAL"), PhaseRules.default())
    assert PhaseDecision.from_dict(json.loads(json.dumps(decision.to_dict()))) == decision


@pytest.mark.parametrize(
    "text,seconds",
    [("101535", 36935.0), ("101535.5", 36935.5), ("10:15:35", 36935.0), ("1015", 36900.0), ("10", 36000.0)],
)
def test_dicom_times(text: str, seconds: float) -> None:
    assert seconds_of_day(text) == seconds


@pytest.mark.parametrize("text", ["", "2561", "abc", "10153", None])
def test_unusable_times(text: str | None) -> None:
    assert seconds_of_day(text) is None


# -- rule files -------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site-phases.yaml"
    path.write_text(text)
    return path


def test_a_site_file_overrides_windows_and_extends_keywords(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
windows:
  arterial: [10, 45]
  portal_venous: [45, 100]
keywords:
  arterial: [hap2, "leberarterie"]
  localizer: [planung]
patterns:
  delayed: ['spaet\\d']
drop:
  arterial: [ap]
agent_none_values: [KEINS]
""",
    )
    site, default = PhaseRules.load(path), PhaseRules.default()
    assert site.source == str(path)
    at_12s = timed("101500", "101512")
    assert classify_series(at_12s, default).phase is UNK
    assert classify_series(at_12s, site).phase is ART
    at_52s = timed("101500", "101552")
    assert (classify_series(at_52s, default).phase, classify_series(at_52s, site).phase) == (UNK, PV)
    ap = series("AP 5mm", contrast_agent=AGENT)
    assert (classify_series(ap, default).phase, classify_series(ap, site).phase) == (ART, UNK)
    assert classify_series(series("HAP2 1mm", contrast_agent=AGENT), site).phase is ART
    assert classify_series(series("Leberarterie", contrast_agent=AGENT), site).phase is ART
    assert classify_series(series("Planung"), site).evidence.startswith("a localizer")
    assert classify_series(series("Spaet3", contrast_agent=AGENT), site).phase is DEL
    keins = classify_series(series("Abdomen", contrast_agent="Keins"), site)
    assert (keins.phase, keins.evidence) == (
        NON,
        "Contrast/Bolus Agent (0018,0010) is 'Keins'; nothing else names a phase",
    )
    assert classify_series(series("Arterial", contrast_agent=AGENT), site).phase is ART


def test_an_empty_site_file_is_the_defaults(tmp_path: Path) -> None:
    site = PhaseRules.load(write(tmp_path, "# nothing yet\n"))
    default = PhaseRules.default()
    assert (site.windows, site.keyword_rules) == (default.windows, default.keyword_rules)


@pytest.mark.parametrize(
    "text,message",
    [
        ("windows: [arterial\n", "not valid YAML at line 2"),
        ("- a list\n", "the phase rules must be a mapping"),
        ("windowz: {}\n", "windowz: unknown key"),
        ("windows:\n  arterial: [50, 20]\n", "windows.arterial: from 50 s is not before to 20 s"),
        ("windows:\n  arterial: fast\n", "windows.arterial: must be [from, to]"),
        ("windows:\n  venous: [55, 110]\n", "windows.venous: 'venous' is not one of"),
        (
            "windows:\n  arterial: [15, 60]\n",
            "windows: arterial [15, 60) s overlaps portal_venous [55, 110) s",
        ),
        ("same_acquisition_seconds: soon\n", "same_acquisition_seconds: 'soon' is not a number of seconds"),
        ("keywords:\n  arterial: hap\n", "keywords.arterial: must be a list"),
        ("keywords:\n  arterial: [hap, yes]\n", "keywords.arterial[1]: True is not text"),
        ("keywords:\n  venous: [v]\n", "keywords.venous: 'venous' is not one of"),
        ("patterns:\n  delayed: ['(min']\n", "patterns.delayed[0]: '(min' is not a regular expression"),
        (
            "drop:\n  arterial: [apx]\n",
            "drop.arterial[0]: 'apx' is not a default keyword or pattern of arterial",
        ),
        (
            "contrast_phase_values:\n  VENOUS: localizer\n",
            "contrast_phase_values.VENOUS: 'localizer' is not one of",
        ),
    ],
)
def test_a_bad_site_file_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PhaseRulesError) as raised:
        PhaseRules.load(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


def test_a_missing_site_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(PhaseRulesError, match=f"^{tmp_path / 'none.yaml'}: cannot read"):
        PhaseRules.load(tmp_path / "none.yaml")


def test_the_readme_example_rule_file_works(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Contrast phases", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    site = PhaseRules.load(write(tmp_path, example))
    assert classify_series(series("AP 5mm", contrast_agent=AGENT), site).phase is UNK
    assert classify_series(series("Leber-arteriell 1.0", contrast_agent=AGENT), site).phase is ART
    assert classify_series(timed("101500", "101547"), site).phase is UNK


DERIVED = ("DERIVED", "SECONDARY", "REFORMATTED")
VENDOR_STUDIES = {
    "siemens": [
        ("Topogram 0.6 T20s", {"image_type": LOCALIZER}, UNK),
        ("Nativ 5.0 B30f", {"acquisition_time": "101000"}, NON),
        ("Arteriell 1.0 I30f 3", {"acquisition_time": "101540"}, ART),
        ("Arteriell 5.0 B30f 3", {"acquisition_time": "101541"}, ART),
        ("Portalvenös 5.0 B30f 3", {"acquisition_time": "101620"}, PV),
        ("Spät 5.0 B30f 3", {"acquisition_time": "101900"}, DEL),
        ("Cor 3.0 B30f", {"acquisition_time": "101620", "image_type": DERIVED}, PV),
        ("Patient Protocol", {"modality": "OT", "image_type": ()}, UNK),
    ],
    "ge": [
        ("Scout", {"image_type": LOCALIZER}, UNK),
        ("ABD W/O 5mm", {"acquisition_time": "101000"}, NON),
        ("ART 1.25mm STD", {"acquisition_time": "101540"}, ART),
        ("ART 5mm STD", {"acquisition_time": "101540"}, ART),
        ("PV 5mm STD", {"acquisition_time": "101620"}, PV),
        ("DELAY 3MIN 5mm", {"acquisition_time": "101900"}, DEL),
        ("Coronal MPR", {"acquisition_time": "101620", "image_type": DERIVED}, PV),
        ("Dose Report", {"modality": "SR", "image_type": ()}, UNK),
    ],
    "philips": [
        ("Surview", {"image_type": ("ORIGINAL", "PRIMARY")}, UNK),
        ("Non Contrast 5mm", {"acquisition_time": "101000"}, NON),
        ("Arterial 1mm", {"acquisition_time": "101540"}, ART),
        ("Arterial 5mm", {"acquisition_time": "101540"}, ART),
        ("Portal Venous 5mm", {"acquisition_time": "101620"}, PV),
        ("Delayed 5mm", {"acquisition_time": "101900"}, DEL),
        ("Cor MPR Portal", {"acquisition_time": "101620", "image_type": DERIVED}, PV),
        ("Dose Info", {"modality": "OT", "image_type": ()}, UNK),
    ],
    "canon": [
        ("Scanogram", {"image_type": ("ORIGINAL", "PRIMARY")}, UNK),
        ("Plain 5.0 FC08", {"acquisition_time": "101000"}, NON),
        ("ART 0.5 FC08", {"acquisition_time": "101540"}, ART),
        ("ART 5.0 FC08", {"acquisition_time": "101540"}, ART),
        ("PVP 5.0 FC08", {"acquisition_time": "101620"}, PV),
        ("EQ 5.0 FC08", {"acquisition_time": "101900"}, DEL),
        ("COR MPR", {"acquisition_time": "101620", "image_type": DERIVED}, PV),
        ("Dose Summary", {"modality": "SR", "image_type": ()}, UNK),
    ],
}


@pytest.mark.parametrize("vendor", sorted(VENDOR_STUDIES))
def test_a_liver_study_in_each_vendors_naming(vendor: str) -> None:
    """The acceptance study: localizer, non-contrast, arterial thin and thick, portal venous, delayed, a
    coronal reformat named only by its acquisition, and a dose report."""
    study = [
        series(
            description,
            uid=f"{vendor}.{number}",
            series_number=number,
            contrast_agent=AGENT if phase in (ART, PV, DEL) else None,
            **values,
        )
        for number, (description, values, phase) in enumerate(VENDOR_STUDIES[vendor], start=1)
    ]
    decisions = classify_study(study, PhaseRules.default())
    assert [decisions[t.series_instance_uid].phase for t in study] == [p for *_, p in VENDOR_STUDIES[vendor]]
    assert not any(d.conflicts for d in decisions.values())
