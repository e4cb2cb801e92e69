"""DIMSE transport: C-FIND, C-GET (no inbound port needed) and C-STORE (``pynetdicom``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pydicom

from medlens.app.pacs.client import TIMEOUT_S, PacsClient, PacsError, PacsTarget, PushResult, write_instance

__all__ = ["DimseClient"]

_GET_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.4",
    "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.20",
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.34",
)


class DimseClient(PacsClient):
    """A DIMSE peer; medlens calls as ``MEDLENS_AE_TITLE`` (default ``MEDLENS``)."""

    def __init__(self, target: PacsTarget):
        super().__init__(target)
        self.calling = os.environ.get("MEDLENS_AE_TITLE", "MEDLENS")

    def _associate(self, contexts: list[str], roles: list[Any] | None = None, handlers: list[Any] | None = None):
        from pynetdicom import AE

        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
        for uid in contexts:
            ae.add_requested_context(uid)
        try:
            assoc = ae.associate(self.target.host, self.target.port, ae_title=self.target.called_ae,
                                 ext_neg=roles or [], evt_handlers=handlers or [])
        except OSError as exc:
            raise PacsError(f"{self.target.shown}: cannot reach the PACS ({exc.strerror or exc})") from None
        if not assoc.is_established:
            if assoc.is_rejected:
                raise PacsError(f"{self.target.shown}: the PACS rejected the association "
                                f"(AE titles {self.calling} → {self.target.called_ae})")
            raise PacsError(f"{self.target.shown}: cannot reach the PACS (connection refused, or the association "
                            "was aborted)")
        return assoc

    def _find(self, assoc, query: pydicom.Dataset) -> list[pydicom.Dataset]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        found = []
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                raise PacsError(f"{self.target.shown}: C-FIND got no answer (connection lost)")
            if status.Status in (0xFF00, 0xFF01) and identifier is not None:
                found.append(identifier)
            elif status.Status not in (0x0000, 0xFF00, 0xFF01):
                raise PacsError(f"{self.target.shown}: C-FIND failed with status {status.Status:#06x}")
        return found

    def check(self) -> None:
        from pynetdicom.sop_class import Verification

        assoc = self._associate([Verification])
        try:
            status = assoc.send_c_echo()
            if not status or status.Status != 0:
                raise PacsError(f"{self.target.shown}: C-ECHO failed")
        finally:
            assoc.release()

    def instances(self, study_uid: str) -> dict[str, str]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        assoc = self._associate([StudyRootQueryRetrieveInformationModelFind])
        try:
            query = pydicom.Dataset()
            query.QueryRetrieveLevel, query.StudyInstanceUID, query.SeriesInstanceUID = "SERIES", study_uid, ""
            series = [str(d.SeriesInstanceUID) for d in self._find(assoc, query) if d.get("SeriesInstanceUID")]
            found: dict[str, str] = {}
            for series_uid in series:
                query = pydicom.Dataset()
                query.QueryRetrieveLevel, query.StudyInstanceUID = "IMAGE", study_uid
                query.SeriesInstanceUID, query.SOPInstanceUID = series_uid, ""
                found.update({str(d.SOPInstanceUID): series_uid for d in self._find(assoc, query)
                              if d.get("SOPInstanceUID")})
            return found
        finally:
            assoc.release()

    def series(self, study_uid: str) -> dict[str, dict[str, str]]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        assoc = self._associate([StudyRootQueryRetrieveInformationModelFind])
        try:
            query = pydicom.Dataset()
            query.QueryRetrieveLevel, query.StudyInstanceUID, query.SeriesInstanceUID = "SERIES", study_uid, ""
            query.Modality, query.Manufacturer, query.SeriesDescription = "", "", ""
            return {str(d.SeriesInstanceUID): {"modality": str(d.get("Modality", "")),
                                               "manufacturer": str(d.get("Manufacturer", "")),
                                               "description": str(d.get("SeriesDescription", ""))}
                    for d in self._find(assoc, query) if d.get("SeriesInstanceUID")}
        finally:
            assoc.release()

    def _retrieve(self, study_uid: str, series: dict[str, list[str]], folder: Path) -> list[Path]:
        from pynetdicom import evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

        written: list[Path] = []

        def on_store(event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            written.append(write_instance(folder, ds))
            return 0x0000

        from pynetdicom import build_role

        roles = [build_role(uid, scp_role=True) for uid in _GET_STORAGE]
        assoc = self._associate([StudyRootQueryRetrieveInformationModelGet, *_GET_STORAGE], roles,
                                [(evt.EVT_C_STORE, on_store)])
        try:
            for series_uid in series:
                query = pydicom.Dataset()
                query.QueryRetrieveLevel, query.StudyInstanceUID = "SERIES", study_uid
                query.SeriesInstanceUID = series_uid
                for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                    if not status:
                        raise PacsError(f"{self.target.shown}: C-GET got no answer (connection lost)")
                    if status.Status not in (0x0000, 0xFF00, 0xB000):
                        raise PacsError(f"{self.target.shown}: C-GET failed with status {status.Status:#06x}")
        finally:
            assoc.release()
        return written

    def _store(self, datasets: list[tuple[Path, pydicom.Dataset]], result: PushResult) -> None:
        classes = sorted({str(ds.SOPClassUID) for _, ds in datasets})
        assoc = self._associate(classes)
        try:
            for path, ds in datasets:
                status = assoc.send_c_store(ds)
                if status and status.Status in (0x0000, 0xB000, 0xB007, 0xB006):
                    result.stored.append(path)
                else:
                    code = f"{status.Status:#06x}" if status else "no answer"
                    result.failed.append((str(path), f"C-STORE refused by the PACS (status {code})"))
        finally:
            assoc.release()

