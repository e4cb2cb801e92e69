"""PACS round trips: pull a study, push results back — DICOMweb or DIMSE, chosen by the URL.

- ``http(s)://[user:password@]host[:port]/dicom-web`` — DICOMweb: QIDO-RS to find, WADO-RS to
  retrieve, STOW-RS to store (``dicomweb-client``). Credentials from the URL, or
  ``MEDLENS_PACS_USER`` / ``MEDLENS_PACS_PASSWORD`` (basic) or ``MEDLENS_PACS_TOKEN`` (bearer).
- ``dimse://[CALLED_AE@]host:port`` — DIMSE: C-FIND, C-GET (no inbound port needed) and C-STORE
  (``pynetdicom``); medlens calls as ``MEDLENS_AE_TITLE`` (default ``MEDLENS``).

Every failure is one line naming the PACS and the problem (unreachable, credentials refused,
study unknown, an instance rejected), as :class:`PacsError`. A pull writes into a temporary
folder and moves it into place only when the whole study arrived, so nothing half-written is
left. A push first asks which SOP Instance UIDs the study already holds and sends only the
others; medlens's own outputs have UIDs derived from their source and run, so re-running a
batch and pushing again adds no duplicate instances.

Example:
    pacs = connect("http://localhost:8042/dicom-web")
    files = pacs.pull("1.2.826.0.1.3680043.8.498.1", "study")
    pacs.push(files)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pydicom

from medlens.pipelines.errors import ConfigError, MedlensError
from medlens.pipelines.rundir import atomic_write_bytes

__all__ = ["PacsError", "PushResult", "connect", "parse_pacs_url", "dicom_files"]

log = logging.getLogger(__name__)

_TIMEOUT_S = 30
#: Series of these modalities are results or documents, not images to run a model on.
_NOT_IMAGE_MODALITIES = frozenset({"SEG", "SR", "KO", "PR", "RTSTRUCT", "REG", "DOC", "RWV", "PLAN"})


class PacsError(MedlensError):
    """A PACS could not be reached, refused us, or does not have what was asked for."""


@dataclass
class PushResult:
    """What a push did: instances stored, already on the PACS (skipped), and refused."""

    stored: list[Path] = field(default_factory=list)
    present: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PacsTarget:
    """A parsed PACS URL (credentials are never printed)."""

    scheme: str
    url: str
    host: str
    port: int
    called_ae: str = "ANY-SCP"
    user: str | None = None
    password: str | None = None
    token: str | None = None

    @property
    def shown(self) -> str:
        """The URL without credentials, for messages."""
        return self.url


def parse_pacs_url(url: str) -> PacsTarget:
    """``http(s)://…`` → DICOMweb, ``dimse://AE@host:port`` → DIMSE.

    Raises:
        ConfigError: Another scheme, or no host/port.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(f"PACS URL {url!r} has no host")
        shown = parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
        return PacsTarget("dicomweb", shown.rstrip("/"), parts.hostname, parts.port or (443 if scheme == "https" else 80),
                          user=unquote(parts.username) if parts.username else os.environ.get("MEDLENS_PACS_USER"),
                          password=unquote(parts.password) if parts.password else os.environ.get("MEDLENS_PACS_PASSWORD"),
                          token=os.environ.get("MEDLENS_PACS_TOKEN"))
    if scheme == "dimse":
        if not parts.hostname or not parts.port:
            raise ConfigError(f"PACS URL {url!r}: a DIMSE URL is dimse://CALLED_AE@host:port")
        return PacsTarget("dimse", f"dimse://{parts.username + '@' if parts.username else ''}{parts.hostname}:{parts.port}",
                          parts.hostname, parts.port, called_ae=unquote(parts.username) if parts.username else "ANY-SCP")
    raise ConfigError(f"PACS URL {url!r}: use http(s)://host/dicom-web (DICOMweb) or dimse://AE@host:port (DIMSE)")


def dicom_files(inputs: list[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """DICOM files among files and folders (recursive); others are reported, not sent."""
    from medlens.pipelines.imaging import sniff_format

    found: list[Path] = []
    errors: list[tuple[str, str]] = []
    for item in map(Path, inputs):
        candidates = sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
        if not item.exists():
            errors.append((str(item), "no such file or folder"))
            continue
        for path in candidates:
            try:
                if sniff_format(path) == "dicom":
                    found.append(path)
                elif not item.is_dir():
                    errors.append((str(path), "not a DICOM file; only DICOM can be sent to a PACS"))
            except MedlensError as exc:
                errors.append((str(path), getattr(exc, "reason", str(exc))))
    return found, errors


class _Pacs:
    def __init__(self, target: PacsTarget):
        self.target = target

    # the two transports implement these
    def instances(self, study_uid: str) -> dict[str, str]:  # SOP Instance UID → Series Instance UID
        raise NotImplementedError

    def _retrieve(self, study_uid: str, series: dict[str, list[str]], folder: Path) -> list[Path]:
        raise NotImplementedError

    def _store(self, datasets: list[tuple[Path, pydicom.Dataset]], result: PushResult) -> None:
        raise NotImplementedError

    def check(self) -> None:
        """Contact the PACS once (a one-study query, or C-ECHO): :class:`PacsError` when unusable."""
        raise NotImplementedError

    def series(self, study_uid: str) -> dict[str, dict[str, str]]:
        """The study's series: UID → ``{"modality", "manufacturer", "description"}``."""
        raise NotImplementedError

    def require_study(self, study_uid: str) -> dict[str, str]:
        """The study's instances; :class:`PacsError` when the PACS does not know the study."""
        found = self.instances(study_uid)
        if not found:
            raise PacsError(f"{self.target.shown}: study {study_uid} not found on the PACS")
        return found

    def image_series(self, study_uid: str) -> tuple[set[str], list[str]]:
        """The series to process: images, not derived objects (SEG, SR…) nor medlens's own results.

        Returns:
            ``(kept series UIDs, one line per skipped series)``.
        """
        kept, skipped = set(), []
        for uid, info in self.series(study_uid).items():
            if info.get("modality", "").upper() in _NOT_IMAGE_MODALITIES:
                skipped.append(f"{uid} ({info['modality']})")
            elif info.get("manufacturer", "") == "medlens" or info.get("description", "").startswith("medlens "):
                skipped.append(f"{uid} (a medlens result)")
            else:
                kept.add(uid)
        return kept, skipped

    def pull(self, study_uid: str, out: str | Path, *, images_only: bool = False) -> list[Path]:
        """Retrieve every instance of a study into ``out/SERIES_UID/SOP_UID.dcm``.

        ``out`` must be new or empty; the study lands in a temporary folder beside it first.

        Args:
            study_uid: The Study Instance UID.
            out: A new or empty folder.
            images_only: Only the image series (see :meth:`image_series`): what
                ``--from-pacs`` processes, so a study's earlier results are not read as inputs.

        Raises:
            PacsError: Unreachable, refused, unknown study, or an instance did not arrive.
        """
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise MedlensError(f"{out}: not empty; pull into a new folder")
        found = self.require_study(study_uid)
        if images_only:
            wanted, skipped = self.image_series(study_uid)
            for line in skipped:
                log.warning("study %s: series %s not pulled", study_uid, line)
            found = {sop: series_uid for sop, series_uid in found.items() if series_uid in wanted}
            if not found:
                raise PacsError(f"{self.target.shown}: study {study_uid} has no image series to process")
        series: dict[str, list[str]] = {}
        for sop, series_uid in found.items():
            series.setdefault(series_uid, []).append(sop)
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        try:
            written = self._retrieve(study_uid, series, staging)
            arrived = {p.stem for p in written}
            missing = set(found) - arrived
            if missing:
                raise PacsError(f"{self.target.shown}: {len(missing)} of {len(found)} instance(s) of study "
                                f"{study_uid} did not arrive")
            if out.exists():
                out.rmdir()
            os.replace(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return sorted(out / p.relative_to(staging) for p in written)

    def push(self, files: list[Path]) -> PushResult:
        """Store ``files``, skipping instances the PACS already holds (by SOP Instance UID)."""
        result = PushResult()
        pending: list[tuple[Path, pydicom.Dataset]] = []
        known: dict[str, dict[str, str]] = {}
        for path in files:
            try:
                ds = pydicom.dcmread(path)
                study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, the rest sent
                result.failed.append((str(path), f"not a readable DICOM instance ({str(exc).splitlines()[0][:120]})"))
                continue
            if study not in known:
                known[study] = self.instances(study)
            if sop in known[study]:
                result.present.append(path)
            else:
                pending.append((path, ds))
        if pending:
            self._store(pending, result)
        return result


def _dataset_uids(datasets: list[dict[str, Any]]) -> dict[str, str]:
    return {d["00080018"]["Value"][0]: d.get("0020000E", {}).get("Value", [""])[0]
            for d in datasets if "00080018" in d and d["00080018"].get("Value")}


class _DicomWeb(_Pacs):
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
        self.client = DICOMwebClient(target.url, session=session, headers=headers, timeout=_TIMEOUT_S)
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
            raise PacsError(f"{self.target.shown}: no answer within {_TIMEOUT_S} s to {what}") from None

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
                written.append(_write(folder, ds))
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


_GET_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.4",
    "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.77.1.5.1", "1.2.840.10008.5.1.4.1.1.128", "1.2.840.10008.5.1.4.1.1.20",
)


class _Dimse(_Pacs):
    def __init__(self, target: PacsTarget):
        super().__init__(target)
        self.calling = os.environ.get("MEDLENS_AE_TITLE", "MEDLENS")

    def _associate(self, contexts: list[str], roles: list[Any] | None = None, handlers: list[Any] | None = None):
        from pynetdicom import AE

        ae = AE(ae_title=self.calling)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = _TIMEOUT_S
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
            written.append(_write(folder, ds))
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


def _write(folder: Path, ds: pydicom.Dataset) -> Path:
    import io

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return atomic_write_bytes(folder / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm", buffer.getvalue())


def connect(url: str) -> _Pacs:
    """A PACS client for ``url`` (nothing is contacted until it is used)."""
    target = parse_pacs_url(url)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        # The libraries log every retry and refused connection with a traceback; PacsError says it in one line.
        for name in ("retrying", "pynetdicom", "dicomweb_client"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    return _DicomWeb(target) if target.scheme == "dicomweb" else _Dimse(target)
