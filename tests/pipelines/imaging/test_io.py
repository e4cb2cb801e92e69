"""Tests for medlens.pipelines.imaging: synthetic files of every format, then the real shared samples."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from medlens.pipelines.errors import ImageReadError
from medlens.pipelines.imaging import (
    SUPPORTED_SUFFIXES,
    ImageRecord,
    list_images,
    read_frames,
    read_image,
    read_mask,
    read_npz,
    sniff_format,
)
from medlens.pipelines.imaging import record as io_record

# --------------------------------------------------------------------------- fixtures and builders


@pytest.fixture(scope="module")
def data_root() -> Path:
    """The shared real-data folder: $MEDLENS_DATA, else ../shared/data beside the repository."""
    root = Path(os.environ.get("MEDLENS_DATA", Path(__file__).resolve().parents[3] / "../shared/data")).resolve()
    assert root.is_dir(), f"shared data not found at {root}; set MEDLENS_DATA"
    return root


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    syntax: str = ExplicitVRLittleEndian,
    frames: bool = False,
    with_pixels: bool = True,
    **tags: object,
) -> Path:
    """Write a small DICOM file; ``pixels`` is H×W, H×W×3 or (frames) F×H×W."""
    file_meta = FileMetaDataset()
    file_meta.TransferSyntaxUID = syntax
    file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = Dataset()
    dataset.file_meta = file_meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = file_meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.PatientID = "P-001"
    dataset.Modality = "OT"
    colour = pixels.ndim == 3 and not frames
    dataset.Rows, dataset.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    dataset.SamplesPerPixel = 3 if colour else 1
    if colour:
        dataset.PlanarConfiguration = 0
    if frames:
        dataset.NumberOfFrames = pixels.shape[0]
    dataset.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    dataset.BitsAllocated = bits
    dataset.BitsStored = bits_stored or bits
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    if with_pixels:
        dataset.PixelData = pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, volume: np.ndarray, zooms: tuple[float, ...]) -> Path:
    image = nibabel.Nifti1Image(volume, np.eye(4))
    image.header.set_zooms(zooms)
    nibabel.save(image, str(path))
    return path


def gradient(height: int = 8, width: int = 6) -> np.ndarray:
    return np.arange(height * width, dtype=np.uint8).reshape(height, width) * 5


# --------------------------------------------------------------------------- sniff_format


def test_sniff_format_by_content_not_extension(tmp_path: Path) -> None:
    Image.fromarray(gradient()).save(tmp_path / "a.png")
    (tmp_path / "a.png").rename(tmp_path / "really_png.jpg")
    Image.fromarray(gradient()).save(tmp_path / "b.jpg", format="JPEG")
    Image.fromarray(gradient()).save(tmp_path / "c.bmp")
    Image.fromarray(gradient()).save(tmp_path / "d.gif")
    tifffile.imwrite(tmp_path / "e.tif", gradient())
    write_dicom(tmp_path / "f.dcm", gradient())
    write_nifti(tmp_path / "g.nii", np.zeros((3, 3, 3), np.float32), (1, 1, 1))
    write_nifti(tmp_path / "h.nii.gz", np.zeros((3, 3, 3), np.float32), (1, 1, 1))
    np.savez(tmp_path / "i.npz", train_images=np.zeros((1, 2, 2), np.uint8), train_labels=np.zeros(1))
    expected = {
        "really_png.jpg": "png",
        "b.jpg": "jpeg",
        "c.bmp": "bmp",
        "d.gif": "gif",
        "e.tif": "tiff",
        "f.dcm": "dicom",
        "g.nii": "nifti",
        "h.nii.gz": "nifti",
        "i.npz": "npz",
    }
    assert {name: sniff_format(tmp_path / name) for name in expected} == expected


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.png", b"", r"empty \(0 bytes\)"),
        ("notes.png", b"hello, this is text\n", "not a supported image format"),
        ("blob.bin", b"\x00\x01\x02\x03" * 100, "not a supported image format"),
        ("fake.dcm", b"just text pretending to be DICOM" * 10, "not a supported image format"),
        ("data.gz", gzip.compress(b"plain text", mtime=0), "not a readable NIfTI"),
        ("data.zip", b"PK\x03\x04" + b"\x00" * 40, "zip archive"),
    ],
)
def test_sniff_format_rejects_unusable_files(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        sniff_format(path)
    assert info.value.path == str(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ImageReadError):
        read_image(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)


# --------------------------------------------------------------------------- raster images


def test_grey_png_is_divided_by_255(tmp_path: Path) -> None:
    Image.fromarray(gradient()).save(tmp_path / "grey.png")
    record = read_image(tmp_path / "grey.png")
    assert isinstance(record, ImageRecord)
    assert record.pixels.shape == (8, 6, 1) and record.pixels.dtype == np.float32
    np.testing.assert_allclose(record.pixels[..., 0], gradient() / 255.0, atol=1e-7)
    assert record.spacing is None and record.frame is None and record.meta["format"] == "png"


def test_rgb_and_alpha_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
    rgba[..., 3] = [[255, 0], [51, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pixels = read_image(tmp_path / "rgba.png").pixels
    assert pixels.shape == (2, 2, 3)
    np.testing.assert_allclose(pixels[0, 0], [200 / 255, 100 / 255, 50 / 255], atol=1e-6)
    np.testing.assert_allclose(pixels[0, 1], [0, 0, 0])
    np.testing.assert_allclose(pixels[1, 0], np.array([200, 100, 50]) * 0.2 / 255, atol=1e-6)

    la = np.stack([np.full((2, 2), 200, np.uint8), np.array([[255, 0], [255, 0]], np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    pixels = read_image(tmp_path / "la.png").pixels
    assert pixels.shape == (2, 2, 1)
    np.testing.assert_allclose(pixels[..., 0], [[200 / 255, 0], [200 / 255, 0]], atol=1e-6)

    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "rgb.bmp")
    pixels = read_image(tmp_path / "rgb.bmp").pixels
    assert pixels.shape == (2, 2, 3)
    np.testing.assert_allclose(pixels[1, 1], [200 / 255, 100 / 255, 50 / 255], atol=1e-6)


def test_palette_images(tmp_path: Path) -> None:
    colour = Image.new("P", (3, 2))
    colour.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    colour.putdata([0, 1, 0, 1, 0, 1])
    colour.save(tmp_path / "colour.png")
    pixels = read_image(tmp_path / "colour.png").pixels
    assert pixels.shape == (2, 3, 3)
    np.testing.assert_allclose(pixels[0, 0], [1, 0, 0])
    np.testing.assert_allclose(pixels[0, 1], [0, 0, 1])

    grey = Image.new("P", (3, 2))
    grey.putpalette([v for i in range(256) for v in (i, i, i)])
    grey.putdata([0, 128, 255, 0, 128, 255])
    grey.save(tmp_path / "grey.gif")
    pixels = read_image(tmp_path / "grey.gif").pixels
    assert pixels.shape == (2, 3, 1)
    np.testing.assert_allclose(pixels[0, :, 0], [0, 128 / 255, 1], atol=1e-6)


def test_cmyk_jpeg_and_one_bit(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    pixels = read_image(tmp_path / "cmyk.jpg").pixels
    assert pixels.shape == (4, 4, 3)
    assert pixels[..., 0].mean() > 0.8 and pixels[..., 1].mean() < 0.2  # cyan/magenta 0, yellow 1 → red

    bits = Image.new("1", (4, 2))
    bits.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    bits.save(tmp_path / "bits.png")
    pixels = read_image(tmp_path / "bits.png").pixels
    assert pixels.shape == (2, 4, 1)
    np.testing.assert_array_equal(pixels[..., 0], [[0, 1, 0, 1], [1, 1, 0, 0]])


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    record = read_image(tmp_path / "rotated.jpg")
    assert record.pixels.shape == (20, 10, 3)
    assert record.meta["exif_orientation"] == 6


def test_16bit_png_minmax_and_dtype_normalisation(tmp_path: Path) -> None:
    values = np.linspace(1000, 3000, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "deep.png")
    record = read_image(tmp_path / "deep.png")
    pixels = record.pixels[..., 0]
    assert pixels.min() == 0.0 and pixels.max() == 1.0
    assert abs(float(pixels.flat[np.argmin(np.abs(values - 2000))]) - 0.5) < 0.02
    assert record.meta["original_dtype"] == "uint16"
    assert (record.meta["original_min"], record.meta["original_max"]) == (1000.0, 3000.0)
    assert record.meta["scaling"] == "minmax"

    by_dtype = read_image(tmp_path / "deep.png", normalize="dtype").pixels[..., 0]
    np.testing.assert_allclose(by_dtype, values / 65535.0, atol=1e-6)
    with pytest.raises(ValueError, match="normalize"):
        read_image(tmp_path / "deep.png", normalize="bogus")  # type: ignore[arg-type]


def test_16bit_colour_png_keeps_16_bits(tmp_path: Path) -> None:
    import cv2

    rgb = np.zeros((4, 4, 3), np.uint16)
    rgb[..., 0] = 1000
    rgb[..., 1] = 2000
    rgb[..., 2] = np.arange(16).reshape(4, 4) + 3000
    assert cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])
    pixels = read_image(tmp_path / "rgb16.png").pixels
    assert pixels.shape == (4, 4, 3)
    assert pixels[..., 0].max() == 0.0 and pixels[..., 2].max() == 1.0
    # 16 distinct blue levels survive, which an 8-bit reduction would merge.
    assert len(np.unique(pixels[..., 2])) == 16


def test_tiff_variants(tmp_path: Path) -> None:
    grey16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 100) + 500
    tifffile.imwrite(tmp_path / "grey16.tif", grey16)
    pixels = read_image(tmp_path / "grey16.tif").pixels
    assert pixels.shape == (3, 4, 1) and pixels.min() == 0 and pixels.max() == 1

    rgb16 = np.stack([grey16, grey16 * 2, grey16 + 7], -1).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    record = read_image(tmp_path / "rgb16.tif")
    assert record.pixels.shape == (3, 4, 3) and record.meta["decoder"] == "tifffile"
    assert len(np.unique(record.pixels[..., 0])) == 12  # Pillow would reduce these to 8 bits

    floats = np.array([[0.5, np.nan], [1.5, 2.5]], np.float32)
    tifffile.imwrite(tmp_path / "float.tif", floats)
    record = read_image(tmp_path / "float.tif")
    np.testing.assert_allclose(record.pixels[..., 0], [[0, 0], [0.5, 1]])
    assert record.meta["nan_replaced"] == 1

    pages = np.stack([np.full((2, 2), 10, np.uint8), np.full((2, 2), 200, np.uint8)])
    tifffile.imwrite(tmp_path / "pages.tif", pages)
    assert read_image(tmp_path / "pages.tif", frame=1).pixels.max() == pytest.approx(200 / 255)
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(tmp_path / "pages.tif", frame=2)


def test_pixel_limit_and_pillow_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(io_record, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="image is 50×40 pixels, above the limit of 1000"):
        read_image(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="above the limit"):
        read_mask(tmp_path / "big.png")
    monkeypatch.setattr(io_record, "MAX_IMAGE_PIXELS", 10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageReadError, match="too large to decode safely"):
        read_image(tmp_path / "big.png")


@pytest.mark.parametrize("suffix", ["png", "jpeg"])
def test_truncated_files(tmp_path: Path, suffix: str) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    rng = np.random.default_rng(0)
    full = tmp_path / f"full.{suffix}"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, format=suffix.upper())
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    with pytest.raises(ImageReadError, match=f"truncated or corrupt {suffix.upper()} data"):
        read_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --------------------------------------------------------------------------- DICOM (synthetic)


def test_dicom_monochrome1_window_inverts_and_clips(tmp_path: Path) -> None:
    stored = np.array([[0, 50, 100], [150, 200, 4095]], np.uint16)
    path = write_dicom(
        tmp_path / "m1.dcm",
        stored,
        photometric="MONOCHROME1",
        bits_stored=12,
        WindowCenter=100,
        WindowWidth=100,
        PixelSpacing=[0.5, 0.25],
    )
    record = read_image(path)
    pixels = record.pixels[..., 0]
    # Linear window of centre 100, width 100: 50 and below → 0, above 149 → 1, then MONOCHROME1 flips.
    assert pixels[1, 2] == 0.0  # the brightest stored value is the darkest displayed
    assert pixels[0, 0] == 1.0 and pixels[0, 1] == 1.0
    assert pixels[1, 0] == 0.0 and pixels[1, 1] == 0.0
    assert pixels[0, 2] == pytest.approx(0.5, abs=0.01)
    assert record.spacing == (0.5, 0.25)
    assert record.meta["window"] == {"center": 100.0, "width": 100.0, "function": "LINEAR"}
    assert record.meta["photometric"] == "MONOCHROME1" and record.meta["inverted"] is True
    assert record.meta["patient_id"] == "P-001" and record.meta["modality"] == "OT"
    for key in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        assert record.meta[key]
    assert record.meta["number_of_frames"] == 1


def test_dicom_rescale_applies_before_window(tmp_path: Path) -> None:
    stored = np.array([[0, 1000], [1040, 2000]], np.int16)
    path = write_dicom(
        tmp_path / "ct.dcm", stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400
    )
    record = read_image(path)
    hu = stored.astype(float) - 1024
    expected = np.clip((hu - 39.5) / 399 + 0.5, 0, 1)
    np.testing.assert_allclose(record.pixels[..., 0], expected, atol=1e-5)
    assert record.meta["modality_lut"] == {"slope": 1.0, "intercept": -1024.0}


def test_dicom_without_window_is_minmax(tmp_path: Path) -> None:
    stored = np.array([[100, 200], [300, 500]], np.uint16)
    record = read_image(write_dicom(tmp_path / "plain.dcm", stored))
    np.testing.assert_allclose(record.pixels[..., 0], [[0, 0.25], [0.5, 1]])
    assert record.meta["window"] == {"minmax": (100.0, 500.0)}


def test_dicom_multiframe(tmp_path: Path) -> None:
    stack = np.stack([np.full((3, 4), 10 * (i + 1), np.uint16) for i in range(5)])
    stack[0, 0, 0] = 0
    path = write_dicom(tmp_path / "multi.dcm", stack, frames=True)
    first = read_image(path)
    assert first.frame == 0 and first.pixels.shape == (3, 4, 1)
    third = read_image(path, frame=2)
    assert third.frame == 2
    assert third.pixels[0, 0, 0] == pytest.approx(30 / 50)  # min–max over all frames: 0..50
    records = read_frames(path)
    assert [r.frame for r in records] == [0, 1, 2, 3, 4]
    assert records[4].pixels.max() == 1.0
    with pytest.raises(ImageReadError, match="frame 5 out of range: the DICOM has 5 frame"):
        read_image(path, frame=5)
    with pytest.raises(ImageReadError, match="out of range"):
        read_image(path, frame=-1)


def test_dicom_rgb_and_ybr(tmp_path: Path) -> None:
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0
    record = read_image(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    assert record.pixels.shape == (2, 3, 3)
    np.testing.assert_allclose(record.pixels[0, 0], [1, 128 / 255, 0], atol=1e-6)

    ybr = np.zeros((2, 2, 3), np.uint8)
    ybr[..., 0], ybr[..., 1], ybr[..., 2] = 100, 128, 128  # neutral chroma: grey 100
    record = read_image(write_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL"))
    np.testing.assert_allclose(record.pixels[0, 0], [100 / 255] * 3, atol=2 / 255)


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "sr.dcm", gradient(), with_pixels=False)
    with pytest.raises(ImageReadError, match="DICOM file has no pixel data"):
        read_image(path)


def test_dicom_compressed_without_decoder(tmp_path: Path) -> None:
    from pydicom.pixels import get_decoder

    path = write_dicom(
        tmp_path / "jls.dcm", np.zeros((4, 4), np.uint8), syntax=JPEGLSLossless, with_pixels=False
    )
    dataset = pydicom.dcmread(path)
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xf7not-really-jpeg-ls\xff\xd9"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="JPEG-LS Lossless") as info:
        read_image(path)
    if get_decoder(JPEGLSLossless).is_available:
        assert "corrupt" in str(info.value)
    else:
        assert "install pylibjpeg" in str(info.value) and "gdcm" in str(info.value)


def test_dicom_corrupt_jpeg_baseline(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "jpg.dcm", np.zeros((4, 4), np.uint8), syntax=JPEGBaseline8Bit, with_pixels=False
    )
    dataset = pydicom.dcmread(path)
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xe0junk\xff\xd9"])
    dataset["PixelData"].VR = "OB"
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="JPEG Baseline"):
        read_image(path)


def test_dicom_without_preamble_needs_dcm_suffix(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "full.dcm", np.arange(16, dtype=np.uint8).reshape(4, 4))
    dataset = pydicom.dcmread(path)
    del dataset.file_meta
    dataset.preamble = None
    bare = tmp_path / "bare.dcm"
    pydicom.dcmwrite(bare, dataset, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    assert sniff_format(bare) == "dicom"
    np.testing.assert_allclose(read_image(bare).pixels[..., 0], np.arange(16).reshape(4, 4) / 15, atol=1e-6)
    renamed = bare.rename(tmp_path / "bare.bin")
    with pytest.raises(ImageReadError, match="not a supported image format"):
        sniff_format(renamed)


# --------------------------------------------------------------------------- NIfTI


def test_nifti_3d_slices_and_spacing(tmp_path: Path) -> None:
    volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = write_nifti(tmp_path / "vol.nii.gz", volume, (1.0, 2.0, 3.0))
    record = read_image(path)
    assert record.frame == 3 and record.meta["axis"] == 2
    expected = np.rot90(volume[:, :, 3] / volume.max())
    np.testing.assert_allclose(record.pixels[..., 0], expected, atol=1e-6)
    assert record.pixels.shape == (5, 4, 1)
    assert record.spacing == (2.0, 1.0)

    side = read_image(path, axis=0, index=1)
    np.testing.assert_allclose(side.pixels[..., 0], np.rot90(volume[1] / volume.max()), atol=1e-6)
    assert side.spacing == (3.0, 2.0)

    assert len(read_frames(path)) == 6
    assert [r.frame for r in read_frames(path, axis=0)] == [0, 1, 2, 3]
    with pytest.raises(ImageReadError, match="slice 6 out of range 0..5 along axis 2"):
        read_image(path, index=6)
    with pytest.raises(ValueError, match="axis"):
        read_image(path, axis=3)


def test_nifti_4d_uses_first_volume(tmp_path: Path) -> None:
    volume = np.zeros((3, 3, 3, 2), np.float32)
    volume[..., 0] = np.arange(27).reshape(3, 3, 3)
    volume[..., 1] = 1000
    record = read_image(write_nifti(tmp_path / "fmri.nii", volume, (1, 1, 1, 2)))
    assert record.meta["volume"] == 0 and record.meta["n_volumes"] == 2
    assert record.pixels.max() <= 1.0 and record.meta["window"] == {"minmax": (0.0, 26.0)}


def test_nifti_nan_and_inf_are_replaced(tmp_path: Path) -> None:
    volume = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    volume[0, 0, 1] = np.nan
    volume[1, 1, 1] = np.inf
    volume[2, 2, 1] = -np.inf
    record = read_image(write_nifti(tmp_path / "nan.nii", volume, (1, 1, 1)))
    assert record.meta["nan_replaced"] == 3
    assert np.all(np.isfinite(record.pixels))
    assert record.pixels.min() == 0.0 and record.pixels.max() <= 1.0
    assert record.meta["window"] == {"minmax": (0.0, 26.0)}


def test_nifti_2d(tmp_path: Path) -> None:
    plane = np.arange(12, dtype=np.int16).reshape(3, 4)
    record = read_image(write_nifti(tmp_path / "plane.nii", plane, (0.5, 0.7)))
    assert record.pixels.shape == (4, 3, 1)
    np.testing.assert_allclose(record.pixels[..., 0], np.rot90(plane / 11), atol=1e-6)
    assert record.spacing == pytest.approx((0.7, 0.5))


# --------------------------------------------------------------------------- npz


def test_read_npz_layouts(tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    np.savez(
        path,
        train_images=np.zeros((4, 5, 5, 1), np.uint8),
        train_labels=np.array([[0], [1], [2], [1]], np.uint8),
        val_images=np.zeros((2, 5, 5, 3), np.uint8),
        val_labels=np.array([[1, 0, 1], [0, 0, 1]]),
    )
    splits = read_npz(path)
    assert set(splits) == {"train", "val"}
    images, labels = splits["train"]
    assert images.shape == (4, 5, 5) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 1]
    assert splits["val"][1].shape == (2, 3)  # multi-label kept

    with pytest.raises(ImageReadError, match="use read_npz"):
        read_image(path)


def test_read_npz_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    np.savez(path, train_images=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(
        ImageReadError, match=r"missing key\(s\) \['train_labels'\]; keys are \['train_images'\]"
    ):
        read_npz(path)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(ImageReadError, match=r"keys are \['x'\]") as info:
        read_npz(other)
    assert str(other) in str(info.value)
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, test_images=np.zeros((2, 3, 3), np.uint8), test_labels=np.zeros(3))
    with pytest.raises(ImageReadError, match="test_labels has shape"):
        read_npz(mismatch)


# --------------------------------------------------------------------------- masks


def test_read_mask_keeps_values(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)
    indexed = Image.fromarray(labels, "P")
    indexed.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    indexed.save(tmp_path / "classes.png")
    mask = read_mask(tmp_path / "classes.png")
    assert mask.dtype == np.uint8 and mask.shape == (2, 3)
    np.testing.assert_array_equal(mask, labels)

    binary = np.array([[0, 255], [255, 0]], np.uint8)
    Image.fromarray(binary).save(tmp_path / "binary.gif")
    np.testing.assert_array_equal(read_mask(tmp_path / "binary.gif"), binary)

    Image.fromarray(np.stack([binary] * 3, -1)).save(tmp_path / "rgb.tif")
    np.testing.assert_array_equal(read_mask(tmp_path / "rgb.tif"), binary)

    bits = Image.new("1", (2, 2))
    bits.putdata([0, 1, 1, 0])
    bits.save(tmp_path / "bits.bmp")
    np.testing.assert_array_equal(read_mask(tmp_path / "bits.bmp"), [[0, 1], [1, 0]])

    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "wide.png")
    with pytest.raises(ImageReadError, match="0..255"):
        read_mask(tmp_path / "wide.png")
    with pytest.raises(ImageReadError, match="masks must be"):
        read_mask(write_dicom(tmp_path / "m.dcm", gradient()))


# --------------------------------------------------------------------------- list_images


def test_list_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for name in [
        "b.PNG",
        "a/c.JPG",
        "a/deep/d.nii.gz",
        "a/e.dcm",
        "x.txt",
        ".secret.png",
        ".hidden/f.png",
        "g.npz",
    ]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    found = list_images(tmp_path)
    relative = [p.relative_to(tmp_path).as_posix() for p in found]
    assert relative == ["a/c.JPG", "a/deep/d.nii.gz", "a/e.dcm", "b.PNG"]
    assert found == sorted(found)
    assert [p.name for p in list_images(tmp_path, recursive=False)] == ["b.PNG"]
    assert ".nii.gz" in SUPPORTED_SUFFIXES and ".dcm" in SUPPORTED_SUFFIXES
    with pytest.raises(ImageReadError, match="folder not found"):
        list_images(tmp_path / "missing")
    with pytest.raises(ImageReadError, match="not a folder"):
        list_images(tmp_path / "b.PNG")


# --------------------------------------------------------------------------- real shared data


def test_every_real_dicom_sample_reads(data_root: Path) -> None:
    files = sorted((data_root / "dicom_samples").glob("*.dcm"))
    assert len(files) == 8
    for path in files:
        record = read_image(path)
        assert record.pixels.dtype == np.float32 and record.pixels.ndim == 3
        assert 0.0 <= record.pixels.min() and record.pixels.max() <= 1.0, path.name
        assert record.pixels.max() > record.pixels.min(), path.name
        assert record.meta["sop_instance_uid"], path.name


def test_real_ct_rescale(data_root: Path) -> None:
    path = data_root / "dicom_samples" / "CT_small.dcm"
    record = read_image(path)
    assert record.pixels.shape == (128, 128, 1)
    assert record.meta["modality"] == "CT"
    slope, intercept = record.meta["modality_lut"]["slope"], record.meta["modality_lut"]["intercept"]
    low, high = record.meta["window"]["minmax"]
    assert -1100 < low < 0 < high < 3000  # Hounsfield units, not raw stored values
    stored = pydicom.dcmread(path).pixel_array.astype(float)
    expected = (stored * slope + intercept - low) / (high - low)
    np.testing.assert_allclose(record.pixels[..., 0], expected, atol=1e-5)
    assert record.spacing == pytest.approx((0.661468, 0.661468))


def test_real_ct_window_clips(data_root: Path) -> None:
    path = data_root / "dicom_samples" / "693_UNCR.dcm"
    record = read_image(path)
    assert record.meta["window"]["center"] == 40 and record.meta["window"]["width"] == 100
    dataset = pydicom.dcmread(path)
    hu = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    expected = np.clip((hu - 39.5) / 99 + 0.5, 0, 1)
    np.testing.assert_allclose(record.pixels[..., 0], expected, atol=1e-5)
    # A brain window (-10..90 HU) saturates air and bone.
    assert np.mean(record.pixels == 0.0) > 0.2 and np.mean(record.pixels == 1.0) > 0.01


def test_real_voi_lut_sequence(data_root: Path) -> None:
    path = data_root / "dicom_samples" / "vlut_04.dcm"
    record = read_image(path)
    assert "voi_lut" in record.meta["window"]
    stored = pydicom.dcmread(path).pixel_array
    # This LUT maps 0..255 linearly onto 0..65535.
    np.testing.assert_allclose(record.pixels[..., 0], stored / 255.0, atol=1e-5)


def test_real_modality_lut_sequence(data_root: Path) -> None:
    path = data_root / "dicom_samples" / "mlut_18.dcm"
    record = read_image(path)
    assert record.meta["modality_lut"] == "sequence"
    assert record.pixels.shape == (512, 512, 1)
    assert record.pixels.min() == 0.0 and record.pixels.max() == 1.0


def test_real_ultrasound_rgb(data_root: Path) -> None:
    record = read_image(data_root / "dicom_samples" / "US1_UNCR.dcm")
    assert record.pixels.shape == (480, 640, 3)
    assert record.meta["photometric"] == "RGB" and record.meta["modality"] == "US"


def test_real_multiframe_mri(data_root: Path) -> None:
    path = data_root / "dicom_samples" / "emri_small.dcm"
    records = read_frames(path)
    assert len(records) == 10
    assert [r.frame for r in records] == list(range(10))
    assert all(r.pixels.shape == (64, 64, 1) for r in records)
    np.testing.assert_array_equal(read_image(path, frame=7).pixels, records[7].pixels)
    with pytest.raises(ImageReadError, match="frame 10 out of range"):
        read_image(path, frame=10)


def test_real_png_named_jpg(data_root: Path) -> None:
    path = data_root / "brain_mri_yes_no" / "no" / "No15.jpg"
    assert sniff_format(path) == "png"
    record = read_image(path)
    assert record.pixels.shape == (400, 393, 3)
    assert record.meta["mode"] == "RGBA"
    assert 0.0 <= record.pixels.min() and record.pixels.max() <= 1.0


@pytest.mark.parametrize(
    ("name", "sizes", "image_shape", "classes"),
    [
        ("breastmnist.npz", (546, 78, 156), (28, 28), {0, 1}),
        ("retinamnist.npz", (1080, 120, 400), (28, 28, 3), {0, 1, 2, 3, 4}),
        ("pneumoniamnist_reconstructed.npz", (4708, 524, 624), (28, 28), {0, 1}),
    ],
)
def test_real_medmnist(
    data_root: Path, name: str, sizes: tuple[int, ...], image_shape: tuple, classes: set
) -> None:
    splits = read_npz(data_root / "medmnist" / name)
    assert list(splits) == ["train", "val", "test"]
    for split, size in zip(("train", "val", "test"), sizes, strict=True):
        images, labels = splits[split]
        assert images.shape == (size, *image_shape) and images.dtype == np.uint8
        assert labels.shape == (size,) and labels.dtype == np.int64
        assert set(np.unique(labels).tolist()) == classes


def test_real_masks(data_root: Path) -> None:
    vessels = read_mask(data_root / "drive" / "test" / "1st_manual" / "01_manual1.gif")
    assert vessels.shape == (584, 565) and set(np.unique(vessels).tolist()) == {0, 255}
    fundus = read_image(data_root / "drive" / "test" / "images" / "01_test.tif")
    assert fundus.pixels.shape == (584, 565, 3)
    lgg = sorted((data_root / "lgg_mri_segmentation" / "kaggle_3m").glob("*/*_mask.tif"))[0]
    mask = read_mask(lgg)
    assert mask.ndim == 2 and set(np.unique(mask).tolist()) <= {0, 255}
