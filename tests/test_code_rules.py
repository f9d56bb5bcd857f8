"""Rules of the codebase that no linter states: a silenced type error always says why."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGES = ("tace", "listener", "hl7_clinical", "model", "worker")
ROOT = Path(__file__).resolve().parents[1]
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<rest>.*)$")
WITH_REASON = re.compile(r"^\[[a-z-]+(,\s*[a-z-]+)*\]\s+#\s*\S.{8,}")


def test_every_type_ignore_names_its_code_and_gives_a_reason() -> None:
    bare = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                match = IGNORE.search(line)
                if match and not WITH_REASON.match(match.group("rest")):
                    bare.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bare, "type: ignore without [code] and a reason:\n" + "\n".join(bare)
