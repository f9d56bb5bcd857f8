"""Runtime configuration.

Every process of the gateway (listener, HL7 feed, relay, workers, API) reads the
same settings so that a scale-out deployment is configured in one place: the
environment (``TACE_`` prefix) wins over a TOML file, which wins over the
embedded defaults that let ``tace up`` run on a laptop with no server installed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "TACE_CONFIG"
NOT_SETTINGS = frozenset({CONFIG_ENV, "TACE_REQUIRE_SERVICES"})
"""``TACE_`` variables that are not settings: the config file, and the test suite's switch."""
_config_file: ContextVar[Path | None] = ContextVar("tace_config_file", default=None)
_URL_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")
"""Credentials written into a URL; an error line that echoes the value shows them as ``***``."""
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")

Port = Annotated[int, Field(ge=1, le=65535)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(Exception):
    """A configuration problem, phrased as one line an operator can act on."""


def _check_ae_title(value: str, what: str) -> str:
    title = value.strip()
    if not title or not _AE_TITLE.match(title):
        raise ValueError(f"{what} {value!r} is not a DICOM AE title (1-16 printable characters)")
    return title


class Destination(BaseModel, frozen=True):
    """A DICOM peer that receives our SRs, written ``AE@host:port``."""

    ae_title: str
    host: str
    port: Port

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = re.fullmatch(r"\s*([^@]+)@(\[[^\]]+\]|[^:@\s]+):(\d+)\s*", text)
        if not match:
            raise ValueError(
                f"destination {text!r} is not of the form AE@host:port or an http(s):// DICOMweb URL"
            )
        ae, host, port = match.groups()
        return cls(
            ae_title=_check_ae_title(ae, "destination AE title"),
            host=host.strip("[]"),
            port=int(port),
        )

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


DESTINATION_NAME_MAX = 128
"""Delivery rows name their destination in a column of this width."""


def _check_dicomweb_url(text: str) -> str:
    """The service's base URL, as its name in deliveries: no credentials, no query, no trailing slash."""
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"destination {text!r} is not an http:// or https:// DICOMweb base URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"destination {parts.scheme}://{parts.hostname}{parts.path} carries credentials in the URL; "
            "use TACE_DICOMWEB_TOKEN, TACE_DICOMWEB_USERNAME/PASSWORD or a token_file"
        )
    if ":" in parts.hostname:
        raise ValueError(
            f"destination {url!r}: dicomweb-client takes no IPv6 address literal; use a host name"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"destination {url!r}: a DICOMweb base URL has no query or fragment")
    if len(url) > DESTINATION_NAME_MAX:
        raise ValueError(f"destination {url!r} is longer than {DESTINATION_NAME_MAX} characters")
    return url


class DicomwebDestination(BaseModel, frozen=True, extra="forbid"):
    """A DICOMweb service that receives our SRs by STOW-RS, written as its base URL.

    The per-destination options (TOML tables or JSON objects only) override the
    ``TACE_DICOMWEB_*`` settings, so two services can hold different credentials.
    Secrets are named by file, never written in the destination list, which is
    shown in logs and on the admin page.
    """

    url: str
    token_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None

    @classmethod
    def parse(cls, text: str) -> DicomwebDestination:
        return cls(url=_check_dicomweb_url(text))

    @field_validator("url", mode="after")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        return _check_dicomweb_url(value)

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> DicomwebDestination:
        if self.token_file is not None and self.username is not None:
            raise ValueError(
                f"destination {self.url}: give token_file (bearer) or username (basic), not both"
            )
        if self.password_file is not None and self.username is None:
            raise ValueError(f"destination {self.url}: password_file needs a username")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError(f"destination {self.url}: tls_key needs tls_cert")
        return self

    def __str__(self) -> str:
        return self.url


def _destination_kind(value: Any) -> str:
    if isinstance(value, DicomwebDestination) or (isinstance(value, dict) and "url" in value):
        return "dicomweb"
    return "dimse"


AnyDestination = Annotated[
    Annotated[Destination, Tag("dimse")] | Annotated[DicomwebDestination, Tag("dicomweb")],
    Discriminator(_destination_kind),
]
"""A DICOM peer (C-STORE) or a DICOMweb service (STOW-RS); ``str()`` names it in deliveries."""


def parse_destination(text: str) -> Destination | DicomwebDestination:
    if text.strip().lower().startswith(("http://", "https://")):
        return DicomwebDestination.parse(text)
    return Destination.parse(text)


class Hl7Peer(BaseModel, frozen=True):
    """An MLLP receiver of our results, written ``host:port``."""

    host: str
    port: Port

    @classmethod
    def parse(cls, text: str) -> Hl7Peer:
        match = re.fullmatch(r"\s*(\[[^\]]+\]|[^:@\s\[\]]+):(\d+)\s*", text)
        if not match:
            raise ValueError(f"{text!r} is not of the form host:port")
        host, port = match.groups()
        return cls(host=host.strip("[]"), port=int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def default_data_dir() -> Path:
    """One place whatever the working directory: ``$XDG_DATA_HOME/tace``, else ``~/.local/share/tace``.

    Services deployed by systemd or compose set ``TACE_DATA_DIR`` (``/var/lib/tace``).
    """
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tace"


def _split_list(value: Any) -> Any:
    """Lists come from the environment as comma-separated text."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """The ``TACE_*`` settings; field names are the variable names without the prefix."""

    model_config = SettingsConfigDict(
        env_prefix="TACE_",
        extra="forbid",
        frozen=True,
        validate_default=True,
        env_ignore_empty=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    broker_url: str = "filesystem://"

    ae_title: str = "TACE"
    dicom_port: Port = 11112
    allowed_calling_aets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    destinations: Annotated[list[AnyDestination], NoDecode] = Field(default_factory=list)
    hl7_port: Port = 2575
    api_port: Port = 8080
    bind_host: str = "0.0.0.0"
    """Address of the DICOM and HL7 listeners: scanners, PACS and lab systems connect from the network."""
    api_bind_host: str = "127.0.0.1"
    """Address of the admin page and API: this machine only unless an administrator opens it."""

    dicom_max_associations: int = Field(default=16, ge=1, le=1000)
    dicom_max_pdu: int = Field(default=1048576, ge=0)
    dicom_acse_timeout: float = Field(default=30.0, gt=0)
    dicom_dimse_timeout: float = Field(default=60.0, gt=0)
    dicom_network_timeout: float = Field(default=120.0, gt=0)
    dicom_max_instance_bytes: int = Field(default=2 * 1024**3, ge=1024**2)
    allowed_peer_networks: Annotated[list[Network], NoDecode] = Field(default_factory=list)
    dicom_tls_cert: Path | None = None
    dicom_tls_key: Path | None = None
    dicom_tls_ca: Path | None = None
    dicom_tls_require_client_cert: bool = False
    stow_port: Port = 8042
    """STOW-RS (DICOMweb store) on ``bind_host``; served when ``stow_enabled``."""
    stow_token: SecretStr | None = None
    stow_max_part_bytes: int | None = Field(default=None, ge=1024)
    """Largest instance one multipart part may carry; unset: ``dicom_max_instance_bytes``."""
    stow_tls_cert: Path | None = None
    stow_tls_key: Path | None = None
    stow_tls_ca: Path | None = None
    stow_tls_require_client_cert: bool = False

    @property
    def stow_client_certificates(self) -> bool:
        """Senders prove who they are by a certificate from our CA, which may replace the token."""
        return bool(
            self.stow_tls_require_client_cert
            and self.stow_tls_ca
            and self.stow_tls_cert
            and self.stow_tls_key
        )

    @property
    def stow_enabled(self) -> bool:
        """STOW-RS runs only with a credential for its senders: a token or client certificates."""
        return self.stow_token is not None or self.stow_client_certificates

    listener_processes: int = Field(default=1, ge=1, le=64)
    min_free_bytes: int = Field(default=2 * 1024**3, ge=0)
    min_slices: int = Field(default=16, ge=1)
    series_description_pattern: str | None = None
    phase_rules: Path | None = None
    """Site YAML applied over the default contrast-phase rules (listener/phase_rules.yaml)."""

    default_issuer: str | None = None
    hl7_patient_id_type: str | None = "MR"
    hl7_assigning_authority: str | None = None
    hl7_facility_issuers: dict[str, str] = Field(default_factory=dict)
    hl7_authority_issuers: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    hl7_refuse_processing_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    hl7_max_message_bytes: int = Field(default=1024 * 1024, ge=1024)
    hl7_idle_timeout_seconds: float = Field(default=300.0, gt=0)
    hl7_message_timeout_seconds: float = Field(default=60.0, gt=0)
    hl7_local_codes: Path | None = None
    hl7_tls_cert: Path | None = None
    hl7_tls_key: Path | None = None
    hl7_tls_ca: Path | None = None
    hl7_tls_require_client_cert: bool = False
    feature_schema: Path | None = None

    labs_deadline_seconds: float = Field(default=3600.0, ge=0)
    labs_retry_seconds: float = Field(default=60.0, gt=0)
    labs_missing_policy: Literal["impute", "fail"] = "impute"
    required_features: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["albumin", "total_bilirubin", "afp", "platelets", "inr", "creatinine"]
    )
    send_retry_max_seconds: float = Field(default=600.0, gt=0)
    send_max_attempts: int = Field(default=100, ge=1)
    """Attempts per destination before a transient refusal fails the job (about 16 h at the backoff cap)."""
    dicom_send_timeout: float = Field(default=30.0, gt=0)
    """Seconds a C-STORE association or a STOW-RS request may stay silent before the send is retried."""
    dicomweb_token: SecretStr | None = None
    """Bearer token for DICOMweb destinations without credentials of their own."""
    dicomweb_username: str | None = None
    dicomweb_password: SecretStr | None = None
    dicomweb_tls_cert: Path | None = None
    """Client certificate (PEM) presented to HTTPS DICOMweb destinations."""
    dicomweb_tls_key: Path | None = None
    dicomweb_tls_ca: Path | None = None
    """CA bundle that verifies HTTPS DICOMweb destinations; unset: the system's trust store."""
    worker_decode_threads: int = Field(default=4, ge=1, le=64)
    worker_decode_processes: int = Field(default=0, ge=0, le=256)
    worker_prefetch: Literal["auto", "on", "off"] = "auto"
    """Read the next queued job's series while the model runs (auto: when the model runs on a GPU)."""

    outcome_obx_code: str = "TACE-MRECIST"
    """OBX-3 code (identifier or alternate identifier) whose CWE value is the mRECIST response."""
    outcome_tace_date_obx_code: str = "TACE-PROCDATE"
    """OBX-3 code whose DT/TS value is the date of the TACE procedure the response follows."""
    outcome_link_min_weeks: int = Field(default=4, ge=0)
    outcome_link_max_weeks: int = Field(default=16, ge=1)
    """Without a TACE date, the predicted study lies this many weeks before the assessment."""
    performance_min_outcomes: int = Field(default=10, ge=2)
    """Linked outcomes a model version needs before its AUC and calibration are shown."""

    model_checkpoint: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile of the backbone at worker start (auto: on CUDA only; compiling takes tens of seconds)."""

    series_quiet_seconds: float = Field(default=30.0, gt=0)
    release_grace_seconds: float = Field(default=5.0, ge=0)
    study_quiet_seconds: float = Field(default=600.0, gt=0)
    """How long a study may wait for a phase the model needs before it is recorded ineligible."""
    job_stall_seconds: float = Field(default=300.0, gt=0)
    relay_interval_seconds: float = Field(default=1.0, gt=0)
    visibility_timeout_seconds: int = Field(default=7200, gt=0)

    api_token: SecretStr | None = None
    api_phi_token: SecretStr | None = None

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    performance_alert_auc_lower: float = Field(default=0.6, ge=0, le=1)
    """A model version whose live AUC's 95% CI lower bound is under this is flagged (log and banner)."""
    performance_alert_min_outcomes: int = Field(default=30, ge=2)
    """Linked outcomes a version needs before the AUC alert can fire (fewer give too wide a CI)."""

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @field_validator("ae_title", mode="after")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        return _check_ae_title(value, "AE title")

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _split_aets(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_calling_aets", mode="after")
    @classmethod
    def _valid_aets(cls, value: list[str]) -> list[str]:
        return [_check_ae_title(v, "calling AE title") for v in value]

    @field_validator("required_features", mode="before")
    @classmethod
    def _split_features(cls, value: Any) -> Any:
        items = _split_list(value)
        if items == ["none"]:
            return []
        return items

    @field_validator("hl7_refuse_processing_ids", mode="before")
    @classmethod
    def _split_processing_ids(cls, value: Any) -> Any:
        items = _split_list(value)
        return [str(v).upper() for v in items] if isinstance(items, list) else items

    @field_validator("hl7_authority_issuers", mode="before")
    @classmethod
    def _parse_authority_issuers(cls, value: Any) -> Any:
        """``HOSP=,LAB2=HOSP`` (an empty issuer: the PACS sends none), or a JSON object."""
        if not isinstance(value, str):
            return value
        if value.strip().startswith("{"):
            return json.loads(value)
        mapping: dict[str, str] = {}
        for item in _split_list(value):
            authority, equals, issuer = item.partition("=")
            if not equals or not authority.strip():
                raise ValueError(f"{item!r} is not AUTHORITY=ISSUER (ISSUER may be empty)")
            mapping[authority.strip()] = issuer.strip()
        return mapping

    @field_validator("allowed_peer_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: Any) -> Any:
        items = _split_list(value)
        if isinstance(items, list):
            return [ipaddress.ip_network(v, strict=False) if isinstance(v, str) else v for v in items]
        return items

    @field_validator("series_description_pattern", mode="after")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"series description pattern {value!r} is not a regular expression: {exc}"
                ) from None
        return value or None

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        """Comma-separated ``AE@host:port`` and DICOMweb URLs, or a JSON list (per-destination options)."""
        if isinstance(value, str) and value.strip().startswith("["):
            value = json.loads(value)
        items = _split_list(value)
        if isinstance(items, list):
            return [parse_destination(v) if isinstance(v, str) else v for v in items]
        return items

    @field_validator("dicomweb_username", mode="after")
    @classmethod
    def _bearer_or_basic(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("dicomweb_token") is not None:
            raise ValueError("set TACE_DICOMWEB_TOKEN (bearer) or TACE_DICOMWEB_USERNAME (basic), not both")
        return value

    @field_validator("dicomweb_password", mode="after")
    @classmethod
    def _password_needs_user(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and info.data.get("dicomweb_username") is None:
            raise ValueError("needs TACE_DICOMWEB_USERNAME")
        return value

    @field_validator("dicomweb_tls_key", mode="after")
    @classmethod
    def _key_needs_cert(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("dicomweb_tls_cert") is None:
            raise ValueError("needs TACE_DICOMWEB_TLS_CERT")
        return value

    @field_validator("outcome_link_max_weeks", mode="after")
    @classmethod
    def _window_after_minimum(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("outcome_link_min_weeks", 0)
        if value <= low:
            raise ValueError(f"must be more than outcome_link_min_weeks ({low})")
        return value

    @field_validator("database_url", mode="after")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError(f"database URL {value!r} must start with sqlite:// or postgresql://")
        return value

    @field_validator("broker_url", mode="after")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        if not value.startswith(("filesystem://", "redis://", "rediss://", "memory://")):
            raise ValueError(f"broker URL {value!r} must be filesystem://, redis:// or rediss://")
        return value

    @cached_property
    def effective_database_url(self) -> str:
        """SQLite inside the data dir unless a server is configured."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'tace.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    # Results to the EHR (HL7 v2 ORU^R01 over MLLP, FHIR R4 DiagnosticReport), beside the SR.
    hl7_result_destination: Hl7Peer | None = None
    """``host:port`` of an MLLP receiver that gets one ORU^R01 per prediction; unset: none is sent."""
    hl7_result_sending_application: str = "TACE"
    hl7_result_sending_facility: str = ""
    hl7_result_receiving_application: str = ""
    hl7_result_receiving_facility: str = ""
    hl7_result_timeout_seconds: float = Field(default=30.0, gt=0)
    """Connecting, and waiting for the ACK, before the attempt counts as transient."""
    hl7_result_tls: bool = False
    """MLLP over TLS to the result destination, verified against ``hl7_result_tls_ca`` or the system CAs."""
    hl7_result_tls_ca: Path | None = None
    hl7_result_tls_cert: Path | None = None
    hl7_result_tls_key: Path | None = None
    fhir_base_url: str | None = None
    """FHIR R4 server that gets one DiagnosticReport per prediction; unset: none is sent."""
    fhir_token: SecretStr | None = None
    fhir_token_file: Path | None = None
    """A file holding the bearer token (read at each delivery, so it can be rotated)."""
    fhir_timeout_seconds: float = Field(default=30.0, gt=0)
    fhir_tls_ca: Path | None = None
    """CA bundle that verifies an https:// FHIR server; unset: the system's trust store."""
    fhir_tls_cert: Path | None = None
    fhir_tls_key: Path | None = None

    @field_validator("hl7_result_destination", mode="before")
    @classmethod
    def _parse_hl7_peer(cls, value: Any) -> Any:
        return Hl7Peer.parse(value) if isinstance(value, str) else value

    @field_validator(
        "hl7_result_sending_application",
        "hl7_result_sending_facility",
        "hl7_result_receiving_application",
        "hl7_result_receiving_facility",
        mode="after",
    )
    @classmethod
    def _hl7_name(cls, value: str) -> str:
        if any(c in value for c in "|^~\\&\r\n") or len(value) > 180:
            raise ValueError("must be at most 180 characters without HL7 delimiters (| ^ ~ \\ &)")
        return value

    @field_validator("fhir_base_url", mode="after")
    @classmethod
    def _fhir_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", value):
            raise ValueError(
                "must be an http:// or https:// base URL without credentials, query or fragment "
                "(the token goes in TACE_FHIR_TOKEN or TACE_FHIR_TOKEN_FILE)"
            )
        if len(value) > 120:
            raise ValueError("must be at most 120 characters (it names the destination of each delivery)")
        return value.rstrip("/")

    @field_validator("fhir_token_file", mode="after")
    @classmethod
    def _one_fhir_token(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        if info.data.get("fhir_token") is not None:
            raise ValueError("set TACE_FHIR_TOKEN or TACE_FHIR_TOKEN_FILE, not both")
        if not value.is_file():
            raise ValueError("no such file")
        return value

    @field_validator(
        "hl7_result_tls_ca",
        "hl7_result_tls_cert",
        "hl7_result_tls_key",
        "fhir_tls_ca",
        "fhir_tls_cert",
        "fhir_tls_key",
        mode="after",
    )
    @classmethod
    def _tls_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("no such file")
        return value

    def fhir_bearer_token(self) -> str | None:
        """The token for the FHIR server, from the setting or its file (never logged)."""
        if self.fhir_token is not None:
            return self.fhir_token.get_secret_value()
        if self.fhir_token_file is not None:
            return self.fhir_token_file.read_text().strip() or None
        return None


def _describe(error: ErrorDetails) -> str:
    loc = [str(part) for part in error.get("loc", ()) if not isinstance(part, int)]
    name = loc[0] if loc else "settings"
    variable = f"TACE_{name.upper()}"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        if len(loc) > 1:
            return f"{variable}: unknown option {loc[-1]!r}"
        return f"unknown setting {name!r}"
    value = error.get("input")
    secret = name in Settings.model_fields and "SecretStr" in str(Settings.model_fields[name].annotation)
    shown = ""
    if isinstance(value, (str, int, float)) and not secret:
        shown = "=" + _URL_USERINFO.sub(r"\1***@", repr(value))
    return f"{variable}{shown}: {message}"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``TACE_*`` variables that name no setting (a misspelling is otherwise silently ignored)."""
    known = {f"TACE_{name.upper()}" for name in Settings.model_fields}
    return sorted(
        key
        for key in environ
        if key.startswith("TACE_")
        and key not in known
        and key not in NOT_SETTINGS
        and not key.startswith("TACE_TEST_")
    )


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings or raise :class:`SettingsError` with one readable line.

    ``config_file`` (else ``TACE_CONFIG``) names a TOML file; the environment wins
    over it so a deployment can override one value without editing the file.
    """
    path = config_file or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is not None and not path.is_file():
        raise SettingsError(f"config file {path} does not exist")
    token = _config_file.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError("; ".join(_describe(e) for e in exc.errors())) from None
    except (ValueError, OSError) as exc:
        raise SettingsError(f"cannot read configuration {path}: {exc}") from None
    finally:
        _config_file.reset(token)
