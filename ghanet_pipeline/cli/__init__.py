"""``ghanet`` command line: a click group whose commands are imported only when run (fast ``--help``).

Each command lives in its own module of this package and is a thin layer: parse options, call one
library function, render the result with rich.
"""

from __future__ import annotations

import importlib
import logging

import click

from .. import __version__

#: command name -> "module:attribute" inside ghanet_pipeline.cli, with its one-line help
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("doctor:doctor", "Check the installation: versions, OpenSlide, torch/CUDA, weights, output dir."),
    "encoders": ("encoders:encoders", "List the patch encoders: feature width, input size, um/px, weights found."),
    "segment": ("segment:segment", "Find tissue and lay the 256x256 patch grid at 20x (0.5 um/px)."),
    "extract-features": ("extract:extract_features", "Embed every patch with an encoder (ResNet50, UNI, Virchow2, ...) into HDF5 bags."),
    "calibrate-encoder": ("calibrate:calibrate_encoder",
                          "Make random encoder weights usable: BatchNorm statistics + standardisation from patches."),
    "check-precision": ("check_precision:check_precision",
                        "Compare int8 / bf16 encoder features with fp32 on a sample of your slides."),
    "preprocess-genomics": ("genomics:preprocess_genomics", "Gene families, survival bins, per-fold gene selection and targets."),
    "train": ("train:train", "Train G-HANet (or ABMIL) with k-fold cross-validation."),
    "evaluate": ("evaluate:evaluate", "C-index, Kaplan-Meier and log-rank for a predictions table."),
    "predict": ("predict:predict", "Risk score, survival curve and heatmaps from slides alone."),
    "report": ("report:report", "Write <out>/report/: results, survival curves and a deep-zoom slide viewer (static HTML)."),
    "synth": ("synth:synth", "Write synthetic slides / a synthetic cohort (tests, demos)."),
    "demo": ("demo:demo", "Run every stage on a small synthetic cohort."),
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, _ = COMMANDS[cmd_name]
        mod_name, attr = target.split(":")
        try:
            module = importlib.import_module(f"{__name__}.{mod_name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(__name__):
                return None  # command not built yet
            raise
        return getattr(module, attr)

    def invoke(self, ctx: click.Context):
        from ..core.errors import ConfigError, GhanetError

        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(2)
        except GhanetError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(1)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``--config FILE.yaml``: top-level keys are command names, below them that command's options."""
    if value is None:
        return None
    from .config import load_config

    ctx.default_map = load_config(ctx, value)
    return value


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="ghanet")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--config", type=click.Path(dir_okay=False), callback=_load_config, expose_value=False,
              is_eager=True, help="YAML file: {command: {option: value}}; flags override it.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """ghanet: survival risk from whole-slide images with G-HANet."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    from .common import setup_logging

    setup_logging(level)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ghanet")
