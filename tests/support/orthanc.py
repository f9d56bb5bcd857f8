"""Orthanc as the PACS that receives our SRs, started from a JSON config in a temp dir."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.services import free_port, missing, require_tool, wait_for_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    workdir: Path
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    dicomweb_servers: dict[str, dict[str, Any]] | None = None
    """With servers (``{}`` for none), the DICOMweb plugin is loaded: it takes STOW-RS at
    ``dicomweb_url`` and can STOW-RS to the servers (``stow``)."""
    users: dict[str, str] | None = None
    """With users, HTTP (REST and DICOMweb) needs basic auth; this helper uses the first user."""

    @property
    def destination(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self) -> Orthanc:
        binary = require_tool("Orthanc", ORTHANC)
        storage = self.workdir / "orthanc-db"
        config = {
            "Name": "TEST",
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAlwaysAllowStore": True,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users or {},
            "RemoteAccessAllowed": False,
            "DicomCheckCalledAet": False,
            "Plugins": [],
            "HttpServerEnabled": True,
        }
        if self.dicomweb_servers is not None:
            if not DICOMWEB_PLUGIN.exists():
                missing("Orthanc's DICOMweb plugin (Debian orthanc-dicomweb) is not installed")
            config["Plugins"] = [str(DICOMWEB_PLUGIN)]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "Servers": self.dicomweb_servers}
        path = self.workdir / "orthanc.json"
        self.workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))
        self.process = subprocess.Popen(
            [binary, str(path)], stdout=(self.workdir / "orthanc.log").open("ab"), stderr=subprocess.STDOUT
        )
        wait_for_port(self.http_port)
        wait_for_port(self.dicom_port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    def _request(self, path: str, data: bytes | None = None) -> urllib.request.Request:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method="GET" if data is None else "POST"
        )
        if self.users:
            user, password = next(iter(self.users.items()))
            request.add_header(
                "Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            )
        return request

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self._request(path), timeout=10) as response:
            return json.loads(response.read())

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        with urllib.request.urlopen(self._request(path, json.dumps(body).encode()), timeout=10) as response:
            return json.loads(response.read())

    def sr_instances(self) -> list[str]:
        return self.instances("SR")

    def instances(self, modality: str) -> list[str]:
        return list(self._post("/tools/find", {"Level": "Instance", "Query": {"Modality": modality}}))

    def instance_tags(self, instance: str) -> dict[str, Any]:
        return self._get(f"/instances/{instance}/simplified-tags")

    def download(self, instance: str, target: Path) -> Path:
        with urllib.request.urlopen(self._request(f"/instances/{instance}/file"), timeout=10) as response:
            target.write_bytes(response.read())
        return target

    def upload(self, file: Path) -> dict[str, Any]:
        """Store a DICOM file through the REST API (no DICOM association); returns Orthanc's ids."""
        with urllib.request.urlopen(self._request("/instances", file.read_bytes()), timeout=30) as response:
            return dict(json.loads(response.read()))

    def stow(self, server: str, resources: list[str]) -> Any:
        """Have Orthanc's DICOMweb plugin send the resources to ``server`` by STOW-RS (synchronously)."""
        return self._post(f"/dicom-web/servers/{server}/stow", {"Resources": resources})
