"""Uploads to the service: streamed to disk within the size limit, checked readable, zipped series unpacked.

Every problem is an HTTP error with a one-line message naming the upload, never a traceback.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import uuid
import zipfile
from pathlib import Path
from typing import Any

from fastapi import Request, UploadFile

from medlens.app.service_engine import Engine, http_error

__all__ = ["receive", "check_readable", "unzip_series", "b64", "ZIP_MAGIC"]

log = logging.getLogger("medlens.service")

_CHUNK = 1 << 20
ZIP_MAGIC = b"PK\x03\x04"
_MAX_ZIP_MEMBERS = 4000


async def receive(upload: UploadFile, engine: Engine, request: Request) -> tuple[Path, Path]:
    """Stream the upload into a fresh folder of the service's temp dir, enforcing the size limit."""
    folder = engine.workdir / uuid.uuid4().hex
    folder.mkdir()
    target = folder / "upload"  # never the client's file name: no path ever comes from the request
    size = 0
    digest = hashlib.sha256()
    with open(target, "wb") as handle:
        while chunk := await upload.read(_CHUNK):
            size += len(chunk)
            digest.update(chunk)
            request.state.input_sha256, request.state.input_bytes = digest.hexdigest(), size
            if size > engine.settings.max_upload_bytes:
                handle.close()
                shutil.rmtree(folder, ignore_errors=True)
                raise http_error(413, f"upload is larger than {engine.settings.max_upload_bytes // (1024 * 1024)} MB")
            handle.write(chunk)
    if size == 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise http_error(400, "upload is empty (0 bytes)")
    with open(target, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    if gzipped:  # the only gzip medlens reads is a .nii.gz, and its reader goes by that name
        target = target.rename(folder / "upload.nii.gz")
    return folder, target


def check_readable(target: Path, name: str, engine: Engine) -> list[Any]:
    """Sniff and decode the upload once (as the CLI would); unreadable or too large is a 4xx.

    Returns:
        The records ``predict`` would read from it (every frame of DICOM and NIfTI).
    """
    from medlens.pipelines.inference.inputs import read_records

    errors: list[tuple[str, str]] = []
    records = list(read_records([target], errors))
    if errors:
        reason = errors[0][1]
        status = 413 if "limit" in reason or "too large" in reason else 415
        raise http_error(status, f"{name}: {reason}")
    pixels = sum(int(r.pixels.shape[0] * r.pixels.shape[1]) for r in records)
    if pixels > engine.settings.max_pixels:
        raise http_error(413, f"{name}: {pixels} pixels, above this service's limit of {engine.settings.max_pixels}")
    return records


def unzip_series(target: Path, name: str, engine: Engine) -> Path:
    """A zip of DICOM files → a folder of them; no member may escape it, none be a link, sizes bounded."""
    folder = target.parent / "series"
    folder.mkdir()
    limit = engine.settings.max_upload_bytes * 8
    try:
        with zipfile.ZipFile(target) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) > _MAX_ZIP_MEMBERS:
                raise http_error(413, f"{name}: {len(members)} files in the zip, above {_MAX_ZIP_MEMBERS}")
            if sum(m.file_size for m in members) > limit:
                raise http_error(413, f"{name}: the zip unpacks to more than {limit // (1024 * 1024)} MB")
            for k, member in enumerate(members):
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    continue  # a symlink: never followed, never written
                with archive.open(member) as source, open(folder / f"{k:05d}.dcm", "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)  # a flat, generated name: no path from the zip
    except zipfile.BadZipFile as exc:
        raise http_error(415, f"{name}: not a readable zip ({exc})") from None
    return folder


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


