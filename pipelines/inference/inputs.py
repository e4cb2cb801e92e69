"""What batch commands are given, walked once: files and folders to image files, files to frames.

:func:`expand_inputs` turns the command line's files and folders into one sorted,
de-duplicated list (what the CLI sizes its progress bar with and hands on, so a folder is
walked once); :func:`read_records` reads each file's images (every frame of a DICOM or NIfTI
volume), and an unreadable file becomes an ``(input, reason)`` error, never an exception.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from medlens.pipelines.errors import ImageReadError, MedlensError
from medlens.pipelines.imaging import ImageRecord, list_images, read_frames, sniff_format

__all__ = ["expand_inputs", "read_records"]

log = logging.getLogger(__name__)

_MULTI_FRAME_FORMATS = ("dicom", "nifti")


def expand_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Turn files and folders into a sorted, de-duplicated list of image files.

    Returns:
        ``(files, errors)``; ``errors`` lists inputs that do not exist or hold no images.
    """
    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            try:
                found = list_images(path)
            except MedlensError as exc:
                errors.append((str(path), str(exc)))
                continue
            if not found:
                errors.append((str(path), "folder contains no supported image files"))
            candidates = found
        elif path.is_file() or path.is_symlink() or path.exists():
            candidates = [path]  # a link loop, a FIFO…: the reader says what is wrong with it
        else:
            errors.append((str(path), "no such file or folder"))
            continue
        for candidate in candidates:
            key = Path(os.path.realpath(candidate))  # unlike Path.resolve, never raises on a link loop
            if key not in seen:
                seen.add(key)
                files.append(candidate)
    return files, errors


def read_records(files: list[Path], errors: list[tuple[str, str]]) -> Iterator[ImageRecord]:
    """Read each file (every frame of DICOM and NIfTI volumes); unreadable ones go to ``errors``."""
    for path in files:
        try:
            fmt = sniff_format(path)
            if fmt == "npz":
                raise ImageReadError(path, "an .npz dataset is not an image; train or evaluate on it instead")
            records = read_frames(path) if fmt in _MULTI_FRAME_FORMATS else read_frames(path)[:1]
        except MedlensError as exc:
            errors.append((str(path), getattr(exc, "reason", str(exc))))
            continue
        except Exception as exc:  # a reader bug must not lose the rest of the batch
            log.exception("unexpected error reading %s", path)
            errors.append((str(path), f"unexpected {type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        yield from records
