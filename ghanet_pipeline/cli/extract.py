"""``ghanet extract-features``: patch grid -> truncated-ResNet50 features -> one HDF5 bag per slide."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..features.engines.choice import PRECISIONS
from ..features.extract import ExtractParams
from .common import (
    RegistryChoice,
    default_of,
    device_option,
    encoder_names,
    engine_option,
    int8_options,
    manifest_option,
    no_progress_option,
    out_option,
    overwrite_option,
    shard_option,
    slides_argument,
)


@click.command("extract-features")
@slides_argument
@manifest_option
@out_option
@click.option("--encoder", type=RegistryChoice(encoder_names), default=default_of(ExtractParams, "encoder"), show_default=True,
              help="Patch encoder (`ghanet encoders` lists them with their widths and input sizes).")
@click.option("--weights", default=None, metavar="PATH|random[:SEED]",
              help="Encoder weights: a torchvision state dict (.pth/.safetensors). Default: the torch hub cache "
                   "($TORCH_HOME/hub/checkpoints/resnet50-*.pth). 'random' = untrained (tests/demos only).")
@click.option("--resize", "input_size", type=click.IntRange(min=16), default=None, metavar="PX",
              help="Side in px given to the encoder (area resize); default = the encoder's own input size "
                   "(224 for most foundation models, see `ghanet encoders`), else the segment patch size (256). "
                   "224 with resnet50_trunc reproduces later CLAM versions. Recorded as input_size; it names "
                   "the bag folder <encoder>_<input size>.")
@device_option
@click.option("--devices", default=None, metavar="DEV,DEV,...",
              help="One process per device pulling slides from a shared queue, e.g. cuda:0,cuda:1.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Patches per forward pass [default: 256 on CUDA, 32 on CPU].")
@click.option("--num-workers", type=click.IntRange(min=0), default=None,
              help="Reader processes per device, 0 = in-process [default: CUDA cores/devices - 1; CPU 0 below 8 cores, else cores/8].")
@engine_option
@click.option("--precision", type=click.Choice(PRECISIONS), default=default_of(ExtractParams, "precision"),
              show_default=True,
              help="auto: bf16 autocast on CUDA (fp16 if unsupported); on CPU bf16 where the CPU has AMX-BF16, "
                   "else fp32 ('ghanet doctor' shows the choice). An explicit fp32/bf16 is always used; bf16 "
                   "on a CPU without AMX/AVX512-BF16 is emulated and slow (warned). int8: OpenVINO on the CPU, "
                   "quantized once per cohort on its own patches (bags go to <encoder_tag>_int8/).")
@int8_options
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default=default_of(ExtractParams, "dtype"),
              show_default=True,
              help="Storage type of the features in the bag.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU compute threads (torch) [default: the cores not used by the automatic reader processes; "
                   "all cores when --num-workers is given].")
@overwrite_option
@no_progress_option
@shard_option
def extract_features(slides: tuple[str, ...], recursive: bool, mpp: float | None, case_id_from: str | None,
                     gdc_manifest: Path | None, slide_types: str | None,
                     manifest: Path | None, out: Path, encoder: str, weights: str | None, input_size: int | None,
                     device: str, devices: str | None, batch_size: int | None, num_workers: int | None,
                     engine: str, precision: str, int8_patches: int, int8_seed: int, int8_cohort: Path | None,
                     dtype: str,
                     threads: int | None, overwrite: bool, no_progress: bool, shard: str | None) -> None:
    """Embed every patch of each slide's grid (from `ghanet segment`; run with defaults when missing)
    into <out>/features/<encoder_tag>/<slide_id>.h5."""
    import logging

    from ..core.errors import ConfigError
    from ..env.device import resolve_device
    from ..features.engines.choice import resolve_engine
    from ..features.extract import extract_slides
    from ..wsi.gather import cohort_slides, gather_slides
    from ..wsi.inputs import parse_shard
    from .common import Progress, print_summary

    specs = gather_slides(slides, manifest, recursive, case_id_from, mpp, out=out, gdc_manifest=gdc_manifest,
                          slide_types=slide_types, shard=parse_shard(shard))
    if int8_cohort is not None:
        cohort = cohort_slides((), int8_cohort, False, case_id_from, mpp)
    else:
        cohort = cohort_slides(slides, manifest, recursive, case_id_from, mpp, slide_types) if shard else None
    dev_list = [d.strip() for d in devices.split(",") if d.strip()] if devices else [device]
    if not dev_list:
        raise ConfigError("--devices is empty; give e.g. cuda:0,cuda:1")
    first = resolve_device(dev_list[0])
    if batch_size is None:
        batch_size = 256 if first.type == "cuda" else 32
    params = ExtractParams(encoder=encoder, weights=weights, input_size=input_size, batch_size=batch_size,
                           num_workers=num_workers, device=dev_list[0], precision=precision, dtype=dtype,
                           torch_threads=threads, engine=engine, int8_patches=int8_patches, int8_seed=int8_seed)
    log = logging.getLogger("ghanet_pipeline")
    choice = resolve_engine(engine, precision, first)
    log.info("extract-features: %d slide(s) on %s, batch %d, engine %s, precision %s (%s), dtype %s", len(specs),
             ", ".join(dev_list), batch_size, choice.engine, choice.precision, choice.reason, dtype)
    with Progress(len(specs), "extract-features", disable=no_progress) as bar:
        def on_done(res) -> None:  # noqa: ANN001
            bar.advance(1, f"{res.item}: {res.status} {res.metrics.get('patches', '')} patches")

        results = extract_slides(specs, out, params, devices=dev_list if len(dev_list) > 1 else None,
                                 overwrite=overwrite, on_done=on_done, cohort=cohort,
                                 log_config={"shard": shard, "gdc_manifest": gdc_manifest, "slide_types": slide_types})
    print_summary("extract-features", results, [("patches", "patches"), ("patches_per_s", "patches/s"),
                                                ("engine", "engine"), ("precision", "precision")])
    from ..core.runs import exit_code

    sys.exit(exit_code(results))
