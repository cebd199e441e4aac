"""``--config FILE.yaml``: read it and map each command's keys onto that command's real options.

Top-level keys are command names; below each, keys name one option of that command, spelled as the
flag (``resize``, ``--resize``) or as the parameter (``input_size``), with ``-`` or ``_``. An unknown
key is a usage error (exit 2) that names the key and the closest valid option.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import click


def option_names(cmd: click.Command) -> dict[str, tuple[str, bool]]:
    """Accepted config key -> (parameter name, negate) for every parameter of ``cmd`` (not --help).

    Keys are normalised: no leading dashes, ``_`` instead of ``-``. A secondary flag spelling
    (``no-x`` of ``--x/--no-x``) maps to the same parameter with the boolean value negated.
    """
    names: dict[str, tuple[str, bool]] = {}
    for p in cmd.params:
        if not p.expose_value or p.name is None or p.name == "help":
            continue
        names[_norm(p.name)] = (p.name, False)
        for opt in p.opts:
            names.setdefault(_norm(opt), (p.name, False))
        for opt in getattr(p, "secondary_opts", []):
            names.setdefault(_norm(opt), (p.name, True))
    return names


def _norm(key: str) -> str:
    return str(key).strip().lstrip("-").replace("-", "_")


def _flag(cmd: click.Command, param_name: str) -> str:
    """How the user types the option (``--resize``), or the argument's name."""
    for p in cmd.params:
        if p.name == param_name:
            return p.opts[0] if isinstance(p, click.Option) else p.name.upper()
    return param_name


def map_section(cmd_name: str, cmd: click.Command, section: dict[Any, Any], source: str) -> dict[str, Any]:
    """Config keys of one command -> click ``default_map`` (parameter name -> value).

    Raises :class:`click.BadParameter` (exit 2) for an unknown key, naming the closest valid option,
    and for two keys that set the same option.
    """
    names = option_names(cmd)
    mapped: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in section.items():
        norm = _norm(key)
        if norm not in names:
            close = difflib.get_close_matches(norm, list(names), n=1, cutoff=0.5)
            hint = (f"; did you mean {close[0].replace('_', '-')!r} ({_flag(cmd, names[close[0]][0])})?" if close
                    else "")
            valid = sorted({_flag(cmd, n) for n, _ in names.values()})
            raise click.BadParameter(f"{source}: {key!r} is not an option of `ghanet {cmd_name}`{hint} "
                                     f"Valid options: {', '.join(valid)}")
        param, negate = names[norm]
        if param in given_as:
            raise click.BadParameter(f"{source}: {cmd_name!r} sets {_flag(cmd, param)} twice ({given_as[param]!r} "
                                     f"and {key!r}); keep one")
        if negate:
            if not isinstance(value, bool):
                raise click.BadParameter(f"{source}: {cmd_name}.{key} must be true or false, not {value!r}")
            value = not value
        given_as[param] = str(key)
        mapped[param] = value
    return mapped


def load_config(ctx: click.Context, path: str) -> dict[str, dict[str, Any]]:
    """Read ``path`` and return the group's ``default_map`` ({command: {parameter: value}})."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of command name -> options")
    group = ctx.command
    assert isinstance(group, click.Group)
    commands = group.list_commands(ctx)
    out: dict[str, dict[str, Any]] = {}
    for cmd_name, opts in data.items():
        cmd = group.get_command(ctx, str(cmd_name)) if cmd_name in commands else None
        if cmd is None:
            close = difflib.get_close_matches(str(cmd_name), commands, n=1)
            raise click.BadParameter(f"{path}: {cmd_name!r} is not a ghanet command"
                                     + (f" (did you mean {close[0]!r}?)" if close else "")
                                     + f"; top-level keys are command names: {', '.join(commands)}")
        if opts is not None and not isinstance(opts, dict):
            raise click.BadParameter(f"{path}: {cmd_name!r} must hold a mapping of option -> value (indented "
                                     f"'out: ghanet-out' lines below it), not a {type(opts).__name__}")
        out[str(cmd_name)] = map_section(str(cmd_name), cmd, opts or {}, path)
    return out
