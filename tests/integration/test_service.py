"""`medlens serve` over real HTTP on loopback: endpoints, limits, errors, concurrency, the upload page."""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from browser import browse

from medlens.app.cli import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(run: Path, *options: str):
    """`medlens serve RUN` in its own process, until the block ends."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "medlens.app.cli", "serve", str(run), "--port", str(port),
                                *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.time() > deadline:
                raise AssertionError(f"server did not start: {process.stdout.read() if process.stdout else ''}")
            time.sleep(0.3)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _png_bomb() -> bytes:
    """A tiny PNG whose header claims 30000×30000 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _decode_png(text: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(text), np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.fixture(scope="module")
def expected_labels(tiny_run, phantom_dir, tmp_path_factory) -> dict[str, str]:
    """What `medlens predict` says for the phantoms the service is sent."""
    images = [*sorted((phantom_dir / "lesion").iterdir())[:4], *sorted((phantom_dir / "no_lesion").iterdir())[:4]]
    out = tmp_path_factory.mktemp("expected") / "out"
    assert main(["predict", str(tiny_run), *map(str, images), "--out", str(out)]) == 0
    return {Path(r["path"]).name: r["label"] for r in csv.DictReader((out / "predictions.csv").open())}


@pytest.mark.slow
def test_classification_service(tiny_run, phantom_dir, shared_data, expected_labels):
    good = {name: (phantom_dir / ("lesion" if (phantom_dir / "lesion" / name).exists() else "no_lesion") / name)
            for name in expected_labels}
    with serving(tiny_run, "--max-upload-mb", "1", "--explain", "gradcam") as (url, process):
        assert httpx.get(url + "/health").json()["task"] == "classification"
        model = httpx.get(url + "/model").json()
        assert model["class_names"] == ["no_lesion", "lesion"] and "Model card" in model["model_card"]
        schema = httpx.get(url + "/openapi.json").json()
        assert {"/predict", "/segment", "/health", "/model"} <= set(schema["paths"])
        assert "<form" in httpx.get(url + "/").text

        name, path = next(iter(good.items()))
        reply = httpx.post(url + "/predict", files={"file": (name, path.read_bytes(), "image/png")}, timeout=60)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["label"] == expected_labels[name] and sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        overlay = _decode_png(body["frames"][0]["explanations"]["gradcam"]["overlay_png_base64"])
        assert overlay.shape == (64, 64, 3)  # the original's size
        dicom = (shared_data / "dicom_samples" / "emri_small.dcm").read_bytes()
        frames = httpx.post(url + "/predict?explain=none", files={"file": ("scan.dcm", dicom)}, timeout=60).json()["frames"]
        assert len(frames) == 10 and "explanations" not in frames[0]

        bad = {
            "text.png": (b"<html>not an image</html>", 415, "not a supported image format"),
            "empty.png": (b"", 400, "empty"),
            "bomb.png": (_png_bomb(), 413, "limit"),
            "huge.png": (b"\x89PNG" + os.urandom(1_200_000), 413, "larger than 1 MB"),
            "cut.png": (path.read_bytes()[:200], 415, "truncated"),
        }
        for bad_name, (content, status, message) in bad.items():
            reply = httpx.post(url + "/predict", files={"file": (bad_name, content)}, timeout=60)
            assert reply.status_code == status and message in reply.json()["error"], (bad_name, reply.text)
            assert str(tiny_run) not in reply.text and "/tmp/" not in reply.json()["error"]  # no server paths leak
        assert httpx.post(url + "/predict", timeout=30).status_code == 422  # no file field
        # An unknown method is a 400 ('shap' is one now, so ask for one medlens does not have).
        assert httpx.post(url + "/predict?explain=xrai", files={"file": (name, path.read_bytes())}).status_code == 400
        assert httpx.post(url + "/segment", files={"file": (name, path.read_bytes())}).status_code == 409

        # Load: concurrent good and bad uploads; every good one right, every bad one a 4xx, no 5xx.
        before = _rss_mb(process.pid)
        jobs = [(n, p.read_bytes(), None) for n, p in good.items()] * 2
        jobs += [(n, c, s) for n, (c, s, _) in bad.items()] * 2
        with ThreadPoolExecutor(max_workers=12) as pool:
            replies = list(pool.map(lambda job: (job, httpx.post(url + "/predict", files={"file": (job[0], job[1])},
                                                                 timeout=120)), jobs))
        assert len(replies) == 26
        for (job_name, _, status), reply in replies:
            assert reply.status_code < 500, reply.text
            if status is None:
                assert reply.status_code == 200 and reply.json()["label"] == expected_labels[job_name]
            else:
                assert reply.status_code == status
        assert _rss_mb(process.pid) - before < 400  # bounded: uploads stream to disk, inference is serialised
        leftovers = [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("medlens-serve-*/*")]
        assert not [p for p in leftovers if p.stat().st_mtime > time.time() - 60]  # request folders removed


@pytest.mark.slow
def test_segmentation_service_and_upload_page_in_chromium(tiny_seg_run, phantom_dir, tmp_path):
    image = sorted((phantom_dir / "lesion").iterdir())[0]
    with serving(tiny_seg_run) as (url, _):
        reply = httpx.post(url + "/segment?explain=true", files={"file": ("x.png", image.read_bytes())}, timeout=60)
        assert reply.status_code == 200, reply.text
        frame = reply.json()["frames"][0]
        mask = _decode_png(frame["mask_png_base64"])
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert _decode_png(frame["seg_gradcam_png_base64"]).shape == (64, 64, 3)
        assert httpx.post(url + "/predict", files={"file": ("x.png", image.read_bytes())}).status_code == 409

        # The upload page, in a real browser: the image goes through the page's own upload code.
        data_url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        done = browse(f"{url}/?image={urllib.parse.quote(data_url, safe='')}", tmp_path, "--dump-dom")
        assert done.returncode == 0, done.stderr[-2000:]
        assert 'data-state="done"' in done.stdout, done.stdout[-3000:]
        assert 'id="label">Segmented' in done.stdout and 'alt="Seg-Grad-CAM"' in done.stdout


def test_serve_refuses_a_missing_run(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "run directory not found" in capsys.readouterr().err


@pytest.mark.slow
def test_token_audit_log_and_dynamic_batching(tiny_run, phantom_dir, expected_labels, tmp_path):
    token = "medlens-test-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    audit = tmp_path / "audit.jsonl"
    good = {name: (phantom_dir / ("lesion" if (phantom_dir / "lesion" / name).exists() else "no_lesion") / name)
            for name in expected_labels}
    name, path = next(iter(good.items()))
    auth = {"Authorization": f"Bearer {token}"}
    with serving(tiny_run, "--token-file", str(tmp_path / "token"), "--audit-log", str(audit), "--explain", "none",
                 "--batch-wait-ms", "50") as (url, _):
        assert httpx.get(url + "/health").status_code == 200  # no data: open for load balancers
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": token}):
            reply = httpx.post(url + "/predict", files={"file": (name, path.read_bytes())}, headers=headers)
            assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer")
        assert httpx.get(url + "/model").status_code == 401
        assert httpx.get(url + "/model", headers=auth).status_code == 200

        # 32 concurrent clients: every answer right, and fewer model calls than images.
        jobs = list(good.items()) * 4
        with ThreadPoolExecutor(max_workers=32) as pool:
            replies = list(pool.map(lambda job: (job[0], httpx.post(
                url + "/predict", files={"file": (job[0], job[1].read_bytes())}, headers=auth, timeout=120)), jobs))
        for job_name, reply in replies:
            assert reply.status_code == 200 and reply.json()["label"] == expected_labels[job_name], reply.text
        batching = httpx.get(url + "/health").json()["batching"]
        assert batching["images"] >= 32 and batching["model_calls"] < batching["images"]
        request_ids = {reply.headers["x-request-id"] for _, reply in replies}
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert {"time", "request_id", "client", "method", "endpoint", "status", "seconds", "input_sha256"} <= set(lines[0])
    assert request_ids <= {line["request_id"] for line in lines}
    statuses = [line["status"] for line in lines if line["endpoint"] == "/predict"]
    assert statuses.count(401) == 3 and statuses.count(200) == 32
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in good.values()}
    assert {line["input_sha256"] for line in lines if line["endpoint"] == "/predict" and line["status"] == 200} == digests
    text = audit.read_text()
    assert not any(n in text for n in good) and token not in text  # no file names, no secrets


def test_segment_service_takes_a_volume_and_a_zipped_series(tiny_seg_run, shared_data, tmp_path):
    import gzip
    import io
    import zipfile

    import nibabel
    import pydicom
    from fastapi.testclient import TestClient
    from volume_data import lgg_volume, write_nifti, write_series

    from medlens.app.service import create_app

    images, _ = lgg_volume(shared_data, slices=4)
    write_nifti(tmp_path / "flair.nii.gz", images)
    files = write_series(tmp_path / "series", images)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for k, f in enumerate(files):
            archive.write(f, f"../../escape-{k}.dcm" if k == 0 else f"DICOM/{f.name}")  # a hostile member name
        archive.writestr("README.txt", "not a slice")
    with TestClient(create_app(tiny_seg_run)) as client:
        reply = client.post("/segment", files={"file": ("flair.nii.gz", (tmp_path / "flair.nii.gz").read_bytes())})
        assert reply.status_code == 200, reply.text
        volume = reply.json()["volume"]
        assert volume["kind"] == "nifti" and volume["slices"] == 4 and len(reply.json()["frames"]) == 4
        mask = nibabel.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(volume["mask_nifti_base64"])))
        np.testing.assert_array_equal(mask.affine, nibabel.load(tmp_path / "flair.nii.gz").affine)

        reply = client.post("/segment", files={"file": ("series.zip", buffer.getvalue())})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["volume"]["kind"] == "dicom-series" and body["volume"]["slices"] == 4 and body["skipped"] == 1
        seg = pydicom.dcmread(io.BytesIO(base64.b64decode(body["volume"]["seg_dicom_base64"])))
        assert seg.Modality == "SEG" and seg.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID
        report = pydicom.dcmread(io.BytesIO(base64.b64decode(body["volume"]["report_dicom_base64"])))
        assert report.Modality == "SR" and report.StudyInstanceUID == seg.StudyInstanceUID
        assert report.CurrentRequestedProcedureEvidenceSequence  # it names the SEG and slices it measures
        assert not list(tmp_path.parent.glob("escape-*")) and not list(Path("/tmp").glob("escape-*"))

        reply = client.post("/segment", files={"file": ("bad.zip", b"PK\x03\x04 truncated")})
        assert reply.status_code == 415 and "not a readable zip" in reply.json()["error"]


def test_one_batcher_thread_serves_every_request_and_stops_with_the_service(tiny_run, phantom_dir):
    import threading

    from fastapi.testclient import TestClient

    from medlens.app.service import create_app

    image = sorted((phantom_dir / "lesion").iterdir())[0]
    with TestClient(create_app(tiny_run)) as client:
        for _ in range(3):
            assert client.post("/predict?explain=none", files={"file": ("a.png", image.read_bytes())}).status_code == 200
        batchers = [t for t in threading.enumerate() if t.name == "medlens-batcher"]
        assert len(batchers) == 1 and batchers[0].is_alive()
        assert client.get("/health").json()["batching"]["images"] == 3
    batchers[0].join(timeout=10)
    assert not batchers[0].is_alive()  # closed with the app


def test_a_service_that_never_batched_closes_cleanly(tiny_run):
    from fastapi.testclient import TestClient

    from medlens.app.service import create_app

    with TestClient(create_app(tiny_run)) as client:
        assert client.get("/health").status_code == 200


def test_the_token_comes_from_the_file_first_then_medlens_token(tmp_path, monkeypatch):
    from medlens.app.cli import _service_token
    from medlens.pipelines.errors import ConfigError

    monkeypatch.delenv("MEDLENS_TOKEN", raising=False)
    assert _service_token(None) is None  # no token anywhere: the service runs open
    monkeypatch.setenv("MEDLENS_TOKEN", "  from-the-environment \n")
    assert _service_token(None) == "from-the-environment"
    (tmp_path / "token").write_text("from-the-file\nsecond line ignored\n")
    assert _service_token(str(tmp_path / "token")) == "from-the-file"  # the file wins
    (tmp_path / "empty").write_text("\n")
    for path, message in ((tmp_path / "empty", "the file is empty"), (tmp_path / "nowhere", "cannot read it")):
        with pytest.raises(ConfigError, match=f"--token-file {path}: {message}"):
            _service_token(str(path))
