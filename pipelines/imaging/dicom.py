"""DICOM images: pydicom with modality LUT / rescale, then VOI LUT or window, then MONOCHROME1 inversion."""


from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.errors import ImageReadError
from medlens.pipelines.imaging.record import ImageRecord, _check_size, _minmax, _one_line

__all__: list[str] = []

logger = logging.getLogger(__name__)

#: pydicom names some decoder dependencies by import name; pip knows them as these.
_PIP_NAMES = {"gdcm": "python-gdcm"}


def _dicom_text(dataset: Any, keyword: str) -> str | None:
    value = dataset.get(keyword)
    return None if value is None or value == "" else str(value)


def _dicom_spacing(dataset: Any) -> tuple[tuple[float, float] | None, str | None]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        try:
            if value is not None and len(value) == 2:
                return (float(value[0]), float(value[1])), keyword
        except (TypeError, ValueError):
            continue
    return None, None


def _open_dicom(path: Path) -> Any:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        dataset = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad files
        raise ImageReadError(path, f"corrupt DICOM file ({_one_line(exc)})") from exc
    if "TransferSyntaxUID" not in dataset.file_meta:
        # Preamble-less files carry no file meta; use the encoding pydicom detected.
        implicit = getattr(dataset, "original_encoding", (True, True))[0]
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return dataset


#: DICOM objects that carry pixels but are not images to classify or segment (a medlens result, say).
_NOT_IMAGES = {"1.2.840.10008.5.1.4.1.1.66.4": "a DICOM Segmentation (SEG)",
               "1.2.840.10008.5.1.4.1.1.66.5": "a DICOM Surface Segmentation",
               "1.2.840.10008.5.1.4.1.1.30": "a DICOM Parametric Map",
               "1.2.840.10008.5.1.4.1.1.481.3": "an RT Structure Set",
               "1.2.840.10008.5.1.4.1.1.88.22": "a DICOM Structured Report (SR)",
               "1.2.840.10008.5.1.4.1.1.88.33": "a DICOM Structured Report (SR)",
               "1.2.840.10008.5.1.4.1.1.88.34": "a DICOM Structured Report (SR)"}


def _decode_dicom(path: Path, dataset: Any) -> np.ndarray:
    kind = _NOT_IMAGES.get(str(dataset.get("SOPClassUID", "")))
    if kind:
        raise ImageReadError(path, f"is {kind}, not an image to read")
    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(path, "DICOM file has no pixel data")
    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(path, "DICOM file has pixel data but no Rows/Columns") from exc
    _check_size(path, columns, rows)
    try:
        return np.asarray(dataset.pixel_array)
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise RuntimeError, ValueError...
        if getattr(syntax, "is_compressed", False) and not _decoder_available(syntax):
            raise ImageReadError(
                path,
                f"cannot decode {syntax.name} ({syntax}) pixel data: no decoder installed; "
                f"{_decoder_install_hint(syntax)}",
            ) from exc
        name = f"{syntax.name} " if getattr(syntax, "is_compressed", False) else ""
        raise ImageReadError(path, f"corrupt DICOM {name}pixel data ({_one_line(exc)})") from exc


def _decoder_available(syntax: Any) -> bool:
    """True when pydicom has a working decoder plugin for ``syntax``."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except Exception:  # noqa: BLE001 - unknown transfer syntax: no decoder
        return False


def _decoder_install_hint(syntax: Any) -> str:
    """``pip install`` commands that add a decoder for ``syntax`` (from the plugins pydicom lists as missing)."""
    from pydicom.pixels import get_decoder

    generic = (
        "install pylibjpeg (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) "
        "or gdcm (pip install python-gdcm)"
    )
    try:
        missing = list(get_decoder(syntax).missing_dependencies)
    except Exception:  # noqa: BLE001 - unknown transfer syntax: no plugin list
        return generic
    commands = []
    for entry in missing:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"
        _, _, needs = entry.partition(" - requires ")
        names = [re.split(r"[<>=!~ ]", part.strip(), maxsplit=1)[0] for part in needs.split(" and ")]
        names = [_PIP_NAMES.get(name, name) for name in names if name and name != "numpy"]
        if names:
            commands.append("pip install " + " ".join(names))
    return ", or ".join(commands) if commands else generic


def _unit_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` (a VOI output range) linearly onto ``[0, 1]``."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _dicom_grey(path: Path, dataset: Any, frames: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Modality LUT, VOI (LUT or window, else min–max over all frames) and MONOCHROME1 inversion."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    values = apply_modality_lut(frames, dataset)
    if "ModalityLUTSequence" in dataset:
        meta["modality_lut"] = "sequence"
    elif "RescaleSlope" in dataset or "RescaleIntercept" in dataset:
        meta["modality_lut"] = {
            "slope": float(dataset.get("RescaleSlope", 1.0) or 1.0),
            "intercept": float(dataset.get("RescaleIntercept", 0.0) or 0.0),
        }
    # Float pixel data or a NaN rescale can hold NaN/inf: scale over the finite values, then 0.
    nonfinite = ~np.isfinite(values) if values.dtype.kind == "f" else None
    if nonfinite is not None and nonfinite.any():
        if nonfinite.all():
            rescale = meta.get("modality_lut")
            if isinstance(rescale, dict):
                raise ImageReadError(
                    path,
                    f"DICOM pixel values are all NaN or infinite after rescale "
                    f"(slope {rescale['slope']}, intercept {rescale['intercept']})",
                )
            raise ImageReadError(path, "DICOM pixel values are all NaN or infinite")
        meta["nan_replaced"] = int(nonfinite.sum())
        values = np.where(nonfinite, values[~nonfinite].min(), values)
    else:
        nonfinite = None
    scaled: np.ndarray | None = None
    try:
        voi_sequence = dataset.get("VOILUTSequence")
        if voi_sequence:
            item = voi_sequence[0]
            count, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
            lut_input = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
            out = apply_voi_lut(lut_input, dataset, index=0, prefer_lut=True)
            # The LUT's output range: run every input it maps (first value read unsigned or signed).
            starts = {first, first - 65536 if first >= 32768 else first}
            probe = np.concatenate([np.arange(start, start + count, dtype=np.int64) for start in starts])
            lut_out = apply_voi_lut(probe, dataset, index=0, prefer_lut=True)
            low, high = float(lut_out.min()), float(lut_out.max())
            meta["window"] = {
                "voi_lut": str(item.get("LUTExplanation", "")) or "VOI LUT 0",
                "range": (low, high),
            }
            scaled = _unit_range(out, low, high)
        elif "WindowCenter" in dataset and "WindowWidth" in dataset:
            center_value, width_value = dataset.WindowCenter, dataset.WindowWidth
            center = float(center_value[0] if dataset["WindowCenter"].VM > 1 else center_value)
            width = float(width_value[0] if dataset["WindowWidth"].VM > 1 else width_value)
            if width <= 0:
                raise ValueError(f"window width {width} is not positive")
            out = apply_windowing(values, dataset, 0)
            # pydicom maps the window onto the stored bit range; probe far outside it to read that range.
            reach = 50.0 * max(width, 1.0) + abs(center)
            bounds = apply_windowing(np.array([center - reach, center + reach]), dataset, 0)
            function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
            meta["window"] = {"center": center, "width": width, "function": function}
            scaled = _unit_range(out, float(bounds.min()), float(bounds.max()))
    except Exception as exc:  # noqa: BLE001 - a broken VOI never stops reading; min–max instead
        logger.warning("%s: ignoring unusable VOI LUT/window (%s); using min-max", path, _one_line(exc))
        meta["voi_error"] = _one_line(exc)
        scaled = None
    if scaled is None:
        scaled, low, high = _minmax(values)
        meta["window"] = {"minmax": (low, high)}
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    invert = photometric == "MONOCHROME1"
    if str(dataset.get("PresentationLUTShape", "")).upper() == "INVERSE":
        invert = not invert
    if invert:
        scaled = 1.0 - scaled
        meta["inverted"] = True
    scaled = np.array(scaled, dtype=np.float32)
    if nonfinite is not None:
        scaled[nonfinite] = 0.0
    return scaled


def _dicom_colour(dataset: Any, frames: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Scale colour DICOM samples (already RGB after pydicom's decoding) to ``[0, 1]``."""
    from pydicom.pixels import apply_color_lut

    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        frames = apply_color_lut(frames, dataset)
        bits = 8 if frames.dtype == np.uint8 else 16
    else:
        bits = int(dataset.get("BitsStored", 8) or 8)
        if photometric.startswith("YBR") and photometric not in ("YBR_ICT", "YBR_RCT"):
            meta["colour_converted"] = "pydicom"
    return np.clip(frames.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)


def _read_dicom(path: Path, frame: int | None, all_frames: bool) -> list[ImageRecord]:
    dataset = _open_dicom(path)
    array = _decode_dicom(path, dataset)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    n_frames = int(dataset.get("NumberOfFrames", 1) or 1)
    frames = array if n_frames > 1 else array[None]
    meta: dict[str, Any] = {
        "format": "dicom",
        "modality": _dicom_text(dataset, "Modality"),
        "photometric": photometric,
        "patient_id": _dicom_text(dataset, "PatientID"),
        "study_instance_uid": _dicom_text(dataset, "StudyInstanceUID"),
        "series_instance_uid": _dicom_text(dataset, "SeriesInstanceUID"),
        "sop_instance_uid": _dicom_text(dataset, "SOPInstanceUID"),
        "number_of_frames": n_frames,
        "transfer_syntax": str(dataset.file_meta.TransferSyntaxUID.name),
        "original_dtype": str(array.dtype),
    }
    wanted = list(range(n_frames)) if all_frames else [0 if frame is None else frame]
    for index in wanted:
        if not 0 <= index < n_frames:
            raise ImageReadError(path, f"frame {index} out of range: the DICOM has {n_frames} frame(s)")
    if samples == 1 and photometric != "PALETTE COLOR":
        # Min–max (when no window is given) runs over every frame, so frames share one scale.
        pixels = _dicom_grey(path, dataset, frames, meta)[..., None]
    else:
        pixels = _dicom_colour(dataset, frames, meta)
        if pixels.ndim == 3:
            pixels = pixels[..., None]
    spacing, source = _dicom_spacing(dataset)
    if source:
        meta["spacing_source"] = source
    single = n_frames == 1 and not all_frames and frame is None
    return [
        ImageRecord(
            pixels=np.ascontiguousarray(pixels[index]),
            path=str(path),
            spacing=spacing,
            meta=dict(meta),
            frame=None if single else index,
        )
        for index in wanted
    ]
