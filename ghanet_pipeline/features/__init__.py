"""Patch features: the encoder registry (``registry``; entries in ``encoders`` and ``foundation``, ResNet50
without torchvision in ``resnet``), weights lookup and checks (``weights``), calibrated random weights
(``calibrate``), the HDF5 bag format and foreign-bag readers (``bags``), bag content hashes
(``fingerprints``), and the ``extract-features`` stage (``extract``: tile supply in ``loader``, the encoder
as it runs in ``fastpath``, several devices in ``multidevice``).
"""
