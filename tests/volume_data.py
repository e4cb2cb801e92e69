"""Volumes built from real LGG brain MRI slices: a NIfTI volume and a DICOM MR series with real geometry.

The LGG patients in ``shared/data/lgg_mri_segmentation`` are folders of 2D slices; these
helpers stack one patient's FLAIR channel into a volume with a realistic (oblique) geometry, so
round trips can check affine, orientation, slice order and the source references.
"""

from __future__ import annotations

import datetime
import random
import re
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PATIENT = "TCGA_CS_4942_19970222"
SPACING = (0.9375, 0.9375, 5.0)  # row, column, slice (mm)


def lgg_volume(shared_data: Path, patient: str = PATIENT, slices: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images, masks)``: the patient's FLAIR slices (``N×256×256`` uint16) and tumour masks, in slice order."""
    folder = shared_data / "lgg_mri_segmentation" / "kaggle_3m" / patient
    numbers = sorted(int(m.group(1)) for p in folder.glob("*.tif") if (m := re.search(r"_(\d+)\.tif$", p.name)))
    numbers = numbers[:slices] if slices else numbers
    images = np.stack([np.asarray(Image.open(folder / f"{patient}_{n}.tif"))[..., 1] for n in numbers])
    masks = np.stack([np.asarray(Image.open(folder / f"{patient}_{n}_mask.tif")) > 0 for n in numbers])
    return images.astype(np.uint16) * 16, masks  # 12-bit-like values, as MR scanners write


def oblique_affine() -> np.ndarray:
    """A RAS affine with a 10° tilt, anisotropic voxels and an off-centre origin."""
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([SPACING[1], SPACING[0], SPACING[2]])
    affine[:3, 3] = [-120.5, -98.25, -40.0]
    return affine


def write_nifti(path: Path, images: np.ndarray) -> np.ndarray:
    """Write ``images`` (slices first, as a viewer shows them) as a NIfTI volume; returns the affine.

    Slice ``k`` is stored so that medlens's reader (``np.rot90`` of ``data[:, :, k]``) shows
    ``images[k]``.
    """
    import nibabel

    data = np.stack([np.rot90(image, -1) for image in images], axis=2)
    affine = oblique_affine()
    image = nibabel.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    image.header["descrip"] = b"LGG FLAIR test volume"
    nibabel.save(image, str(path))
    return affine


def write_series(folder: Path, images: np.ndarray, *, shuffle: bool = True, seed: int = 0) -> list[Path]:
    """Write ``images`` as one MR series of single-frame files with real geometry tags.

    Files get random names (so only ``ImagePositionPatient`` gives the order) unless
    ``shuffle`` is false. Returns the files in slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(0.1), np.sin(0.1)])
    normal = np.cross(row_dir, col_dir)
    names = [f"IM{k:04d}.dcm" for k in range(len(images))]
    if shuffle:
        random.Random(seed).shuffle(names)
    files = []
    for k, image in enumerate(images):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^LGG", "LGG-4942", "19700101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.StudyDate, ds.StudyTime = "19970222", "101500"
        ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "A4942", "1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, k + 1
        ds.Manufacturer, ds.PositionReferenceIndicator = "medlens-test", ""
        ds.BodyPartExamined, ds.Laterality, ds.PatientOrientation = "BRAIN", "", ""
        ds.SeriesDescription = "AX FLAIR"
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = 120.0, 9000.0, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [*row_dir.tolist(), *col_dir.tolist()]
        ds.ImagePositionPatient = (np.array([-120.0, -110.0, -30.0]) + k * SPACING[2] * normal).round(4).tolist()
        ds.PixelSpacing = [SPACING[0], SPACING[1]]
        ds.SliceThickness, ds.SpacingBetweenSlices = SPACING[2], SPACING[2]
        ds.SliceLocation = round(float(k * SPACING[2]), 4)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = image.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = np.ascontiguousarray(image, dtype=np.uint16).tobytes()
        ds.InstanceCreationDate = datetime.date.today().strftime("%Y%m%d")
        path = folder / names[k]
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
    return files


def brightness_model(threshold: float = 0.45, gain: float = 60.0):
    """A 1×1-convolution 'segmenter': foreground where the model input exceeds ``threshold``.

    Its masks follow the image content slice by slice, so a misordered or mis-rotated
    volume cannot match the per-slice masks by chance.
    """
    import keras

    inputs = keras.Input((None, None, 1))
    layer = keras.layers.Conv2D(1, 1, activation="sigmoid")
    outputs = layer(inputs)
    model = keras.Model(inputs, outputs)
    layer.set_weights([np.full((1, 1, 1, 1), gain, np.float32), np.array([-gain * threshold], np.float32)])
    return model
