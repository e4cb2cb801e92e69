"""DICOMweb transport: QIDO-RS to find, WADO-RS to retrieve, STOW-RS to store (``dicomweb-client``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom

from medlens.app.pacs.client import TIMEOUT_S, PacsClient, PacsError, PacsTarget, PushResult, write_instance

__all__ = ["DicomWebClient"]


def _dataset_uids(datasets: list[dict[str, Any]]) -> dict[str, str]:
    return {d["00080018"]["Value"][0]: d.get("0020000E", {}).get("Value", [""])[0]
            for d in datasets if "00080018" in d and d["00080018"].get("Value")}



class DicomWebClient(PacsClient):
    """A DICOMweb server; basic or bearer credentials from the target."""

    def __init__(self, target: PacsTarget):
        super().__init__(target)
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        headers = {}
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        elif target.user:
            session.auth = (target.user, target.password or "")
        self.client = DICOMwebClient(target.url, session=session, headers=headers, timeout=TIMEOUT_S)
        # Retry a busy server (429, 503…) briefly; a refused connection is reported, not retried for a minute.
        self.client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=250)

    def _call(self, what: str, fn, *args, **kwargs):
        import requests

        try:
            return fn(*args, **kwargs)
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            if status in (401, 403):
                raise PacsError(f"{self.target.shown}: the PACS refused the credentials (HTTP {status})") from None
            if status == 404:
                return None
            raise PacsError(f"{self.target.shown}: HTTP {status} to {what}") from None
        except requests.exceptions.ConnectionError:
            raise PacsError(f"{self.target.shown}: cannot reach the PACS (connection refused or no route)") from None
        except requests.exceptions.Timeout:
            raise PacsError(f"{self.target.shown}: no answer within {TIMEOUT_S} s to {what}") from None

    def check(self) -> None:
        self._call("a study query", self.client.search_for_studies, limit=1)

    def instances(self, study_uid: str) -> dict[str, str]:
        found = self._call("the instance query", self.client.search_for_instances, study_instance_uid=study_uid,
                           fields=["SeriesInstanceUID"], get_remaining=True)
        return _dataset_uids(found or [])

    def series(self, study_uid: str) -> dict[str, dict[str, str]]:
        found = self._call("the series query", self.client.search_for_series, study_instance_uid=study_uid,
                           fields=["Modality", "Manufacturer", "SeriesDescription"], get_remaining=True) or []

        def value(item: dict[str, Any], tag: str) -> str:
            return str((item.get(tag, {}).get("Value") or [""])[0])

        return {value(d, "0020000E"): {"modality": value(d, "00080060"), "manufacturer": value(d, "00080070"),
                                       "description": value(d, "0008103E")} for d in found}

    def _retrieve(self, study_uid: str, series: dict[str, list[str]], folder: Path) -> list[Path]:
        written = []
        for series_uid in series:
            datasets = self._call("the series retrieval", self.client.retrieve_series, study_uid, series_uid) or []
            for ds in datasets:
                written.append(write_instance(folder, ds))
        return written

    def _store(self, datasets: list[tuple[Path, pydicom.Dataset]], result: PushResult) -> None:
        for start in range(0, len(datasets), 16):
            chunk = datasets[start:start + 16]
            response = self._call("the store request", self.client.store_instances, [ds for _, ds in chunk])
            failed = {str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0))
                      for item in (response.get("FailedSOPSequence", []) if response is not None else [])}
            for path, ds in chunk:
                if str(ds.SOPInstanceUID) in failed:
                    result.failed.append((str(path), f"refused by the PACS (failure reason "
                                                     f"{failed[str(ds.SOPInstanceUID)]:#06x})"))
                else:
                    result.stored.append(path)

