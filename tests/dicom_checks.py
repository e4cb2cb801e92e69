"""DICOM validation in tests: dicom3tools' ``dciodvfy`` (Debian ``dicom3tools``; ``.ci/run`` installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines ``dciodvfy`` prints for a file (an empty list: the object is valid)."""
    assert shutil.which("dciodvfy"), "dciodvfy (Debian dicom3tools) is needed: apt-get install dicom3tools"
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
