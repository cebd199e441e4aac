/* ghanet report - slide page viewer.
 *
 * Reads window.GHANET_SLIDE (the page's data.js): the inline DZI tile source of the slide pyramid, the
 * patch grid in level-0 pixels and one score per patch and layer. OpenSeadragon draws the slide with its
 * canvas drawer (its WebGL drawer cannot use images loaded from file:// pages); this script draws the
 * layers on a second canvas above it after every frame OpenSeadragon draws ("update-viewport"), with the
 * same image-to-screen transform, so the layers stay on the patch grid at every zoom. A layer is a small
 * raster with one pixel per grid cell, scaled with nearest-neighbour sampling; only the visible cells are
 * drawn. No network request is made: tiles are <img> loads of files beside the page.
 *
 * For tests and curious users the page's state is in window.ghanetState and the viewer in
 * window.ghanetViewer.
 */
(function () {
  "use strict";
  var D = window.GHANET_SLIDE;
  var state = {
    ready: false, fullyLoaded: false, tilesLoaded: 0, tilesFailed: 0, maxLevelLoaded: -1,
    maxLevel: D.pyramid.max_level, visible: {}, opacity: {}, clicked: null, overlayDraws: 0
  };
  window.ghanetState = state;

  var ds = D.pyramid.downsample;                 // level-0 px per pixel of the pyramid's finest level
  var grid = D.grid;
  var P = D.patches;
  var n = P.col.length;

  // cell -> patch index (-1: no patch)
  var cellIndex = new Int32Array(Math.max(1, grid.cols * grid.rows)).fill(-1);
  for (var i = 0; i < n; i++) { cellIndex[P.row[i] * grid.cols + P.col[i]] = i; }

  var viewer = OpenSeadragon({
    id: "viewer",
    prefixUrl: D.osd_images,
    drawer: "canvas",
    tileSources: D.pyramid.tile_source,
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.5,
    animationTime: 0.5,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: true }
  });
  window.ghanetViewer = viewer;

  // ---- layer rasters: one pixel per grid cell ------------------------------------------------------
  function lutColour(t) {
    var k = Math.max(0, Math.min(255, Math.round(t * 255)));
    return D.colormap[k];
  }

  function rasterFor(layer) {
    var c = document.createElement("canvas");
    c.width = Math.max(1, grid.cols); c.height = Math.max(1, grid.rows);
    var ctx = c.getContext("2d");
    var img = ctx.createImageData(c.width, c.height);
    for (var i = 0; i < n; i++) {
      var v = layer ? layer.values[i] : 0;
      if (v === null || v === undefined) continue;
      var o = 4 * (P.row[i] * c.width + P.col[i]);
      var rgb, a;
      if (!layer) { rgb = D.grid_colour; a = 255; }
      else if (layer.masked && v <= 0) { rgb = D.masked_colour; a = D.masked_alpha; }
      else { rgb = lutColour(v / layer.vmax); a = 255; }
      img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2]; img.data[o + 3] = a;
    }
    ctx.putImageData(img, 0, 0);
    return c;
  }

  var rasters = { grid: rasterFor(null) };
  D.layers.forEach(function (layer) { rasters[layer.key] = rasterFor(layer); });
  var order = ["grid"].concat(D.layers.map(function (l) { return l.key; }));

  // ---- overlay canvas ---------------------------------------------------------------------------------
  var overlay = document.createElement("canvas");
  overlay.className = "ghanet-overlay";
  viewer.canvas.appendChild(overlay);
  var octx = overlay.getContext("2d");

  function transform() {
    // level-0 (x, y) -> viewer element px: (ox + x * sx, oy + y * sy)
    var item = viewer.world.getItemAt(0);
    if (!item) return null;
    var W = D.pyramid.width, H = D.pyramid.height;   // DZI image size (finest level)
    var p0 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    var p1 = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(W, H));
    return { ox: p0.x, oy: p0.y, sx: (p1.x - p0.x) / (W * ds), sy: (p1.y - p0.y) / (H * ds) };
  }

  function drawOverlay() {
    var el = viewer.canvas;
    var w = el.clientWidth, h = el.clientHeight, dpr = window.devicePixelRatio || 1;
    if (overlay.width !== Math.round(w * dpr) || overlay.height !== Math.round(h * dpr)) {
      overlay.width = Math.round(w * dpr); overlay.height = Math.round(h * dpr);
    }
    octx.setTransform(1, 0, 0, 1, 0, 0);
    octx.clearRect(0, 0, overlay.width, overlay.height);
    var T = transform();
    if (!T) return;
    octx.setTransform(dpr, 0, 0, dpr, 0, 0);
    octx.imageSmoothingEnabled = false;
    var step = grid.step;
    // visible cell range
    var c0 = Math.max(0, Math.floor(((0 - T.ox) / T.sx - grid.x0) / step));
    var c1 = Math.min(grid.cols, Math.ceil(((w - T.ox) / T.sx - grid.x0) / step));
    var r0 = Math.max(0, Math.floor(((0 - T.oy) / T.sy - grid.y0) / step));
    var r1 = Math.min(grid.rows, Math.ceil(((h - T.oy) / T.sy - grid.y0) / step));
    if (c1 > c0 && r1 > r0) {
      var dx = T.ox + (grid.x0 + c0 * step) * T.sx, dy = T.oy + (grid.y0 + r0 * step) * T.sy;
      var dw = (c1 - c0) * step * T.sx, dh = (r1 - r0) * step * T.sy;
      order.forEach(function (key) {
        if (!state.visible[key]) return;
        octx.globalAlpha = state.opacity[key];
        octx.drawImage(rasters[key], c0, r0, c1 - c0, r1 - r0, dx, dy, dw, dh);
      });
    }
    octx.globalAlpha = 1;
    if (state.visible.tissue && D.tissue.length) {
      octx.strokeStyle = D.tissue_colour;
      octx.lineWidth = 2;
      octx.globalAlpha = state.opacity.tissue;
      octx.beginPath();
      D.tissue.forEach(function (ring) {
        ring.forEach(function (p, k) {
          var x = T.ox + p[0] * T.sx, y = T.oy + p[1] * T.sy;
          if (k === 0) octx.moveTo(x, y); else octx.lineTo(x, y);
        });
        octx.closePath();
      });
      octx.stroke();
      octx.globalAlpha = 1;
    }
    if (state.clicked) {
      var c = state.clicked;
      octx.strokeStyle = "#00e5ff";
      octx.lineWidth = 2;
      octx.strokeRect(T.ox + c.x * T.sx, T.oy + c.y * T.sy, c.size * T.sx, c.size * T.sy);
    }
    state.overlayDraws++;
  }

  // ---- events -----------------------------------------------------------------------------------------
  viewer.addHandler("open", function () { state.ready = true; drawOverlay(); });
  viewer.addHandler("update-viewport", drawOverlay);
  viewer.addHandler("resize", drawOverlay);
  viewer.addHandler("tile-loaded", function (e) {
    state.tilesLoaded++;
    state.maxLevelLoaded = Math.max(state.maxLevelLoaded, e.tile.level);
  });
  viewer.addHandler("tile-load-failed", function () { state.tilesFailed++; });
  viewer.world.addHandler("add-item", function (e) {
    e.item.addHandler("fully-loaded-change", function (ev) { state.fullyLoaded = ev.fullyLoaded; });
  });

  function cellAt(x0, y0) {
    var col = Math.floor((x0 - grid.x0) / grid.step), row = Math.floor((y0 - grid.y0) / grid.step);
    if (col < 0 || row < 0 || col >= grid.cols || row >= grid.rows) return -1;
    return cellIndex[row * grid.cols + col];
  }

  function fmt(v) {
    if (v === null || v === undefined) return "n/a";
    return Math.abs(v) >= 100 || v === 0 ? String(Math.round(v * 100) / 100) : v.toPrecision(3);
  }

  function showPatch(i) {
    var box = document.getElementById("patch-info");
    if (i < 0) {
      state.clicked = null;
      box.innerHTML = "<p class='muted'>No patch here (outside the patch grid).</p>";
      drawOverlay();
      return;
    }
    var x = P.x[i], y = P.y[i];
    state.clicked = { index: i, x: x, y: y, size: grid.step, values: {} };
    var head = "<p>#" + i + " at level-0 (" + x + ", " + y + ") px, side " + grid.step + " px (" +
               fmt(grid.step * D.slide.mpp) + " &micro;m)</p>";
    var rows = [];
    D.layers.forEach(function (layer) {
      var v = layer.values[i];
      state.clicked.values[layer.key] = v;
      var txt = (layer.masked && v !== null && v <= 0) ? "0 (not in the top k)" : fmt(v);
      rows.push("<tr title='" + escapeHtml(layer.unit) + "'><th>" + escapeHtml(layer.name) + "</th><td class='num'>" +
                txt + "</td></tr>");
    });
    box.innerHTML = head + (rows.length ? "<table class='kv'>" + rows.join("") + "</table>" +
                                          "<p class='muted'>values x N (1 = uniform attention)</p>" : "");
    drawOverlay();
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;" }[c];
    });
  }

  viewer.addHandler("canvas-click", function (e) {
    if (!e.quick) return;
    var item = viewer.world.getItemAt(0);
    if (!item) return;
    var p = item.viewerElementToImageCoordinates(e.position);
    showPatch(cellAt(p.x * ds, p.y * ds));
  });

  function goToPatch(i, margin) {
    var item = viewer.world.getItemAt(0);
    if (!item || i < 0) return;
    var m = margin === undefined ? 2 : margin;
    var s = grid.step, x = P.x[i] - m * s, y = P.y[i] - m * s, side = (2 * m + 1) * s;
    var rect = item.imageToViewportRectangle(new OpenSeadragon.Rect(x / ds, y / ds, side / ds, side / ds));
    viewer.viewport.fitBounds(rect);
    showPatch(i);
  }
  window.ghanetGoToPatch = goToPatch;

  // ---- controls ----------------------------------------------------------------------------------------
  Array.prototype.forEach.call(document.querySelectorAll("[data-layer]"), function (row) {
    var key = row.getAttribute("data-layer");
    var box = row.querySelector("input[type=checkbox]");
    var slider = row.querySelector("input[type=range]");
    state.visible[key] = box.checked;
    state.opacity[key] = Number(slider.value) / 100;
    box.addEventListener("change", function () { state.visible[key] = box.checked; drawOverlay(); });
    slider.addEventListener("input", function () { state.opacity[key] = Number(slider.value) / 100; drawOverlay(); });
  });
  Array.prototype.forEach.call(document.querySelectorAll("[data-patch]"), function (el) {
    el.addEventListener("click", function (ev) {
      ev.preventDefault();
      goToPatch(Number(el.getAttribute("data-patch")));
      document.getElementById("viewer").scrollIntoView({ block: "nearest" });
    });
  });
})();
