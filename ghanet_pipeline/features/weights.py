"""Where encoder weights come from and how a weights file is read and checked (never downloaded).

Looked up, in order: ``--weights random[:seed]`` (seeded random init), ``--weights FILE``, the torch
hub cache (``$TORCH_HOME/hub/checkpoints/<hub_files>``), the Hugging Face hub cache
(``<hf cache>/models--ORG--NAME/snapshots/*/<weight_files>``, safetensors first). Files are read
without unpickling code: ``.safetensors`` with safetensors, anything else with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import ConfigError
from ..env.hubs import hf_hub_cache_dir, torch_hub_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .registry import EncoderSpec


def parse_random(weights: str | None) -> int | None:
    """Seed of ``random`` / ``random:<seed>`` (``random`` = seed 0); None for anything else."""
    if weights is None:
        return None
    m = re.fullmatch(r"random(?::(\d+))?", str(weights).strip())
    if not m:
        return None
    return int(m.group(1) or 0)


def _hf_snapshot_files(spec: EncoderSpec, hf_dir: Path) -> list[Path]:
    """``spec.weight_files`` inside ``models--ORG--NAME/snapshots/*`` (repo folder matched case-insensitively:
    ``MahmoodLab/uni`` and ``MahmoodLab/UNI`` are the same repository)."""
    if not spec.hf_repo or not hf_dir.is_dir():
        return []
    want = "models--" + spec.hf_repo.replace("/", "--")
    repos = [d for d in hf_dir.iterdir() if d.is_dir() and d.name.lower() == want.lower()]
    hits: list[Path] = []
    for name in spec.weight_files:  # preference order (safetensors first)
        for repo in sorted(repos):
            hits += sorted(p for p in (repo / "snapshots").glob(f"*/{name}") if p.is_file())
    return hits


def find_hub_weights(spec: EncoderSpec, hub_dir: Path | None = None, hf_dir: Path | None = None) -> Path | None:
    """First weights file for ``spec`` in the torch hub cache, then in the Hugging Face hub cache."""
    hub_dir = torch_hub_dir() if hub_dir is None else hub_dir
    if hub_dir.is_dir():
        for pattern in spec.hub_files:
            hits = sorted(p for p in hub_dir.glob(pattern) if p.is_file())
            if hits:
                return hits[0]
    hits = _hf_snapshot_files(spec, hf_hub_cache_dir() if hf_dir is None else hf_dir)
    return hits[0] if hits else None


def looked_in(spec: EncoderSpec, hub_dir: Path, hf_dir: Path) -> str:
    """Human-readable list of the places searched for ``spec``'s weights."""
    places = []
    if spec.hub_files:
        places.append(f"{', '.join(spec.hub_files)} in {hub_dir} (the torch hub cache; set TORCH_HOME to use another)")
    if spec.hf_repo:
        repo = "models--" + spec.hf_repo.replace("/", "--")
        places.append(f"{' or '.join(spec.weight_files)} in {hf_dir}/{repo}/snapshots/*/ (the Hugging Face hub "
                      f"cache; set HF_HUB_CACHE or HF_HOME to use another)")
    return "; ".join(places) or "(no cache location known for this encoder)"


def resolve_weights(spec: EncoderSpec, weights: str | Path | None, hub_dir: Path | None = None,
                    hf_dir: Path | None = None) -> Path | int:
    """Where the weights come from: a file path, or an int seed for random initialisation.

    Raises :class:`ConfigError` when a given path does not exist or when nothing is found in the hub
    caches (the message says where to get the file).
    """
    seed = parse_random(None if weights is None else str(weights))
    if seed is not None:
        return seed
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "no such file"
            files = " or ".join(spec.weight_files) if spec.weight_files else ".pth or .safetensors"
            raise ConfigError(f"--weights {weights}: {what}. Pass the {spec.name} weights file ({files}; "
                              f"{spec.architecture}) or 'random' for untrained weights (tests only)")
        return path
    hub_dir = torch_hub_dir() if hub_dir is None else hub_dir
    hf_dir = hf_hub_cache_dir() if hf_dir is None else hf_dir
    found = find_hub_weights(spec, hub_dir, hf_dir)
    if found is None:
        raise ConfigError(
            f"no weights for encoder {spec.name!r}: nothing matching {looked_in(spec, hub_dir, hf_dir)}, and no "
            f"--weights given. ghanet never downloads weights at run time. To fix it, "
            + spec.how_to_get.format(hub_dir=hub_dir, hf_dir=hf_dir)
            + "\n(--weights random gives untrained features: only for tests and demos.)")
    return found


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a state-dict file without unpickling code (safetensors or ``weights_only=True``).

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` containers and a ``module.`` prefix
    (DataParallel). Raises :class:`ConfigError` naming the file when it holds no tensors.
    """
    import torch

    from ..core.safeload import load_safetensors, torch_load_tensors

    path = Path(path)
    fix = ("Expected a state dict saved with torch.save(model.state_dict()) (.pth/.pt/.bin) or a .safetensors "
           "file; convert it in a trusted environment")
    if path.suffix.lower() == ".safetensors":
        obj: object = load_safetensors(path, "weights file", fix, ConfigError)
    else:
        obj = torch_load_tensors(path, "weights file", fix, ConfigError)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"weights file {path} does not hold a state dict (name -> tensor)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj  # type: ignore[return-value]


def check_keys(spec: EncoderSpec, reference: dict[str, torch.Tensor], given: dict[str, torch.Tensor],
               path: Path) -> list[str]:
    """Raise :class:`ConfigError` for missing keys, unknown keys or shape mismatches (naming them).

    Keys outside ``spec.required_prefixes`` that the reference architecture has (e.g. ResNet50's
    ``layer4``/``fc``) are allowed and ignored; a note says so.
    """

    def used(k: str) -> bool:
        return k.startswith(spec.required_prefixes)

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")

    missing = sorted(k for k in reference if used(k) and k not in given)
    unexpected = sorted(k for k in given if k not in reference)
    bad_shape = sorted(k for k in given if k in reference and used(k)
                       and tuple(given[k].shape) != tuple(reference[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys: {few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {few(unexpected)}")
    if bad_shape:
        problems.append("wrong shapes: " + few([f"{k} {tuple(given[k].shape)} != {tuple(reference[k].shape)}"
                                                for k in bad_shape]))
    if problems:
        raise ConfigError(f"weights file {path} does not fit encoder {spec.name!r} ({spec.architecture} "
                          f"state dict expected): " + "; ".join(problems))
    ignored = sorted({k.split(".")[0] for k in given if not used(k)})
    return [f"ignored parts of the weights not used by {spec.name}: {', '.join(ignored)}"] if ignored else []
