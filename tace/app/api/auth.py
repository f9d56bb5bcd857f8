"""Who may call the admin API, and whether they may see patient identifiers.

Two roles: ``operator`` (jobs, series, associations, lab status by patient hash;
never a name or an ID) and ``phi`` (the same, plus patient identifiers). The
operator token is generated on first start into the data dir unless configured;
the PHI token exists only when an administrator configures one.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

from tace.settings import Settings
from tace.storage import read_or_create_secret

OPERATOR = "operator"
PHI = "phi"
_TOKEN_FILE = "api-token"


@dataclass(frozen=True)
class Principal:
    role: str

    @property
    def sees_identifiers(self) -> bool:
        return self.role == PHI


def operator_token(settings: Settings) -> str:
    if settings.api_token is not None:
        return settings.api_token.get_secret_value()
    return read_or_create_secret(Path(settings.data_dir) / _TOKEN_FILE, lambda: secrets.token_urlsafe(32))


class TokenCheck:
    def __init__(self, settings: Settings) -> None:
        self._operator = operator_token(settings)
        self._phi = settings.api_phi_token.get_secret_value() if settings.api_phi_token else None

    def token_of(self, role: str) -> str | None:
        """The token that grants ``role`` now (sessions opened with an older one end)."""
        return {OPERATOR: self._operator, PHI: self._phi}.get(role)

    def principal(self, token: str | None) -> Principal | None:
        if not token:
            return None
        if self._phi and hmac.compare_digest(token.encode(), self._phi.encode()):
            return Principal(PHI)
        if hmac.compare_digest(token.encode(), self._operator.encode()):
            return Principal(OPERATOR)
        return None
