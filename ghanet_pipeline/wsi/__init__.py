"""Whole-slide images: finding slides and manifests (``inputs``), reading at a target um/px (``slide``,
over the readers of ``backend``; DICOM WSI in ``dicom``), patches decoded straight from JPEG tiles
(``rawtiles``), tissue detection (``tissue``), the patch grid (``tiling``), the ``segment`` stage (coords
HDF5 + GeoJSON + QC), and synthetic slides for tests and the demo (``synthetic``, ``dicom_writer``).
"""
