from __future__ import annotations

from pathlib import Path

import pytest

from tace.settings import Destination, DicomwebDestination, Settings, SettingsError, load_settings


def test_defaults_need_no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    settings = load_settings()
    default = tmp_path / "home" / ".local" / "share" / "tace"
    assert settings.data_dir == default
    assert settings.effective_database_url == f"sqlite:///{default / 'tace.db'}"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert load_settings().data_dir == tmp_path / "xdg" / "tace"
    assert settings.broker_url == "filesystem://"
    assert (settings.dicom_port, settings.hl7_port, settings.api_port) == (11112, 2575, 8080)
    assert settings.ae_title == "TACE"
    assert settings.series_quiet_seconds == 30
    assert settings.release_grace_seconds == 5
    assert settings.job_stall_seconds == 300
    assert settings.destinations == []


def test_environment_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TACE_DESTINATIONS", "ORTHANC@127.0.0.1:4242, PACS2@[::1]:104")
    monkeypatch.setenv("TACE_ALLOWED_CALLING_AETS", "CT1,CT2")
    settings = load_settings()
    assert settings.destinations == [
        Destination(ae_title="ORTHANC", host="127.0.0.1", port=4242),
        Destination(ae_title="PACS2", host="::1", port=104),
    ]
    assert settings.allowed_calling_aets == ["CT1", "CT2"]


def test_dicomweb_destinations_are_base_urls_named_without_a_trailing_slash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "TACE_DESTINATIONS",
        "ORTHANC@127.0.0.1:4242, https://archive.example.org/dicom-web/,http://pacs:8042/dw",
    )
    settings = load_settings()
    assert settings.destinations == [
        Destination(ae_title="ORTHANC", host="127.0.0.1", port=4242),
        DicomwebDestination(url="https://archive.example.org/dicom-web"),
        DicomwebDestination(url="http://pacs:8042/dw"),
    ]
    assert [str(d) for d in settings.destinations] == [
        "ORTHANC@127.0.0.1:4242",
        "https://archive.example.org/dicom-web",
        "http://pacs:8042/dw",
    ]


def test_a_dicomweb_destination_with_its_own_credentials_in_toml_or_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "tace.toml"
    config.write_text(
        'destinations = ["PACS@10.0.0.5:104", {url = "https://cloud.example.org/dicomweb", '
        'token_file = "/run/secrets/cloud", tls_ca = "/etc/tace/ca.pem"}]\n'
    )
    cloud = DicomwebDestination(
        url="https://cloud.example.org/dicomweb",
        token_file=Path("/run/secrets/cloud"),
        tls_ca=Path("/etc/tace/ca.pem"),
    )
    assert load_settings(config).destinations == [
        Destination(ae_title="PACS", host="10.0.0.5", port=104),
        cloud,
    ]
    monkeypatch.setenv(
        "TACE_DESTINATIONS",
        '[{"url": "https://cloud.example.org/dicomweb", "token_file": "/run/secrets/cloud", '
        '"tls_ca": "/etc/tace/ca.pem"}]',
    )
    assert load_settings(config).destinations == [cloud]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"TACE_DESTINATIONS": "ftp://archive/dicom-web"},
            "is not of the form AE@host:port or an http(s)://",
        ),
        (
            {"TACE_DESTINATIONS": "https://tace:pacs-pass@archive/dicom-web"},
            "TACE_DESTINATIONS='https://***@archive/dicom-web': destination https://archive/dicom-web "
            "carries credentials in the URL",
        ),
        ({"TACE_DESTINATIONS": "https://archive/dicom-web?x=1"}, "a DICOMweb base URL has no query"),
        ({"TACE_DESTINATIONS": "http://[::1]:8042/dw"}, "takes no IPv6 address literal; use a host name"),
        ({"TACE_DESTINATIONS": "https://archive/" + "d" * 120}, "is longer than 128 characters"),
        (
            {"TACE_DESTINATIONS": '[{"url": "https://a/dw", "token_file": "/t", "username": "u"}]'},
            "TACE_DESTINATIONS: destination https://a/dw: give token_file (bearer) or username (basic), not both",
        ),
        ({"TACE_DESTINATIONS": '[{"url": "https://a/dw", "tokenfile": "/t"}]'}, "unknown option 'tokenfile'"),
        (
            {"TACE_DICOMWEB_TOKEN": "t0ken", "TACE_DICOMWEB_USERNAME": "tace"},
            "TACE_DICOMWEB_USERNAME='tace': set TACE_DICOMWEB_TOKEN (bearer) or TACE_DICOMWEB_USERNAME (basic)",
        ),
        ({"TACE_DICOMWEB_PASSWORD": "pacs-pass"}, "TACE_DICOMWEB_PASSWORD: needs TACE_DICOMWEB_USERNAME"),
        ({"TACE_DICOMWEB_TLS_KEY": "/etc/tace/key.pem"}, "needs TACE_DICOMWEB_TLS_CERT"),
    ],
)
def test_bad_dicomweb_settings_name_the_variable_and_never_show_a_secret(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert expected in message
    assert "pacs-pass" not in message and "t0ken" not in message and "\n" not in message


def test_toml_file_is_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "tace.toml"
    config.write_text('ae_title = "GATEWAY"\ndicom_port = 11113\ndestinations = ["PACS@10.0.0.5:104"]\n')
    monkeypatch.setenv("TACE_DICOM_PORT", "11114")
    settings = load_settings(config)
    assert settings.ae_title == "GATEWAY"
    assert settings.dicom_port == 11114
    assert settings.destinations == [Destination(ae_title="PACS", host="10.0.0.5", port=104)]


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "TACE_DICOM_PORT",
            "70000",
            "TACE_DICOM_PORT='70000': Input should be less than or equal to 65535",
        ),
        ("TACE_HL7_PORT", "abc", "TACE_HL7_PORT='abc'"),
        ("TACE_AE_TITLE", "A_TITLE_THAT_IS_FAR_TOO_LONG", "is not a DICOM AE title"),
        ("TACE_DESTINATIONS", "PACS:104", "is not of the form AE@host:port"),
        ("TACE_DATABASE_URL", "mysql://x", "must start with sqlite:// or postgresql://"),
        ("TACE_DEVICE", "tpu", "TACE_DEVICE='tpu'"),
    ],
)
def test_bad_values_give_one_readable_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_in_toml_is_named(tmp_path: Path) -> None:
    config = tmp_path / "tace.toml"
    config.write_text("dicom_prot = 104\n")
    with pytest.raises(SettingsError, match="unknown setting 'dicom_prot'"):
        load_settings(config)


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_empty_environment_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TACE_API_TOKEN", "TACE_MODEL_CHECKPOINT", "TACE_DEFAULT_ISSUER", "TACE_DESTINATIONS"):
        monkeypatch.setenv(name, "")
    settings = load_settings()
    assert settings.api_token is None and settings.model_checkpoint is None
    assert settings.default_issuer is None and settings.destinations == []


def test_stow_runs_with_a_token_or_with_required_client_certificates_and_not_otherwise(
    tmp_path: Path,
) -> None:
    certificates = {
        "stow_tls_cert": tmp_path / "server.pem",
        "stow_tls_key": tmp_path / "server.key",
        "stow_tls_ca": tmp_path / "ca.pem",
    }
    assert not Settings(data_dir=tmp_path).stow_enabled
    assert Settings(data_dir=tmp_path, stow_token="t").stow_enabled
    assert not Settings(data_dir=tmp_path, **certificates).stow_enabled, "TLS without client certificates"
    assert Settings(data_dir=tmp_path, stow_tls_require_client_cert=True, **certificates).stow_enabled
