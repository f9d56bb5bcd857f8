"""Deployment files: the compose file validates, units and the example config are usable."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from tace.settings import load_settings
from tests.support.processes import REPO_ROOT
from tests.support.services import require_tool

DEPLOY = REPO_ROOT / "deploy"


def test_compose_file_validates_with_docker_compose() -> None:
    binary = require_tool("docker-compose")
    command = [binary, "-f", str(DEPLOY / "compose.yaml"), "config"]
    environment = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    unprotected = subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)
    assert unprotected.returncode != 0 and "set FLOWER_BASIC_AUTH=user:password" in unprotected.stderr
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={**environment, "FLOWER_BASIC_AUTH": "admin:s3cret"},
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {
        "redis",
        "postgres",
        "listener",
        "hl7",
        "relay",
        "worker-cpu",
        "worker-gpu",
        "api",
        "flower",
    } <= set(services)
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    for name in ("listener", "hl7", "relay", "worker-cpu", "worker-gpu", "api"):
        assert services[name]["volumes"][0].startswith("tace-data:/var/lib/tace")
        assert services[name]["environment"]["TACE_BROKER_URL"] == "redis://redis:6379/0"
        assert services[name]["restart"] == "unless-stopped"
    for name in ("redis", "postgres", "listener", "hl7", "api"):
        assert "healthcheck" in services[name], name
    assert services["listener"]["command"] == ["listen", "--no-relay"]
    for name in ("worker-cpu", "worker-gpu"):
        assert "--events" in services[name]["command"], "Flower sees no task without task events"
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "admin:s3cret"
    assert [p["host_ip"] if isinstance(p, dict) else p.split(":")[0] for p in flower["ports"]] == [
        "127.0.0.1"
    ]


def test_example_config_loads(monkeypatch) -> None:
    settings = load_settings(DEPLOY / "tace.example.toml")
    assert str(settings.destinations[0]) == "PACS@pacs.hospital.local:104"
    assert settings.hl7_facility_issuers == {"LAB_NORTH": "HOSP"}


def test_systemd_units_run_tace_commands() -> None:
    units = sorted(DEPLOY.glob("systemd/*.service"))
    assert {u.name for u in units} >= {
        "tace-listener.service",
        "tace-hl7.service",
        "tace-relay.service",
        "tace-worker-gpu@.service",
        "tace-worker-send.service",
        "tace-api.service",
        "tace-stow.service",
    }
    for unit in units:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.read(unit)
        command = parser["Service"]["ExecStart"].split()
        assert command[0] == "/opt/tace/venv/bin/tace", unit.name
        assert parser["Service"]["User"] == "tace"
    target = (DEPLOY / "systemd/tace.target").read_text()
    assert "tace-worker-gpu@0.service" in target


def test_dockerfiles_pin_torch_and_install_the_package() -> None:
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / name).read_text()
        assert "torch==2.13.0" in text and "pip install ." in text, name
    assert Path(DEPLOY / "prometheus/prometheus.yml").read_text().count("metrics_path: /metrics") == 1


def test_dockerfiles_copy_everything_the_package_build_reads() -> None:
    """No container engine runs here, so a COPY that misses a file pyproject names would
    only fail on the first real image build."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    needed = {project["project"]["readme"], *project["project"].get("license-files", [])}
    needed |= {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    for name in ("Dockerfile", "Dockerfile.cuda"):
        copied = {
            source.rstrip("/")
            for line in (DEPLOY / name).read_text().splitlines()
            if line.startswith("COPY ") and "--from" not in line
            for source in line.split()[1:-1]
        }
        assert needed <= copied, f"{name} does not copy {sorted(needed - copied)}"
        assert all((REPO_ROOT / path).exists() for path in needed)


def test_both_images_run_on_an_official_python_image_the_package_supports() -> None:
    """The CUDA image once installed `python3.11` from an Ubuntu 24.04 archive that ships
    only 3.12; a Python base image cannot name a version that does not exist in it."""
    minimum = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lowest = tuple(int(part) for part in minimum.removeprefix(">=").split("."))
    for name in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / name).read_text()
        base = re.search(r"^FROM python:(\d+)\.(\d+)-slim", text, re.MULTILINE)
        assert base, f"{name} does not start from an official python image"
        assert (int(base.group(1)), int(base.group(2))) >= lowest, name
        assert not re.search(r"apt-get install[^\n]*python3", text), f"{name} installs a second Python"
