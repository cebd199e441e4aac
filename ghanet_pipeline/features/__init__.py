"""Patch features: the encoder registry (`encoders`), the HDF5 bag format and foreign-bag readers
(`bags`), and the `extract-features` stage (`extract`)."""
