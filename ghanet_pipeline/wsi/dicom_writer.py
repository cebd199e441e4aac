"""Write a slide as a DICOM WSI folder (tests, demos): lossless frames, so pixels equal the source's.

Each pyramid level of the source (as OpenSlide decodes it) becomes one ``VOLUME`` instance
(VL Whole Slide Microscopy Image, ``TILED_FULL``, 256 px frames) with the level's um/px as
``PixelSpacing``; a ``LABEL``, an ``OVERVIEW`` and a ``THUMBNAIL`` instance are added as scanners do.
Frames are uncompressed (Explicit VR Little Endian, which OpenSlide reads) or RLE Lossless (which
OpenSlide does not decode: the case for the wsidicom reader). pydicom is imported on use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dicom import VL_WSI

TILE = 256


def _instance(arr: np.ndarray, mpp: float, image_type: str, uids: dict[str, str], number: int,
              rle: bool, tile: int = TILE):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    h, w = arr.shape[:2]
    ny, nx = -(-h // tile), -(-w // tile)
    frames = np.full((ny * nx, tile, tile, 3), 255, np.uint8)
    for j in range(ny):
        for i in range(nx):
            blk = arr[j * tile:(j + 1) * tile, i * tile:(i + 1) * tile]
            frames[j * nx + i, :blk.shape[0], :blk.shape[1]] = blk
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_WSI
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = VL_WSI, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID, ds.DimensionOrganizationUID = uids["frame"], uids["dim"]
    ds.Modality, ds.ImageType, ds.InstanceNumber = "SM", ["DERIVED", "PRIMARY", image_type, "NONE"], number
    ds.PatientName, ds.PatientID, ds.ContainerIdentifier = "synthetic", "synthetic", uids["container"]
    ds.Rows = ds.Columns = tile
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.TotalPixelMatrixFocalPlanes = w, h, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = w * mpp / 1000, h * mpp / 1000, 0.001
    pm = Dataset()
    pm.PixelSpacing, pm.SliceThickness = [mpp / 1000, mpp / 1000], 0.001  # mm/px
    shared = Dataset()
    shared.PixelMeasuresSequence = [pm]
    ds.SharedFunctionalGroupsSequence = [shared]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 0, 0
    ds.TotalPixelMatrixOriginSequence = [origin]
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    ds.OpticalPathSequence, ds.NumberOfOpticalPaths = [path], 1
    ds.FocusMethod, ds.ExtendedDepthOfField, ds.VolumetricProperties = "AUTO", "NO", "VOLUME"
    ds.BurnedInAnnotation = "YES" if image_type == "LABEL" else "NO"
    ds.SpecimenLabelInImage = "YES" if image_type in ("LABEL", "OVERVIEW") else "NO"
    ds.AcquisitionDateTime, ds.LossyImageCompression = "20260101000000", "00"
    ds.PixelData = frames.tobytes()
    if rle:
        ds.compress(RLELossless)
    return ds


def write_dicom_wsi(source: Path | str, folder: Path | str, rle: bool = False) -> Path:
    """Convert an OpenSlide-readable slide into a DICOM WSI folder (one file per instance); returns ``folder``."""
    import openslide
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    uids = {k: generate_uid() for k in ("study", "series", "frame", "dim")}
    uids["container"] = folder.name
    with openslide.OpenSlide(str(source)) as osr:
        mpp = float(osr.properties["openslide.mpp-x"])
        for lv in range(osr.level_count):
            w, h = osr.level_dimensions[lv]
            arr = np.asarray(osr.read_region((0, 0), lv, (w, h)).convert("RGB"))
            ds = _instance(arr, mpp * osr.level_downsamples[lv], "VOLUME", uids, lv + 1, rle)
            ds.save_as(folder / f"level{lv}.dcm", enforce_file_format=True)
        thumb = np.asarray(osr.get_thumbnail((256, 256)).convert("RGB"))
    extras = {"LABEL": np.full((120, 240, 3), 230, np.uint8), "OVERVIEW": np.concatenate([thumb, thumb], 1),
              "THUMBNAIL": thumb}
    for i, (kind, arr) in enumerate(extras.items()):
        ds = _instance(arr, 0.05 if kind == "LABEL" else mpp * 8, kind, uids, 90 + i, rle)
        ds.save_as(folder / f"{kind.lower()}.dcm", enforce_file_format=True)
    return folder
