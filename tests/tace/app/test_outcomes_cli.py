"""`tace outcomes import|unlinked|link`, `tace model performance` and `tace cohort export` -> `tace train`."""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from model.checkpoint import read_meta
from tace import phi
from tace.app.synthetic_ct import SeriesSpec, write_series
from tace.db import Job, Series, Study
from tests.support.outcomes import add_prediction
from tests.support.processes import tace_env


def tace(*args: str, **settings: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tace", *args],
        env=tace_env(**settings),
        capture_output=True,
        text=True,
        timeout=600,
    )


def output(*args: str, **settings: object) -> str:
    result = tace(*args, **settings)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def keyed(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phi, "_hash_key", None)
    phi.load_hash_key(data_dir)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_import_unlinked_link_and_performance(
    tmp_path: Path, data_dir: Path, sqlite_engine: Engine, keyed: None
) -> None:
    first = add_prediction(sqlite_engine, patient_id="CLI1", study_date=dt.date(2026, 1, 2), probability=0.8)
    add_prediction(sqlite_engine, patient_id="CLI2", study_date=dt.date(2025, 12, 20), probability=0.6)
    chosen = add_prediction(sqlite_engine, patient_id="CLI2", study_date=dt.date(2026, 1, 5), probability=0.2)
    csv_file = _write(
        tmp_path / "outcomes.csv",
        "patient_id,assessment_date,response\nCLI1,2026-03-01,SD\nCLI2,2026-03-10,PD\nCLI3,2026-03-10,ZZ\n",
    )
    imported = tace("outcomes", "import", str(csv_file), data_dir=data_dir)
    assert imported.returncode == 1
    assert (
        imported.stderr.strip()
        == "outcomes.csv: line 4: response: mRECIST response 'ZZ' is not CR, PR, SD or PD"
    )
    assert imported.stdout.strip() == (
        "2 of 3 rows imported: 2 outcomes added, 0 changed, 0 unchanged; 1 rows refused"
    )

    unlinked = json.loads(output("outcomes", "unlinked", "--json", data_dir=data_dir))
    assert [(u["link_state"], u["patient_hash"]) for u in unlinked] == [
        ("ambiguous", phi.patient_hash("CLI2", None))
    ]
    table = output("outcomes", "unlinked", data_dir=data_dir)
    assert "CLI2" not in table and phi.patient_hash("CLI2", None) in table

    wrong = tace("outcomes", "link", str(unlinked[0]["id"]), str(first), data_dir=data_dir)
    assert wrong.returncode == 2 and "another patient's" in wrong.stderr
    linked = tace("outcomes", "link", str(unlinked[0]["id"]), str(chosen), data_dir=data_dir)
    assert linked.returncode == 0, linked.stderr
    assert tace("outcomes", "unlinked", data_dir=data_dir).stdout.strip() == "every outcome is linked"

    shown = json.loads(output("model", "performance", "--json", data_dir=data_dir))
    (version,) = shown["versions"]
    assert (version["model_version"], version["outcomes"], version["progressions"]) == ("site-1", 2, 1)
    assert version["auc"] is None
    assert version["notes"] == ["too few linked outcomes: 2 of the 10 needed (TACE_PERFORMANCE_MIN_OUTCOMES)"]
    enough = json.loads(
        output("model", "performance", "--json", data_dir=data_dir, performance_min_outcomes=2)
    )
    # the control case scores 0.8, the progression 0.2: AUC 1; at 0.5 both decided right
    (version,) = enough["versions"]
    assert version["auc"]["value"] == 1.0 and (version["sensitivity"], version["specificity"]) == (1.0, 1.0)
    text = tace("model", "performance", data_dir=data_dir, performance_min_outcomes=2)
    assert "model site-1 (all): 2 linked outcomes, 1 progressive" in text.stdout
    assert "sensitivity 1.000, specificity 1.000" in text.stdout
    bad = tace("model", "performance", "--window", "7d", data_dir=data_dir)
    assert bad.returncode == 2 and "use 90d or all" in bad.stderr


def test_cohort_export_then_train_runs(
    tmp_path: Path, data_dir: Path, sqlite_engine: Engine, keyed: None
) -> None:
    rows = []
    for index in range(8):
        progression = index % 2 == 0
        job = add_prediction(
            sqlite_engine,
            patient_id=f"COH{index}",
            study_date=dt.date(2026, 1, 5),
            probability=0.3 if progression else 0.7,
            features={
                "albumin": {"value": 3.2 if progression else 4.1, "unit": "g/dL"},
                "afp": {"value": 900.0 if progression else 20.0, "unit": "ng/mL"},
                "platelets": None,
            },
        )
        with sqlite_engine.connect() as connection:
            study_uid, series_uid = connection.execute(
                sa.select(Study.__table__.c.study_instance_uid, Series.__table__.c.series_instance_uid)
                .select_from(
                    Job.__table__.join(
                        Series.__table__, Series.__table__.c.id == Job.__table__.c.series_id
                    ).join(Study.__table__, Study.__table__.c.id == Series.__table__.c.study_id)
                )
                .where(Job.__table__.c.id == job)
            ).one()
        write_series(
            SeriesSpec(
                slices=4,
                rows=32,
                columns=32,
                patient_id=f"COH{index}",
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                seed=index,
            ),
            data_dir / "dicom" / study_uid / series_uid,
        )
        rows.append(f"COH{index},2026-03-01,{'PD' if progression else 'PR'}")
    csv_file = _write(tmp_path / "o.csv", "patient_id,assessment_date,response\n" + "\n".join(rows) + "\n")
    assert tace("outcomes", "import", str(csv_file), data_dir=data_dir).returncode == 0

    out = tmp_path / "cohort"
    exported = tace("cohort", "export", str(out), data_dir=data_dir)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith("8 cases written to")
    with (out / "manifest.csv").open() as handle:
        manifest = list(csv.DictReader(handle))
    assert [m["label"] for m in manifest] == ["PD", "PR"] * 4
    assert manifest[0]["albumin"] == "3.2" and manifest[1]["afp"] == "20" and manifest[0]["platelets"] == ""
    assert all(Path(m["volume"]).is_dir() for m in manifest)
    assert not any(
        f"COH{i}" in (out / name).read_text() for i in range(8) for name in ("manifest.csv", "provenance.csv")
    )

    trained = tace(
        "train",
        str(out / "manifest.csv"),
        "--out",
        str(tmp_path / "run"),
        "--folds",
        "2",
        "--inner-folds",
        "2",
        "--epochs",
        "2",
        "--min-epochs",
        "1",
        "--patience",
        "1",
        "--image-size",
        "32",
        "--max-slices",
        "4",
        "--batch-size",
        "4",
        "--device",
        "cpu",
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    line = next(x for x in trained.stdout.splitlines() if x.startswith("checkpoint: "))
    meta = read_meta(Path(line.removeprefix("checkpoint: ").split(" (sha256")[0]))
    assert meta.training["cases"] == 8
    # the checkpoint keeps the training distribution that live drift is measured against
    assert meta.training_distribution is not None and meta.training_distribution["cases"] == 8
    assert meta.training_distribution["features"]["albumin"]["missing"] == 0.0
    assert meta.training_distribution["features"]["platelets"]["missing"] == 1.0
    # and the image statistics of the series it read (4 slices each), for image drift
    images = meta.training_distribution["images"]
    assert images["cases"] == 8 and images["statistics"]["slices"]["median"] == 4.0
