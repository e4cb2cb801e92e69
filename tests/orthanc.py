"""A real PACS for the tests: Debian's Orthanc (+ DICOMweb plugin) as a plain process on loopback ports.

``.ci/run`` installs ``orthanc`` and ``orthanc-dicomweb``. The server gets its own storage folder,
HTTP basic authentication (one user) and a DICOM port that accepts C-FIND, C-GET and C-STORE from
any AE title.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

USER, PASSWORD = "medlens", "s3cret-for-tests"
_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root, without credentials."""
        return f"{self.rest}/dicom-web"

    @property
    def dicomweb_with_credentials(self) -> str:
        return f"http://{USER}:{PASSWORD}@127.0.0.1:{self.http_port}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"dimse://ORTHANC@127.0.0.1:{self.dicom_port}"

    def instances(self, study_uid: str) -> list[dict]:
        """Every instance of a study, through Orthanc's own REST API (not medlens's client)."""
        found = requests.post(f"{self.rest}/tools/find", auth=(USER, PASSWORD), timeout=10, json={
            "Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}).json()
        return found

    def series(self, study_uid: str) -> list[dict]:
        """The study's series (Orthanc's main tags: Modality, SeriesDescription, Manufacturer…)."""
        return requests.post(f"{self.rest}/tools/find", auth=(USER, PASSWORD), timeout=10, json={
            "Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True}).json()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    assert found and _PLUGIN.is_file(), "Orthanc is needed: apt-get install orthanc orthanc-dicomweb"
    return found


@contextlib.contextmanager
def running_orthanc(folder: Path) -> Iterator[Orthanc]:
    """Start Orthanc with its storage in ``folder``; stop it (and wait) afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    server = Orthanc(_free_port(), _free_port())
    config = {
        "Name": "medlens-tests", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": server.http_port, "DicomPort": server.dicom_port, "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowFind": True, "DicomAlwaysAllowEcho": True, "UnknownSopClassAccepted": True,
        "HttpTimeout": 30, "StableAge": 1, "ConcurrentJobs": 1,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([orthanc_binary(), str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{server.rest}/system", auth=(USER, PASSWORD), timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None, (folder / "orthanc.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Orthanc did not start within 60 s"
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
