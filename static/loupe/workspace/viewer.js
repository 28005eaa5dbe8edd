/* A deep-zoom viewer (OpenSeadragon) and the shape layer on top of it (Annotorious), and
 * promises for "the viewer has drawn" and "every tile of this view is loaded". The workspace
 * keeps two of each (panes.js). */

/* global OpenSeadragon, AnnotoriousOSD */

/** A viewer in `element`, empty until it opens an image. */
export function createViewer(element) {
  const viewer = OpenSeadragon({
    element,
    prefixUrl: document.querySelector("script[src*='openseadragon.min.js']").src.replace(/openseadragon\.min\.js.*$/, "images/"),
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 16,
    zoomPerScroll: 1.4,
    loadTilesWithAjax: true,
    ajaxWithCredentials: true,
    imageLoaderLimit: 8,
    // OpenSeadragon starts one new tile per frame by default; on a busy CPU a frame takes
    // ~60 ms, so a view of 60 tiles (cached ones included) took 3-4 s to fill. 16 per frame
    // fills it in a few frames (benchmarks/review_speed.py, docs/benchmarks.md).
    maxTilesPerFrame: 16,
    visibilityRatio: 0.5,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
    // The canvas drawer: measured 5x faster than OpenSeadragon's WebGL default where WebGL is
    // emulated in software (VMs, PCs without a GPU driver) and as fast elsewhere for plain tiles;
    // ?drawer=webgl switches (see docs/benchmarks.md).
    drawer: new URLSearchParams(window.location.search).get("drawer") || "canvas",
  });
  // Our own keys replace OpenSeadragon's (its w/a/s/d/r/f would clash with shortcuts).
  viewer.addHandler("canvas-key", (e) => { e.preventDefaultAction = true; });
  return viewer;
}

/** Annotorious on `viewer`, drawing each shape with `style(annotation, state)`. */
export function createAnnotator(viewer, user, style) {
  const anno = AnnotoriousOSD.createOSDAnnotator(viewer, {
    drawingEnabled: false,
    drawingMode: "drag",
    autoSave: true,
    style,
  });
  anno.setUser({ id: user, name: user });
  return anno;
}

/** Resolves once the viewer has drawn its current viewport (the next 'update-viewport': the shape
 * layer moves with it), e.g. after an immediate zoom or pan. */
export function nextDraw(viewer) {
  return new Promise((resolve) => {
    viewer.addOnceHandler("update-viewport", () => resolve());
    viewer.forceRedraw();
  });
}

/** Resolves once the current view is drawn with every tile it needs (image and heatmap). Rejects
 * with the tile's URL when a tile fails to load for good while it waits (the view may then never
 * be reported fully loaded), so that a browser test fails with that reason, not at its timeout. */
export async function whenLoaded(viewer) {
  let failed;
  const failure = new Promise((resolve, reject) => {
    failed = (e) => {
      if (e.maxReached === false) return; // OpenSeadragon tries it again
      const url = e.tile && typeof e.tile.getUrl === "function" ? e.tile.getUrl() : String(e.tile && e.tile.url);
      reject(new Error("tile failed to load: " + url + (e.message ? " (" + e.message + ")" : "")));
    };
    viewer.addHandler("tile-load-failed", failed);
  });
  try {
    await Promise.race([nextDraw(viewer), failure]);
    const items = [];
    for (let i = 0; i < viewer.world.getItemCount(); i++) items.push(viewer.world.getItemAt(i));
    await Promise.race([Promise.all(items.map((item) => new Promise((resolve) => item.whenFullyLoaded(resolve)))), failure]);
  } finally {
    viewer.removeHandler("tile-load-failed", failed);
  }
}
