"""Whole-slide images: finding slides and manifests (``inputs``), gdc-client downloads and their checks
(``gdc``), TCGA slide types (``tcga``), what a per-slide stage works on (``gather``), reading at a target um/px (``slide``,
over the readers of ``backend``; DICOM WSI in ``dicom``), patches decoded straight from JPEG tiles
(``rawtiles``), tissue detection (``tissue``), the patch grid (``tiling``), the ``segment`` stage (coords
HDF5 + GeoJSON + QC), and synthetic slides for tests and the demo (``synthetic``, ``dicom_writer``).
"""
