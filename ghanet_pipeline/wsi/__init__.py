"""Whole-slide images: reading at a target um/px (`slide`), tissue detection (`tissue`), the patch grid
(`tiling`), the `segment` stage (coords HDF5 + GeoJSON + QC), and synthetic slides for tests and the
demo (`synthetic`)."""
