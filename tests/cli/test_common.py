"""The CLI reads its choices from the registries and its defaults from the library's option dataclasses."""

from __future__ import annotations

import dataclasses

import click

from ghanet_pipeline.cli import train as train_cmd
from ghanet_pipeline.cli.common import RegistryChoice, default_of
from ghanet_pipeline.models import MODELS
from ghanet_pipeline.training.config import TrainConfig


def _option(command: click.Command, name: str) -> click.Option:
    return next(p for p in command.params if isinstance(p, click.Option) and p.name == name)


def test_model_choices_follow_the_registry_including_new_entries():
    model = _option(train_cmd.train, "model")
    assert isinstance(model.type, RegistryChoice)
    assert list(model.type.choices) == MODELS.names()
    fresh = RegistryChoice(MODELS.names)  # read when first needed: a model registered before that is offered
    MODELS.register("toy_registered_for_cli", lambda **kw: None)
    assert "toy_registered_for_cli" in fresh.choices


def test_train_defaults_are_train_config_defaults():
    cfg = TrainConfig()
    for name in ("epochs", "weight_decay", "accum", "alpha", "alpha_surv", "dim", "dropout", "seed", "model"):
        assert _option(train_cmd.train, name).default == getattr(cfg, name), name


def test_default_of_reads_plain_and_factory_defaults():
    @dataclasses.dataclass
    class Opts:
        a: int = 3
        b: list = dataclasses.field(default_factory=lambda: [1])

    assert default_of(Opts, "a") == 3 and default_of(Opts, "b") == [1]


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    """Every command under ``group`` (a lazy group loads each one), with its full name."""
    ctx = click.Context(group)
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        out.append((prefix + name, cmd))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, prefix + name + " ")
    return out


def test_every_command_takes_exactly_the_options_it_declares():
    """A shared option factory that gains an option (e.g. --gdc-manifest on every slide stage) must reach each
    command's function: click would only fail with a TypeError when the command runs."""
    import inspect

    from ghanet_pipeline.cli import cli

    checked = 0
    for name, cmd in _commands(cli):
        if cmd.callback is None or isinstance(cmd, click.Group):
            continue
        fn = inspect.unwrap(cmd.callback)
        declared = {p.name for p in cmd.params if p.expose_value}
        takes = {n for n, p in inspect.signature(fn).parameters.items()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        assert declared == takes, f"ghanet {name}: options without a parameter {sorted(declared - takes)}, " \
                                  f"parameters without an option {sorted(takes - declared)}"
        checked += 1
    assert checked >= 10
