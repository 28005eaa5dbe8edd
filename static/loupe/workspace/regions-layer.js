/* The project's regions of interest over the image (I toggles): each region's outline and name,
 * an excluded one hatched ("never suggested here"). The polygons are drawn on a reference image;
 * region-placement.js maps them into this image through its stored alignment onto that
 * reference, and an image without one gets a status line instead of outlines in the wrong
 * place. Each pane (panes.js) has its own SVG layer over its viewer, redrawn as the view moves;
 * the switch follows the person from image to image. */

import { placeRegions } from "./region-placement.js";

const SVG = "http://www.w3.org/2000/svg";
let layers = 0; // each layer's hatch pattern has an id of its own (two panes, one document)

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  if (text != null) node.textContent = text;
  return node;
}

export function bindRegions(ctx) {
  const viewerEl = ctx.els.viewer;
  const toggle = document.getElementById("regions-toggle");
  const label = toggle.closest("label");
  const statusEl = document.getElementById("regions-status");

  /** The pane's SVG layer, made once, redrawn whenever its view moves. */
  function layerOf(pane) {
    if (pane.regionLayer) return pane.regionLayer;
    const hatch = `ws-region-hatch-${++layers}`;
    const el = svg("svg", { class: "ws-region-layer", "aria-hidden": "true" });
    el.innerHTML =
      `<defs><pattern id="${hatch}" patternUnits="userSpaceOnUse" width="8" height="8" patternTransform="rotate(45)">` +
      '<rect width="8" height="8" class="hatch-shade"/><line x1="0" y1="0" x2="0" y2="8" class="hatch-line"/></pattern></defs><g class="regions"></g>';
    pane.viewer.canvas.appendChild(el);
    pane.regionLayer = { el, hatch, source: null, placed: null };
    const redraw = () => draw(pane);
    pane.viewer.addHandler("update-viewport", redraw);
    pane.viewer.addHandler("resize", redraw);
    pane.viewer.addHandler("open", redraw);
    return pane.regionLayer;
  }

  /** What the pane's image gets, worked out again only when its data changed. */
  function placedFor(pane) {
    const layer = layerOf(pane);
    if (layer.source !== pane.data) {
      layer.source = pane.data;
      const image = pane.data && pane.data.image;
      layer.placed = image ? placeRegions(image.regions, { width: image.width, height: image.height }) : placeRegions(null);
    }
    return layer.placed;
  }

  function draw(pane) {
    const layer = layerOf(pane);
    const g = layer.el.querySelector(".regions");
    g.replaceChildren();
    const placed = placedFor(pane);
    const item = pane.viewer.world.getItemAt(0);
    if (!toggle.checked || !placed.drawn.length || !item || !pane.viewer.isOpen()) return;
    const toScreen = ([x, y]) => {
      const p = item.imageToViewerElementCoordinates(new window.OpenSeadragon.Point(x, y));
      return [p.x, p.y];
    };
    for (const r of placed.drawn) {
      const group = svg("g", { class: `region ${r.excluded ? "excluded" : "inspected"}`, "data-region": r.id, "data-name": r.name });
      const points = r.polygon.map((p) => toScreen(p).map((v) => v.toFixed(1)).join(",")).join(" ");
      const outline = svg("polygon", { points });
      if (r.excluded) outline.setAttribute("fill", `url(#${layer.hatch})`);
      group.appendChild(outline);
      const [lx, ly] = toScreen(r.anchor);
      group.appendChild(svg("text", { x: lx.toFixed(1), y: (ly - 6).toFixed(1) }, r.excluded ? `${r.name} (excluded: never suggested)` : r.name));
      g.appendChild(group);
    }
  }

  /** The switch, the status line and the viewer's data-regions follow the image on screen. */
  function shown() {
    const pane = ctx.pane;
    const placed = placedFor(pane);
    const regions = ctx.data.image.regions;
    const has = placed.state !== "none";
    toggle.disabled = !has;
    label.hidden = !has;
    if (!has) {
      delete viewerEl.dataset.regions;
      delete viewerEl.dataset.regionsState;
    } else {
      viewerEl.dataset.regionsState = placed.state;
      viewerEl.dataset.regions = !toggle.checked ? "hidden" : placed.drawn.length ? "shown" : "unplaced";
      label.title = placed.drawn.length
        ? `${placed.drawn.length} region(s) of interest drawn on ${regions.reference.name} (I toggles)`
        : placed.message;
    }
    const line = has && toggle.checked ? placed.message : "";
    statusEl.textContent = line;
    statusEl.hidden = !line;
    statusEl.dataset.state = has ? placed.state : "none";
    draw(pane);
  }

  /** The image on screen's `regions` data changed in place (its pair, in the Reference panel). */
  function refresh() {
    layerOf(ctx.pane).source = null;
    shown();
  }

  toggle.addEventListener("change", shown);
  return { shown, refresh, prepare: (pane) => layerOf(pane) };
}
