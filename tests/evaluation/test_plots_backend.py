"""Plotting never touches matplotlib's global backend or pyplot state (object API + Agg canvas)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


@pytest.mark.slow  # a fresh Python process plotting every figure
def test_plots_and_heatmaps_leave_the_backend_alone(tmp_path):
    code = textwrap.dedent(f"""
        import matplotlib, numpy as np
        before = matplotlib.get_backend()
        from ghanet_pipeline.evaluation import plots
        from ghanet_pipeline.inference import heatmaps as hm
        out = {str(tmp_path)!r}
        rng = np.random.default_rng(0)
        plots.plot_gene_reconstruction({{"A": [("G1_rnaseq", 0.8), ("G2_rnaseq", 0.0)]}}, {{"A": [0.1, 0.3]}},
                                       out + "/g.png", planted={{"G1_rnaseq"}})
        plots.plot_km(rng.uniform(1, 50, 20), rng.integers(0, 2, 20), rng.uniform(size=20) > 0.5, out + "/km.png", 0.04)
        plots.plot_learning_curves({{0: [{{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_c_index": 0.6}}]}},
                                   out + "/lc.png")
        grid = np.full((20, 30), np.nan, np.float32); grid[5:10, 5:20] = 1.0
        hm.render_png(out + "/h.png", np.full((20, 30, 3), 200, np.uint8), grid, "t", "score")
        hm.render_montage(out + "/m.png", {{"A": [(np.zeros((8, 8, 3), np.uint8), "x")]}}, "t")
        import sys
        print(before, matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules and
              len(sys.modules["matplotlib.pyplot"].get_fignums()))
    """)
    env = {**os.environ, "MPLBACKEND": "pdf"}  # a user's non-Agg choice, e.g. a notebook's
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert r.returncode == 0, r.stderr
    before, after, figs = r.stdout.split()
    assert before == after == "pdf"
    assert figs in ("False", "0")  # no figure left open in pyplot's registry
    for name in ("g", "km", "lc", "h", "m"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
