/* Shared viewer helpers: the anomaly heatmap overlay (workspace and review queue). */
(function () {
  "use strict";

  // grey -> an 'inferno'-like ramp, transparent where the score is low. Loupe heatmaps put the
  // calibrated pixel threshold at 128, so colour fades in from well below it.
  function colormap(img) {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const g = canvas.getContext("2d");
    g.drawImage(img, 0, 0);
    const px = g.getImageData(0, 0, canvas.width, canvas.height);
    const stops = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
    for (let i = 0; i < px.data.length; i += 4) {
      const v = px.data[i] / 255;
      const t = v * (stops.length - 1);
      const k = Math.min(Math.floor(t), stops.length - 2);
      const f = t - k;
      for (let c = 0; c < 3; c++) px.data[i + c] = stops[k][c] + (stops[k + 1][c] - stops[k][c]) * f;
      px.data[i + 3] = Math.round(255 * Math.max(0, Math.min(1, (v - 0.3) / 0.3)));
    }
    g.putImageData(px, 0, 0);
    return canvas.toDataURL("image/png");
  }

  /* Add the heatmap at `url` over the whole image; resolves to the OpenSeadragon item. */
  async function addHeatmap(viewer, url, opacity) {
    const res = await fetch(url, { credentials: "same-origin" });
    if (!res.ok) throw new Error("no heatmap (" + res.status + ")");
    const img = new Image();
    img.src = URL.createObjectURL(await res.blob());
    await img.decode();
    return new Promise((resolve) => {
      viewer.addSimpleImage({ url: colormap(img), x: 0, y: 0, width: 1, opacity, success: (ev) => resolve(ev.item) });
    });
  }

  function bounds(points) {
    const xs = points.map((p) => p[0]);
    const ys = points.map((p) => p[1]);
    return { minX: Math.min(...xs), minY: Math.min(...ys), maxX: Math.max(...xs), maxY: Math.max(...ys) };
  }

  /* Loupe geometry (full-resolution pixels) -> Annotorious selector, and back. */
  function toSelector(g) {
    if (g.type === "box") {
      return { type: "RECTANGLE", geometry: { x: g.x, y: g.y, w: g.w, h: g.h, bounds: { minX: g.x, minY: g.y, maxX: g.x + g.w, maxY: g.y + g.h } } };
    }
    return { type: "POLYGON", geometry: { points: g.points, bounds: bounds(g.points) } };
  }

  function toGeometry(selector) {
    const g = selector.geometry;
    if (selector.type === "RECTANGLE") return { type: "box", x: g.x, y: g.y, w: g.w, h: g.h };
    if (selector.type === "POLYGON") return { type: "polygon", points: g.points };
    return null;
  }

  window.LoupeOverlay = { colormap, addHeatmap, bounds, toSelector, toGeometry };
})();
// Note: with the heatmap as a second world item OpenSeadragon warns that viewport<->image
// conversions are "not accurate with multi-image". They stay exact here: the heatmap covers the
// image's bounds exactly and has no more pixels than the image, so the world's content size is
// the image's own.
