"""Work over several devices (`--devices cuda:0,cuda:1`): one spawned process per device pulling slides from
a shared queue. What each process does is given as a factory (``make_worker(device, n_devices, params)``
-> an object with ``extract(spec, out, overwrite)``), a module-level function so that spawn can pickle it."""

from __future__ import annotations

import logging
import os
import queue as queue_mod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import GhanetError
from ..core.runs import ItemResult, run_items
from ..wsi.inputs import SlideSpec

log = logging.getLogger(__name__)


#: ``make_worker(device, n_devices, params)`` -> an object with ``extract(spec, out, overwrite)``
WorkerFactory = Callable[[str, int, dict[str, Any]], Any]


def device_worker(make_worker: WorkerFactory, device: str, n_devices: int, params_dict: dict[str, Any], out: str,
                  overwrite: bool, log_level: int, tasks: Any, results: Any) -> None:
    """Body of one per-device process: pull (index, spec) until ``None``; post results."""
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s [{device}] %(message)s",
                        datefmt="%H:%M:%S")
    try:
        extractor = make_worker(device, n_devices, params_dict)
    except BaseException as exc:  # noqa: BLE001 - report and let the parent fail the remaining slides
        results.put(("fatal", device, f"{type(exc).__name__}: {exc}" if not isinstance(exc, GhanetError) else str(exc)))
        return
    while True:
        task = tasks.get()
        if task is None:
            break
        idx, spec = task
        results.put(("start", idx, device))
        res = run_items([spec], lambda s: s.slide_id, lambda s: extractor.extract(s, Path(out), overwrite))[0]
        res.metrics["device"] = device
        results.put(("done", idx, res))
    results.put(("exit", device, ""))
    # every bag is closed and renamed: flush the result queue and leave without the slow interpreter
    # teardown of torch (seconds per process on a busy machine)
    results.close()
    results.join_thread()
    logging.shutdown()
    os._exit(0)


def extract_multi(specs: list[SlideSpec], out: Path, params: dict[str, Any], devices: list[str], overwrite: bool,
                  on_done: Callable[[ItemResult], None] | None, make_worker: WorkerFactory) -> list[ItemResult]:
    """Run ``make_worker(...).extract`` for every spec, one process per entry of ``devices``; results in the
    order of ``specs`` (a slide whose process died is a failed item naming the device)."""
    import torch.multiprocessing as tmp

    ctx = tmp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    for i, s in enumerate(specs):
        tasks.put((i, s))
    for _ in devices:
        tasks.put(None)
    pdict = dict(params)
    procs = []
    for d in devices:
        # malloc tuning is also applied inside each process (tune_malloc); workers inherit the env
        pr = ctx.Process(target=device_worker, daemon=False,
                         args=(make_worker, d, len(devices), pdict, str(out), overwrite,
                               logging.getLogger("ghanet_pipeline").getEffectiveLevel(),
                               tasks, results))
        pr.start()
        procs.append(pr)
    out_results: dict[int, ItemResult] = {}
    running: dict[int, str] = {}
    exited = 0
    fatal: list[str] = []
    while exited < len(procs):
        try:
            msg = results.get(timeout=2.0)
        except queue_mod.Empty:
            if not any(p.is_alive() for p in procs):
                break  # all died without saying goodbye
            continue
        kind = msg[0]
        if kind == "start":
            running[msg[1]] = msg[2]
        elif kind == "done":
            running.pop(msg[1], None)
            out_results[msg[1]] = msg[2]
            if on_done is not None:
                on_done(msg[2])
        elif kind == "fatal":
            fatal.append(f"{msg[1]}: {msg[2]}")
            exited += 1
        elif kind == "exit":
            exited += 1
    for p in procs:
        p.join(timeout=30)
    reason = ("device process(es) could not start: " + "; ".join(fatal)) if fatal else "a device process died"
    final = []
    for i, s in enumerate(specs):
        if i in out_results:
            final.append(out_results[i])
        else:
            where = f" while on {running[i]}" if i in running else ""
            res = ItemResult(s.slide_id, "failed", 0.0, f"not extracted{where}: {reason}")
            if on_done is not None:
                on_done(res)
            final.append(res)
    return final
