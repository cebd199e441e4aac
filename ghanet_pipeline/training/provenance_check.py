"""Refuse to continue a run folder made from other inputs or options (before anything is written)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from ..core.errors import MismatchError
from ..core.fingerprints import Fingerprint, check_same, from_json
from .state import STATE_NAME, read_state_metadata

_FOLD = re.compile(r"^fold_(\d+)$")


def fix_text(run_dir: Path) -> str:
    return (f"Rerun with the inputs and options recorded in {run_dir / 'config.json'}, write a new run with "
            f"--run-name NEW, or replace this one with --overwrite.")


def check_run_folder(run_dir: Path, fp: Fingerprint, fp_digest: str, c_hash: str,
                     resume_folds: Sequence[int] = ()) -> None:
    """Raise :class:`MismatchError` unless everything already in ``run_dir`` was made from ``fp``.

    Checked: ``config.json``'s fingerprint (per component, naming what changed), each finished fold's
    ``model.json`` ``fingerprint_digest`` and, for ``resume_folds``, the resume state's metadata.
    A folder with fold outputs but no readable fingerprint (written by an older ghanet) is refused too.
    """
    cfg_path = run_dir / "config.json"
    fix = fix_text(run_dir)
    if cfg_path.is_file():
        try:
            old = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MismatchError(f"{cfg_path} is not readable JSON ({exc}); the run's inputs cannot be checked. "
                                f"{fix}") from None
        if not isinstance(old, dict) or "fingerprint" not in old:
            raise MismatchError(f"{cfg_path} records no input fingerprint (written by an older ghanet), so its "
                                f"folds cannot be checked against the inputs given now. {fix}")
        check_same(from_json(old["fingerprint"]), fp, what=f"run folder {run_dir}", fix=fix)
    for fold_dir in sorted(run_dir.iterdir()):
        m = _FOLD.match(fold_dir.name)
        if not m or not fold_dir.is_dir():
            continue
        meta_path = fold_dir / "model.json"
        if meta_path.is_file():
            try:
                got = json.loads(meta_path.read_text(encoding="utf-8")).get("fingerprint_digest")
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                got = None
            if got != fp_digest:
                raise MismatchError(f"{meta_path} was trained from other inputs (fingerprint {got}, now "
                                    f"{fp_digest}). {fix}")
        if int(m.group(1)) in resume_folds and (fold_dir / "state" / STATE_NAME).is_file():
            meta = read_state_metadata(fold_dir / "state")
            if meta is not None and (meta.get("fingerprint_digest") != fp_digest
                                     or meta.get("config_hash") != c_hash):
                raise MismatchError(f"{fold_dir / 'state' / STATE_NAME} was saved from other inputs or options "
                                    f"than now; --resume would continue its weights on them. {fix}")
