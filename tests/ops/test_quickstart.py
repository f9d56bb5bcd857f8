"""The README's quick start, run as written in a clean folder, ends with an SR with the required labs.

The commands are read from README.md, so the test fails when the README drifts.
Three things differ from a person at a terminal, each checked against its text:
`make run` is `tace up` (the Makefile says so) started by the test; `source
.venv/bin/activate` becomes the venv's bin first on PATH; and the default ports
are swapped for free ones, since other tests may hold them. HOME is a temporary
folder, so the default data dir and the demo model cache start empty; the cache
is seeded with the session's small demo checkpoint, as a second gateway on the
same machine would find it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.support.processes import REPO_ROOT, tace_env
from tests.support.services import wait_until
from tests.support.up import Up

pytestmark = pytest.mark.slow

README = REPO_ROOT / "README.md"
REQUIRED = ("albumin", "total_bilirubin", "afp", "platelets", "inr", "creatinine")


def _blocks_after(heading: str) -> Iterator[list[str]]:
    text = README.read_text()
    start = text.index(heading)
    for block in re.findall(r"```sh\n(.*?)```", text[start:], flags=re.S):
        yield [line.strip() for line in block.splitlines() if line.strip()]


def _content_texts(dataset: pydicom.Dataset) -> Iterator[tuple[str, str]]:
    for item in dataset.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "TEXT":
            yield name, str(item.TextValue)
        yield from _content_texts(item)


def test_the_readme_quick_start_ends_with_an_sr_with_the_required_labs(
    tmp_path: Path, demo_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_block = next(_blocks_after("## Quick start"))
    assert start_block[0].split()[:2] == ["make", "run"]
    assert "\t$(BIN)/tace up" in (REPO_ROOT / "Makefile").read_text().split("\nrun:", 1)[1].split("\n\n")[0]
    commands = next(_blocks_after("### Your first SR"))
    assert commands[0] == "source .venv/bin/activate"

    folder = tmp_path / "quickstart"
    folder.mkdir()
    home = tmp_path / "home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    from worker.context import demo_cache_path

    cache = demo_cache_path()
    cache.parent.mkdir(parents=True)
    shutil.copyfile(demo_checkpoint, cache)

    data_dir = home / ".local/share/tace"
    up = Up(data_dir, tmp_path / "up.out", {})
    env = {
        **tace_env(dicom_port=up.dicom_port, hl7_port=up.hl7_port, api_port=up.api_port),
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
    }
    env.pop("XDG_CACHE_HOME", None)
    up.launch(env, folder)
    try:
        banner = up.output.read_text()
        assert f"first start: copying the demo model from {cache}" in banner
        assert f"data     {data_dir}" in banner and "DEMO model" in banner

        outputs = {}
        for line in commands[1:]:
            command = line.replace("localhost 11112", f"localhost {up.dicom_port}")
            assert command != line or "11112" not in line

            def run(command: str = command) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    ["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True, timeout=300
                )

            if line.startswith("tace jobs list"):
                result = wait_until(
                    lambda run=run: (r := run()).returncode == 0 and " no_destination " in r.stdout and r,
                    300,
                    interval=2,
                    what=f"`{line}` to show the job predicted (no destination configured)",
                )
            else:
                result = run()
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            outputs[line] = result.stdout
        assert any(": AA" in out for line, out in outputs.items() if line.startswith("tace hl7 send"))

        shown = subprocess.run(
            [sys.executable, "-m", "tace", "jobs", "show", "1", "--json"],
            env=env,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
        )
        job = json.loads(shown.stdout)
        assert job["job"]["state"] == "no_destination"
        prediction = job["prediction"]
        assert prediction["demo_model"] is True
        assert not set(REQUIRED) & set(prediction["missing_features"]), prediction["missing_features"]
        sr = pydicom.dcmread(data_dir / prediction["sr_path"])
        texts = dict(_content_texts(sr))
        missing_text = " ".join(v for k, v in texts.items() if "missing" in k.lower()).lower()
        for name in REQUIRED:
            assert name not in missing_text and name.replace("_", " ") not in missing_text, missing_text
        assert sr.Modality == "SR" and sr.PatientID == "EXAMPLE1"
        assert [p.name for p in folder.iterdir()] == [commands[1].split()[2]], "files outside the example"
    finally:
        up.close()
