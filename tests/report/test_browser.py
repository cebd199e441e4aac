"""The report in a real browser: headless Chromium (Debian's ``chromium``) opens the small run's report
from ``file://`` and from a loopback static server and checks, from screenshots and the page's own state,
what a reader would see. Skipped, saying why, where Chromium or Playwright is missing (`.ci/run`
installs Chromium).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from ghanet_pipeline.testing.report import CHROMIUM_ARGS, PLANTED_SLIDE, chromium_path, static_server

pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="Chromium not found (apt-get install chromium, or set GHANET_CHROMIUM)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python not installed (dev extra)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module", params=["file", "http"])
def base_url(request: pytest.FixtureRequest, report_run: dict) -> Iterator[str]:
    """The report's folder as ``file://`` and behind a static server on 127.0.0.1."""
    if request.param == "file":
        yield report_run["report"].resolve().as_uri() + "/"
    else:
        with static_server(report_run["report"]) as url:
            yield url


class Page:
    """A browser tab that records console errors and every request URL."""

    def __init__(self, browser: Any, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1200, "height": 800})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url)

    def state(self, expr: str = "window.ghanetState") -> Any:
        return self.page.evaluate(f"JSON.parse(JSON.stringify({expr}))")

    def wait_loaded(self) -> None:
        """Until the viewer is open, every visible tile is loaded and no animation is running."""
        # two frames first: OpenSeadragon notices new tiles to load in its next update
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        self.page.wait_for_function("window.ghanetState && window.ghanetState.ready && window.ghanetState.fullyLoaded"
                                    " && Math.abs(window.ghanetViewer.viewport.getZoom(true) -"
                                    " window.ghanetViewer.viewport.getZoom(false)) < 1e-9", timeout=20_000)
        self.page.wait_for_timeout(150)

    def shot(self) -> np.ndarray:
        """The viewport as an RGB array (y, x, 3)."""
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(self.page.screenshot())).convert("RGB")).astype(np.int16)

    def check_offline(self, base: str) -> None:
        assert not self.errors, self.errors
        assert self.requests
        outside = [u for u in self.requests if not u.startswith(base)]
        assert not outside, outside  # every request went to the report's own folder (file:// or loopback)


def _patch_box(p: Page, planted: dict) -> tuple[float, float, float]:
    """Screen (left, top, side) in CSS px of the planted patch, from OpenSeadragon's viewport alone."""
    return tuple(p.page.evaluate("""([x, y, s]) => {
        const v = window.ghanetViewer, D = window.GHANET_SLIDE, ds = D.pyramid.downsample;
        const b = v.viewport.getBounds(true), el = v.container.getBoundingClientRect();
        const k = el.width / b.width, W = D.pyramid.width;   // viewport units: image width = 1
        return [el.left + (x / ds / W - b.x) * k, el.top + (y / ds / W - b.y) * k, s / ds / W * k];
    }""", [planted["x"], planted["y"], planted["size"]]))


def test_index_opens_offline_and_the_case_table_sorts(browser: Any, base_url: str) -> None:
    p = Page(browser, base_url + "index.html")
    p.page.wait_for_function("window.ghanetTable !== undefined")
    risks = p.page.locator("table.cases tbody tr td:nth-child(3)")
    header = p.page.locator("table.cases th[data-key=risk]")

    def values() -> list[float]:
        return [float(t) for t in risks.all_inner_texts() if t.strip() not in ("", "n/a")]

    header.click()
    asc = values()
    assert len(asc) >= 12 and asc == sorted(asc)
    header.click()
    assert values() == sorted(asc, reverse=True)
    assert p.state("window.ghanetTable")["column"] == "risk"
    p.page.fill("#case-filter", PLANTED_SLIDE)
    assert p.state("window.ghanetTable")["shown"] == 1
    p.page.click(f"a[href='slides/{PLANTED_SLIDE}.html']")
    p.page.wait_for_function("window.ghanetState && window.ghanetState.ready")
    p.check_offline(base_url)


def test_slide_viewer_pixels_zoom_overlay_alignment(browser: Any, base_url: str, report_run: dict) -> None:
    planted = report_run["planted"]
    p = Page(browser, base_url + f"slides/{PLANTED_SLIDE}.html")
    p.wait_loaded()
    box = p.page.locator("#viewer").bounding_box()
    vx0, vy0 = int(box["x"]), int(box["y"])
    vx1, vy1 = int(box["x"] + box["width"]), int(box["y"] + box["height"])
    # 1. slide pixels, not a blank canvas: stained tissue (pink/purple) and glass in the viewer
    for key in ("tissue", "attention"):
        p.page.uncheck(f"#layer-{key}")
    img = p.shot()[vy0:vy1, vx0:vx1]
    stained = (img[..., 1] < img[..., 0] - 25) & (img[..., 1] < img[..., 2])  # green well below red and blue
    assert stained.mean() > 0.05 and img.std() > 20, (stained.mean(), img.std())
    # 2. zoom to the finest level on the planted patch
    p.page.evaluate("""([x, y, s]) => {
        const v = window.ghanetViewer, D = window.GHANET_SLIDE, ds = D.pyramid.downsample, W = D.pyramid.width;
        v.viewport.panTo(new OpenSeadragon.Point((x + s / 2) / ds / W, (y + s / 2) / ds / W), true);
        v.viewport.zoomTo(v.viewport.getMaxZoom(), null, true);
    }""", [planted["x"], planted["y"], planted["size"]])
    p.page.wait_for_function("window.ghanetState.maxLevelLoaded === window.ghanetState.maxLevel", timeout=20_000)
    p.wait_loaded()
    st = p.state()
    assert st["maxLevelLoaded"] == st["maxLevel"] and st["tilesFailed"] == 0, st
    # OpenSeadragon's own buttons and navigator map are drawn over the slide: hide them for the pixel checks
    p.page.evaluate("() => { const v = window.ghanetViewer; v.buttonGroup.element.style.visibility = 'hidden';"
                    " v.navigator.element.style.visibility = 'hidden'; }")
    base = p.shot()
    # 3. attention layer at full opacity: the planted patch shows the colour bar's top colour, exactly on
    #    its square (a few px inside each edge), and the cells around it do not
    p.page.check("#layer-attention")
    p.page.locator("[data-layer=attention] input[type=range]").fill("100")
    p.page.wait_for_timeout(150)
    on = p.shot()
    top = np.asarray(p.state("window.GHANET_SLIDE.colormap[255]"))
    left, tpos, side = _patch_box(p, planted)
    assert side > 100, side  # the patch spans many screen pixels at the finest zoom
    inside = [(left + f, tpos + g) for f in (3, side / 2, side - 3) for g in (3, side / 2, side - 3)]
    outside = [(left - 3, tpos + side / 2), (left + side + 3, tpos + side / 2), (left + side / 2, tpos - 3),
               (left + side / 2, tpos + side + 3)]
    for x, y in inside:
        assert np.abs(on[int(y), int(x)] - top).max() <= 12, (x, y, on[int(y), int(x)], top)
    for x, y in outside:
        if vx0 <= x < vx1 and vy0 <= y < vy1:
            assert np.abs(on[int(y), int(x)] - top).max() > 40, (x, y, on[int(y), int(x)])
    # 4. toggling the layer changes the image where attention is high, and only where there are patches
    cx, cy = int(left + side / 2), int(tpos + side / 2)
    assert np.abs(on[cy, cx] - base[cy, cx]).max() > 40
    p.page.uncheck("#layer-attention")
    p.page.wait_for_timeout(150)
    off = p.shot()
    assert np.abs(off[cy - 20:cy + 20, cx - 20:cx + 20] - base[cy - 20:cy + 20, cx - 20:cx + 20]).max() <= 2
    # 5. a click on a patch shows its scores and level-0 coordinates
    p.page.mouse.click(cx, cy)
    p.page.wait_for_function(f"window.ghanetState.clicked && window.ghanetState.clicked.index === {planted['index']}")
    info = p.page.inner_text("#patch-info")
    assert f"({planted['x']}, {planted['y']}) px" in info and "morphology attention" in info
    p.check_offline(base_url)


def test_gallery_jumps_to_the_top_patch(browser: Any, base_url: str, report_run: dict) -> None:
    planted = report_run["planted"]
    p = Page(browser, base_url + f"slides/{PLANTED_SLIDE}.html")
    p.wait_loaded()
    first = p.page.locator("#gallery-section .gallery a").first  # the morphology attention row comes first
    assert int(first.get_attribute("data-patch")) == planted["index"]
    first.click()
    p.wait_loaded()
    left, top, side = _patch_box(p, planted)
    box = p.page.locator("#viewer").bounding_box()
    # centred on the patch, zoomed so that it and two patches around it fill the viewer (5 sides)
    assert abs(left + side / 2 - (box["x"] + box["width"] / 2)) < 3
    assert abs(top + side / 2 - (box["y"] + box["height"] / 2)) < 3
    assert side == pytest.approx(min(box["width"], box["height"]) / 5, rel=0.05)
    assert p.state()["clicked"]["index"] == planted["index"]
    assert f"({planted['x']}, {planted['y']}) px" in p.page.inner_text("#patch-info")
    p.check_offline(base_url)
