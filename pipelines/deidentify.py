"""De-identification of the DICOM objects medlens writes: the PS3.15 Basic Application Level Confidentiality Profile.

``--deidentify`` on ``segment`` and ``predict``/``explain --dicom`` applies, to every SEG, volume report (SR) and
Secondary Capture before it is written:

- **patient**: Patient's Name and Patient ID → one pseudonym per patient (``ANON-`` + 10 hex
  digits of a keyed hash of the ID), birth date, sex, age, size, weight, address, other IDs,
  ethnic group… removed or emptied;
- **people and places**: every other person name emptied; institution, station, operators,
  physicians, accession number and study ID emptied or removed;
- **dates and times**: replaced by dummies (``19000101``, ``000000``), so Type 1 attributes
  stay valid (the profile's *D* action) — no date of the source survives;
- **UIDs**: every instance, series, study and frame-of-reference UID (in sequences too) →
  a UID derived from the key and the original, so references inside and between the objects
  of one batch (a SEG's source references, an SC's source image) stay consistent;
- **private attributes** removed; ``PatientIdentityRemoved = YES`` and
  ``DeidentificationMethod(CodeSequence)`` (DCM 113100) added.

The **mapping** (original → replacement, per kind) is written by :meth:`Deidentifier.write_mapping`
to a file *outside* the output folder (by default ``OUT.deidentify-map.csv`` beside it, mode
0600), so the folder can be shared and the mapping kept by whoever may re-identify. The key comes
from ``MEDLENS_DEIDENTIFY_KEY`` (the same key gives the same pseudonyms in every run, so batches
can be joined) or is drawn at random for the batch. Without ``--deidentify`` medlens keeps the
source identity, as a PACS needs to file results with their study.

Example:
    deid = Deidentifier()
    deid.apply(dataset)
    deid.write_mapping("out.deidentify-map.csv")
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from medlens.pipelines.rundir import atomic_write_csv

__all__ = ["Deidentifier", "default_mapping_path"]

_REMOVE = ("PatientBirthTime", "PatientAge", "PatientSize", "PatientWeight", "PatientAddress",
           "PatientTelephoneNumbers", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
           "PatientMotherBirthName", "MilitaryRank", "BranchOfService", "EthnicGroup", "Occupation",
           "AdditionalPatientHistory", "PatientComments", "MedicalRecordLocator", "InstitutionName",
           "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "OperatorsName",
           "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
           "RequestingPhysician", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
           "RequestAttributesSequence", "StudyDescription", "AdmittingDiagnosesDescription",
           "InstitutionCodeSequence", "IssuerOfPatientID", "RequestedProcedureID", "PerformedProcedureStepID",
           "ScheduledProcedureStepID", "FillerOrderNumberImagingServiceRequest",
           "PlacerOrderNumberImagingServiceRequest", "CurrentPatientLocation", "PatientInstitutionResidence")
_EMPTY = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName")
_DUMMY = {"DA": "19000101", "TM": "000000", "DT": "19000101000000"}
_UID_KEYWORDS = frozenset({"FrameOfReferenceUID", "ReferencedFrameOfReferenceUID", "DimensionOrganizationUID",
                           "ConcatenationUID", "SynchronizationFrameOfReferenceUID", "IrradiationEventUID"})


def default_mapping_path(out: str | Path) -> Path:
    """``OUT.deidentify-map.csv`` beside (never inside) the output folder."""
    out = Path(out).resolve()
    return out.parent / f"{out.name}.deidentify-map.csv"


class Deidentifier:
    """Applies the basic profile with one key, and remembers every replacement it made.

    Args:
        key: Secret for pseudonyms and UIDs (default ``MEDLENS_DEIDENTIFY_KEY``, else random).
    """

    def __init__(self, key: str | bytes | None = None):
        key = key if key is not None else os.environ.get("MEDLENS_DEIDENTIFY_KEY") or secrets.token_hex(32)
        self._key = key.encode() if isinstance(key, str) else bytes(key)
        self.mapping: dict[tuple[str, str], str] = {}
        self._made: set[str] = set()  # UIDs this object made (an item shared by two sequences is seen twice)

    def _digest(self, kind: str, value: str) -> str:
        return hmac.new(self._key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()

    def pseudonym(self, patient_id: str) -> str:
        """The patient's pseudonym (the same ID and key, the same pseudonym)."""
        replacement = f"ANON-{self._digest('patient', patient_id)[:10].upper()}"
        self.mapping[("PatientID", patient_id)] = replacement
        return replacement

    def uid(self, original: str) -> str:
        """A UID for ``original`` derived from the key (the same original and key, the same UID)."""
        from pydicom.uid import generate_uid

        if original in self._made:
            return original
        replacement = str(generate_uid(entropy_srcs=[self._key.hex(), original]))
        self.mapping[("UID", original)] = replacement
        self._made.add(replacement)
        return replacement

    def apply(self, ds: Any) -> Any:
        """De-identify ``ds`` in place (and its file meta); returns it."""
        from pydicom.dataset import Dataset

        patient_id = str(ds.get("PatientID", "") or "")
        patient_name = str(ds.get("PatientName", "") or "")
        pseudonym = self.pseudonym(patient_id or patient_name or "unknown")
        if patient_name:
            self.mapping[("PatientName", patient_name)] = pseudonym
        ds.remove_private_tags()
        self._walk(ds)
        ds.PatientName = pseudonym
        ds.PatientID = pseudonym
        for keyword in _EMPTY:
            if keyword in ds:
                setattr(ds, keyword, "")
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "PS3.15 Basic Application Confidentiality Profile"  # LO: ≤ 64 characters
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = [code]
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    def _walk(self, ds: Any) -> None:
        for keyword in _REMOVE:
            if keyword in ds:
                delattr(ds, keyword)
        for element in list(ds):
            if element.VR == "SQ":
                for item in element.value:
                    self._walk(item)
            elif element.VR == "UI" and element.value and (
                    element.keyword.endswith("InstanceUID") or element.keyword in _UID_KEYWORDS):
                if element.VM > 1:
                    element.value = [self.uid(str(v)) for v in element.value]
                else:
                    element.value = self.uid(str(element.value))
            elif element.VR in _DUMMY and element.value:
                element.value = _DUMMY[element.VR]
            elif element.VR == "PN" and element.keyword not in ("PatientName",) and element.value:
                element.value = ""

    def write_mapping(self, path: str | Path) -> Path:
        """Write ``kind, original, replacement`` rows (atomically, readable by the owner only)."""
        path = Path(path)
        rows = sorted((kind, original, replacement) for (kind, original), replacement in self.mapping.items())
        written = atomic_write_csv(path, ["kind", "original", "replacement"], rows)
        os.chmod(written, 0o600)
        return written
