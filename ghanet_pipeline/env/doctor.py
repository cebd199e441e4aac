"""Installation checks behind ``ghanet doctor``."""

from __future__ import annotations

import importlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from . import runtime
from .hubs import torch_hub_dir


@dataclass
class Check:
    """One line of the doctor report; ``required`` checks make the command exit 1 when not ok."""

    name: str
    ok: bool
    value: str
    required: bool = True


def _module_version(name: str) -> tuple[bool, str]:
    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - report any import failure
        return False, f"not importable: {exc}"
    return True, str(getattr(mod, "__version__", "?"))


def run_checks(out: Path) -> list[Check]:
    """Versions of python and libraries, OpenSlide, torch + CUDA, weights location, writable output."""
    checks = [Check("ghanet", True, __version__), Check("python", sys.version_info >= (3, 10), sys.version.split()[0])]
    for mod in ("numpy", "h5py", "cv2", "tifffile", "pandas", "scipy"):
        ok, v = _module_version(mod)
        checks.append(Check(mod, ok, v))
    try:
        import openslide

        checks.append(Check("OpenSlide library", True, f"{openslide.__library_version__} (openslide-python {openslide.__version__})"))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("OpenSlide library", False, f"{exc}; pip install openslide-bin openslide-python"))
    ok, v = _module_version("wsidicom")
    checks.append(Check("slide readers", True,
                        "OpenSlide (SVS, TIFF, NDPI, MRXS, SCN, BIF, VMS, DICOM WSI folders); "
                        + (f"wsidicom {v} (DICOM WSI series OpenSlide cannot decode, e.g. RLE / JPEG-LS frames)"
                           if ok else f"wsidicom not installed ({v}): pip install wsidicom"), required=False))
    try:
        import torch

        checks.append(Check("torch", True, torch.__version__))
        cuda = torch.cuda.is_available()
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else "none (CPU only)"
        checks.append(Check("CUDA", True, names, required=False))
    except Exception as exc:  # noqa: BLE001
        checks.append(Check("torch", False, f"not importable: {exc}"))
    info = runtime.cpu_info()
    auto, why = runtime.auto_cpu_precision(info)
    checks.append(Check("CPU", True, f"{info.describe()}; {runtime.cpu_cores()} cores usable", required=False))
    checks.append(Check("precision auto (CPU)", True, f"{auto} ({why.removeprefix('auto: ')})", required=False))
    hub = torch_hub_dir()
    found = sorted(hub.glob("resnet50-*.pth")) if hub.is_dir() else []
    checks.append(Check("ResNet50 ImageNet weights", bool(found),
                        f"{found[0]}" if found else f"none in {hub}/resnet50-*.pth; pass --weights FILE to extract-features",
                        required=False))
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".doctor", suffix=".tmp"):
            pass
        checks.append(Check("output dir writable", True, str(out.resolve())))
    except OSError as exc:
        checks.append(Check("output dir writable", False, f"{out}: {exc}"))
    return checks
