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

from medlens.app.pacs.client import PacsClient, PacsError, PacsTarget, PushResult, dicom_files, parse_pacs_url

__all__ = ["PacsError", "PushResult", "PacsTarget", "PacsClient", "connect", "parse_pacs_url", "dicom_files"]


def connect(url: str) -> PacsClient:
    """A PACS client for ``url`` (nothing is contacted until it is used)."""
    target = parse_pacs_url(url)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        # The libraries log every retry and refused connection with a traceback; PacsError says it in one line.
        for name in ("retrying", "pynetdicom", "dicomweb_client"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if target.scheme == "dicomweb":
        from medlens.app.pacs.dicomweb import DicomWebClient

        return DicomWebClient(target)
    from medlens.app.pacs.dimse import DimseClient

    return DimseClient(target)
