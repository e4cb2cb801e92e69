"""What every PACS transport shares: the URL, the results, one error type, pull and push.

:class:`PacsClient` holds the study logic (which series are images, a pull that lands whole or
not at all, a push that skips what the PACS already has); :mod:`.dicomweb` and :mod:`.dimse`
implement its four transport methods.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pydicom

from medlens.pipelines.errors import ConfigError, MedlensError
from medlens.pipelines.rundir import atomic_write_bytes

__all__ = ["PacsError", "PushResult", "PacsTarget", "PacsClient", "parse_pacs_url", "dicom_files", "write_instance",
           "TIMEOUT_S", "NOT_IMAGE_MODALITIES"]

log = logging.getLogger("medlens.app.pacs")

TIMEOUT_S = 30
#: Series of these modalities are results or documents, not images to run a model on.
NOT_IMAGE_MODALITIES = frozenset({"SEG", "SR", "KO", "PR", "RTSTRUCT", "REG", "DOC", "RWV", "PLAN"})


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



class PacsClient:
    """A PACS: a transport subclass gives instances, series, retrieve and store; pull and push are here."""

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
            if info.get("modality", "").upper() in NOT_IMAGE_MODALITIES:
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


def write_instance(folder: Path, ds: pydicom.Dataset) -> Path:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return atomic_write_bytes(folder / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm", buffer.getvalue())

