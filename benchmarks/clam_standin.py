"""A stand-in for CLAM's `extract_features_fp.py` data path, for speed comparisons only.

This is OUR OWN re-implementation (not CLAM's code, which is not installable here) of what CLAM's
feature extraction does per slide, as described by its public source (`extract_features_fp.py`,
`dataset_modules/dataset_h5.py`, `utils/transform_utils.py`, `utils/file_utils.py`):

* a map-style dataset that, per patch, indexes the open coords HDF5 dataset, calls OpenSlide
  ``read_region(coord, patch_level, (patch_size, patch_size))`` and PIL ``.convert('RGB')``;
* the eval transform ``Compose([Resize(target) if target > 0, ToTensor(), Normalize(mean, std)])`` on
  each PIL image (the default target is 224; ``--target-patch-size -1`` keeps 256);
* ``DataLoader(batch_size=256)`` with the default collate of ``{'img', 'coord'}`` dicts and no worker
  processes on CPU (``num_workers=8, pin_memory=True`` on CUDA);
* the truncated ResNet50 (conv1 .. layer3 + global average pooling; CLAM builds it with timm,
  same architecture - here torchvision's, random weights) in eval mode, fp32, NCHW, under
  ``torch.inference_mode``;
* per batch ``features.cpu().numpy()`` appended to an HDF5 file (datasets grown with ``resize``),
  then the file re-read and saved as a ``.pt`` tensor.

Usage: python -m benchmarks.clam_standin SLIDE COORDS_H5 OUT_DIR [--target-patch-size 224]
       [--batch-size 256] [--threads N]
``COORDS_H5`` holds ``coords`` (N, 2) with attrs ``patch_level`` and ``patch_size`` (CLAM's layout).
A worker of ``benchmarks.bench_extract_process`` (systems ``clam-256`` / ``clam-224``), which times the whole
process; on purpose it uses neither the harness nor the library.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import h5py
import numpy as np


class SlideBagDataset:
    """Per-patch reader in CLAM's style (OpenSlide read_region -> PIL RGB -> torchvision transform)."""

    def __init__(self, coords_path: str, wsi, transform) -> None:  # noqa: ANN001
        self.wsi, self.transform = wsi, transform
        self.h5 = h5py.File(coords_path, "r")
        dset = self.h5["coords"]
        self.level, self.size, self.n = int(dset.attrs["patch_level"]), int(dset.attrs["patch_size"]), len(dset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, idx: int) -> dict:
        coord = self.h5["coords"][idx]
        img = self.wsi.read_region(tuple(int(v) for v in coord), self.level, (self.size, self.size)).convert("RGB")
        return {"img": self.transform(img), "coord": coord}


def append_h5(path: str, arrays: dict[str, np.ndarray], mode: str) -> None:
    """Append rows to resizable datasets (created on the first call), as CLAM's bag writer does."""
    with h5py.File(path, mode) as f:
        for key, val in arrays.items():
            if key not in f:
                f.create_dataset(key, shape=val.shape, maxshape=(None,) + val.shape[1:], chunks=(1,) + val.shape[1:],
                                 dtype=val.dtype)
                f[key][:] = val
            else:
                d = f[key]
                d.resize(len(d) + len(val), axis=0)
                d[-len(val):] = val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide")
    ap.add_argument("coords")
    ap.add_argument("out")
    ap.add_argument("--target-patch-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    import openslide
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.models import resnet50

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(0)
    full = resnet50(weights=None)
    model = nn.Sequential(full.conv1, full.bn1, full.relu, full.maxpool, full.layer1, full.layer2, full.layer3,
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(1)).eval().to(device)
    steps = [transforms.Resize(args.target_patch_size)] if args.target_patch_size > 0 else []
    transform = transforms.Compose([*steps, transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    os.makedirs(args.out, exist_ok=True)
    h5_path = os.path.join(args.out, "bag.h5")
    wsi = openslide.open_slide(args.slide)
    data = SlideBagDataset(args.coords, wsi, transform)
    kwargs = {"num_workers": 8, "pin_memory": True} if device.type == "cuda" else {}
    loader = DataLoader(data, batch_size=args.batch_size, **kwargs)
    mode = "w"
    for batch in loader:
        with torch.inference_mode():
            imgs = batch["img"].to(device, non_blocking=True)
            coords = batch["coord"].numpy().astype(np.int32)
            feats = model(imgs).cpu().numpy().astype(np.float32)
            append_h5(h5_path, {"features": feats, "coords": coords}, mode)
            mode = "a"
    with h5py.File(h5_path, "r") as f:
        feats = f["features"][:]
    torch.save(torch.from_numpy(feats), os.path.join(args.out, "bag.pt"))
    print(f"{len(feats)} patches in {time.perf_counter() - t0:.2f} s (after interpreter start)", file=sys.stderr)


if __name__ == "__main__":
    main()
