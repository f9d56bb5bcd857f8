"""Observation codes -> schema features, and unit conversion to the canonical unit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from hl7_clinical.definitions import Definitions


class CodeMapError(ValueError):
    """The code or local-code mapping file is unusable; the message names the entry."""


def normalise_unit(unit: str | None) -> str:
    """Compare units the way labs write them: µ/micro as u, ^ as *, case and spaces ignored."""
    text = (unit or "").strip().replace("µ", "u").replace("μ", "u").replace("^", "*").replace(" ", "")
    text = re.sub(r"^x10\*?e?(\d+)", r"10*\1", text, flags=re.IGNORECASE)
    return text.lower()


@dataclass(frozen=True)
class Conversion:
    factor: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        return value * self.factor + self.offset


@dataclass(frozen=True)
class CodeMapping:
    feature: str
    canonical: str
    units: dict[str, Conversion]

    def convert(self, value: float, unit: str | None) -> float:
        conversion = self.units.get(normalise_unit(unit))
        if conversion is None:
            known = ", ".join(sorted({k or "(none)" for k in self.units}))
            raise CodeMapError(
                f"unit {unit or '(none)'!r} cannot be converted to {self.canonical} (known: {known})"
            )
        return conversion.apply(value)


class CodeMap:
    """LOINC (and local codes mapped to LOINC) -> feature and unit conversions."""

    def __init__(self, by_code: dict[str, CodeMapping], local_to_loinc: dict[tuple[str, str], str]) -> None:
        self._by_code = by_code
        self._local = local_to_loinc

    @classmethod
    def load(cls, definitions: Definitions, local_codes: Path | None = None) -> CodeMap:
        text = resources.files("hl7_clinical").joinpath("data/observations.yaml").read_text()
        data = yaml.safe_load(text)
        by_code: dict[str, CodeMapping] = {}
        for index, item in enumerate(data["mappings"]):
            feature = item["feature"]
            definition = definitions.get(feature)
            if definition is None:
                continue
            if definition.unit != item["canonical"]:
                raise CodeMapError(
                    f"mapping {index} for {feature!r}: canonical unit {item['canonical']!r} "
                    f"differs from the schema's {definition.unit!r}"
                )
            units = {normalise_unit(u): _conversion(c, feature) for u, c in item["units"].items()}
            mapping = CodeMapping(feature, item["canonical"], units)
            for code in item["codes"]:
                by_code[code.upper()] = mapping
        return cls(by_code, _read_local_codes(local_codes) if local_codes else {})

    def lookup(self, system: str, code: str) -> CodeMapping | None:
        system, code = system.strip().upper(), code.strip()
        if system in ("LN", "LOINC", "2.16.840.1.113883.6.1"):
            return self._by_code.get(f"LN:{code}".upper())
        loinc = self._local.get((system, code.upper()))
        return self._by_code.get(f"LN:{loinc}".upper()) if loinc else None

    def features(self) -> set[str]:
        return {m.feature for m in self._by_code.values()}

    def loinc_columns(self) -> dict[str, CodeMapping]:
        """LOINC code -> mapping, for CSV columns named by LOINC."""
        return {code.split(":", 1)[1]: m for code, m in self._by_code.items() if code.startswith("LN:")}


def _conversion(raw: object, feature: str) -> Conversion:
    if isinstance(raw, (int, float)):
        return Conversion(float(raw))
    if isinstance(raw, list) and len(raw) == 2:
        return Conversion(float(raw[0]), float(raw[1]))
    raise CodeMapError(f"feature {feature!r}: conversion {raw!r} is not a factor or [factor, offset]")


def _read_local_codes(path: Path) -> dict[tuple[str, str], str]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
        return {
            (str(item["system"]).strip().upper(), str(item["code"]).strip().upper()): str(
                item["loinc"]
            ).strip()
            for item in data.get("local_codes", [])
        }
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise CodeMapError(f"{path}: unusable local code mapping ({exc.__class__.__name__}: {exc})") from None
