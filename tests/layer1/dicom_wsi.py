"""A tiny DICOM whole-slide image (VL Whole Slide Microscopy, TILED_FULL, uncompressed) built with pydicom.

One file per pyramid level, as scanners write them; OpenSlide opens the series from any one file of the folder.
Uncompressed Explicit VR Little Endian so a reader's pixels can be compared with the source exactly.
The attributes are those OpenSlide 4's DICOM reader and libdicom check (src/openslide-vendor-dicom.c, libdicom
src/dicom-file.c), plus the Study/Series/Frame of Reference identity that ties the levels into one slide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

WSI_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.77.1.6")  # VL Whole Slide Microscopy Image Storage


@dataclass(frozen=True)
class DicomWsiSpec:
    """Pyramid shape and physical scale; `mpp` is level 0's micrometres per pixel (square pixels), or None to
    write no Pixel Measures at all, as some converters do."""

    levels: int = 3
    tile: int = 256
    mpp: float | None = 0.5
    objective_power: float = 20.0


@dataclass(frozen=True)
class SeriesIds:
    """The UIDs every level shares: OpenSlide groups files into one slide by SeriesInstanceUID."""

    study: str
    series: str
    frame_of_reference: str

    @staticmethod
    def new() -> SeriesIds:
        return SeriesIds(generate_uid(), generate_uid(), generate_uid())


def pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Level k is the 2x2 box mean of level k-1 (rounded half up), so reduced levels are known exactly."""
    out = [image]
    for _ in range(levels - 1):
        prev = out[-1].astype(np.uint16)
        h, w = prev.shape[0] // 2, prev.shape[1] // 2
        blocks = prev[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).sum(axis=(1, 3))
        out.append(((blocks + 2) // 4).astype(np.uint8))
    return out


def tile_frames(image: np.ndarray, tile: int) -> np.ndarray:
    """Frames in TILED_FULL order (row-major tiles); edge tiles padded with white to full tile size."""
    h, w = image.shape[:2]
    rows, cols = -(-h // tile), -(-w // tile)
    padded = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    padded[:h, :w] = image
    return padded.reshape(rows, tile, cols, tile, 3).swapaxes(1, 2).reshape(rows * cols, tile, tile, 3)


def level_dataset(image: np.ndarray, level: int, spec: DicomWsiSpec, ids: SeriesIds) -> Dataset:
    """One pyramid level as a complete VL WSI instance (file meta included), ready for `save_as`."""
    h, w = image.shape[:2]
    frames = tile_frames(image, spec.tile)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = WSI_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ids.study, ids.series
    ds.FrameOfReferenceUID = ids.frame_of_reference
    ds.Modality = "SM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if level == 0 else \
        ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    ds.InstanceNumber = level + 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.Rows = ds.Columns = spec.tile
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    if spec.mpp is not None:
        spacing_mm = spec.mpp * 2**level / 1000.0
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w * spacing_mm, h * spacing_mm
        ds.SharedFunctionalGroupsSequence = Sequence([shared_pixel_measures(spacing_mm)])
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    optical.ObjectiveLensPower = spec.objective_power
    ds.OpticalPathSequence = Sequence([optical])
    ds.PixelData = frames.tobytes()
    return ds


def shared_pixel_measures(spacing_mm: float) -> Dataset:
    """The Shared Functional Groups item OpenSlide takes mpp from (PixelSpacing is row, column spacing in mm)."""
    measures = Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    return shared


def write_dicom_wsi(image: np.ndarray, folder: Path, spec: DicomWsiSpec = DicomWsiSpec()) -> Path:
    """Write `spec.levels` levels of the RGB `image` as `level<k>.dcm` in `folder`; return level 0's path."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = SeriesIds.new()
    paths = []
    for level, pixels in enumerate(pyramid(image, spec.levels)):
        path = folder / f"level{level}.dcm"
        level_dataset(pixels, level, spec, ids).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths[0]
