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
