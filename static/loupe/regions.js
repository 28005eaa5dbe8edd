/* The regions of interest page: a project's reference image in a deep-zoom viewer with every
 * region outlined on it (an SVG layer that follows pan and zoom), the list of regions beside it
 * (mode, threshold, model, training, delete), drawing a new region (click points, Enter or
 * double-click closes, Esc cancels) and the project's setting for the area outside all regions.
 *
 * The API (inspection/api): GET/POST /api/projects/<pid>/regions/, PATCH/DELETE
 * /api/regions/<id>/, POST /api/regions/<id>/train/, PATCH /api/projects/<pid>/ for
 * {"inspection": {"outside_regions": ...}}. Polygons are in pixels of the upright reference image.
 *
 * Needs OpenSeadragon (global) and app.js (window.Loupe: request, watchJob). Only admins write;
 * for others the page is read-only (the template leaves out the drawing controls).
 */

/* global OpenSeadragon */

import { createViewer, whenLoaded } from "./workspace/viewer.js";

const SVG = "http://www.w3.org/2000/svg";
// inspected regions, one colour each (the list's swatch says which outline is which)
const COLOURS = ["#38bdf8", "#f59e0b", "#a78bfa", "#34d399", "#f472b6", "#fb923c", "#60a5fa", "#facc15"];
const CLOSE_PX = 9; // a click this near the first point closes the outline
const SAME_PX = 4; // a click this near the last point adds nothing (the 2nd click of a double-click)

const root = document.getElementById("regions-page");
const canEdit = root.dataset.canEdit === "true";
const reviewUrl = root.dataset.reviewUrl || "";  // reviewers: a region's suggestions in the queue
const architectures = JSON.parse(document.getElementById("region-architectures").textContent);
// the server's URLs (under its script prefix), the region's id in place of the 0
const withId = (template, id) => template.replace(/\/0\/(train\/)?$/, (_, train) => `/${id}/${train || ""}`);
const urls = {
  list: root.dataset.regionsUrl,
  region: (id) => withId(root.dataset.regionUrl, id),
  train: (id) => withId(root.dataset.trainUrl, id),
  project: root.dataset.projectUrl,
};
const $ = (id) => document.getElementById(id);
const els = {
  viewer: $("region-viewer"),
  list: $("region-list"),
  count: $("region-count"),
  error: $("region-error"),
  refLabel: $("reference-label"),
  refChoice: $("reference-choice"),
  refSelect: $("region-reference"),
  noRef: $("no-reference"),
  draw: $("region-draw"),
  drawTools: $("draw-tools"),
  drawHint: $("draw-hint"),
  finish: $("region-finish"),
  cancel: $("region-cancel"),
  form: $("region-form"),
  formPoints: $("region-form-points"),
  name: $("region-name"),
  mode: $("region-mode"),
  formCancel: $("region-form-cancel"),
  outside: $("outside-regions"),
  outsideStatus: $("outside-status"),
};

const state = {
  data: null, // the last GET of the regions
  image: null, // the reference on screen: {id, name, width, height, dzi}
  draw: null, // {points: [[x, y]...], cursor: [x, y] | null, closed: bool, target: region id | null}
  selected: null, // a region id
  training: new Map(), // region id -> text of its training job's progress
};

/* --- messages ------------------------------------------------------------------------------ */

/** The API's refusal as one readable sentence: {"detail": ...}, {"error": ...} or
 * {"field": ["message", ...], ...} (nested objects too). */
export function errorText(status, body) {
  if (body && typeof body === "object") {
    if (typeof body.detail === "string") return body.detail;
    if (typeof body.error === "string") return body.error;
    const parts = [];
    const walk = (value, path) => {
      if (value == null) return;
      if (typeof value === "string") parts.push(path && path !== "non_field_errors" ? `${path}: ${value}` : value);
      else if (Array.isArray(value)) value.forEach((v) => walk(v, path));
      else if (typeof value === "object") Object.entries(value).forEach(([k, v]) => walk(v, k));
    };
    walk(body, "");
    if (parts.length) return parts.join(" ");
  }
  if (status === 403) return "Only project admins may change regions.";
  if (status === 404) return "Not found (the region may have been deleted meanwhile): reload the page.";
  return `The server answered ${status}.`;
}

function showError(message) {
  els.error.textContent = message;
  els.error.hidden = !message;
}

async function call(method, url, body) {
  let res;
  try {
    res = await window.Loupe.request(method, url, body);
  } catch (e) {
    showError("Network error: nothing was saved. Check the connection and try again.");
    return null;
  }
  if (res.status >= 400) {
    showError(errorText(res.status, res.body));
    return null;
  }
  showError("");
  return res;
}

/* --- geometry -------------------------------------------------------------------------------- */

function pointInPolygon(x, y, polygon) {
  let inside = false;
  for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
    const [xi, yi] = polygon[i];
    const [xj, yj] = polygon[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function bounds(polygon) {
  const xs = polygon.map((p) => p[0]);
  const ys = polygon.map((p) => p[1]);
  return { x0: Math.min(...xs), y0: Math.min(...ys), x1: Math.max(...xs), y1: Math.max(...ys) };
}

/* --- the viewer and its region layer --------------------------------------------------------- */

const viewer = createViewer(els.viewer);
const layer = document.createElementNS(SVG, "svg");
layer.setAttribute("class", "region-layer");
layer.setAttribute("aria-hidden", "true");
layer.innerHTML =
  '<defs><pattern id="region-hatch" patternUnits="userSpaceOnUse" width="8" height="8" patternTransform="rotate(45)">' +
  '<line x1="0" y1="0" x2="0" y2="8" class="hatch-line"/></pattern></defs><g class="regions"></g><g class="draft"></g>';
viewer.canvas.appendChild(layer);

const toScreen = ([x, y]) => {
  const p = viewer.viewport.imageToViewerElementCoordinates(new OpenSeadragon.Point(x, y));
  return [p.x, p.y];
};
const toImage = (position) => {
  const p = viewer.viewport.viewerElementToImageCoordinates(position);
  const { width, height } = state.image;
  return [Math.round(Math.min(width, Math.max(0, p.x)) * 10) / 10, Math.round(Math.min(height, Math.max(0, p.y)) * 10) / 10];
};
const pointsAttr = (polygon) => polygon.map((p) => toScreen(p).map((v) => v.toFixed(1)).join(",")).join(" ");

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  if (text != null) node.textContent = text;
  return node;
}

const regions = () => (state.data ? state.data.results : []);
const shown = () => regions().filter((r) => state.image && r.reference === state.image.id);
const colourOf = (region) => COLOURS[regions().indexOf(region) % COLOURS.length];

/** Redraw every outline (cheap: a handful of polygons) at the viewport's current place. */
function drawLayer() {
  const g = layer.querySelector(".regions");
  const d = layer.querySelector(".draft");
  g.replaceChildren();
  d.replaceChildren();
  if (!state.image || !viewer.isOpen()) return;
  for (const r of shown()) {
    if (!r.polygon || r.polygon.length < 3) continue;
    if (state.draw && state.draw.target === r.id) continue; // being redrawn: the draft shows
    const excluded = r.mode === "exclude";
    const group = svg("g", {
      class: `region ${excluded ? "excluded" : "inspected"}${state.selected === r.id ? " selected" : ""}`,
      "data-region": r.id,
      style: excluded ? "" : `--c: ${colourOf(r)}`,
    });
    group.appendChild(svg("polygon", { points: pointsAttr(r.polygon) }));
    const top = r.polygon.reduce((a, b) => (b[1] < a[1] ? b : a));
    const [lx, ly] = toScreen(top);
    group.appendChild(svg("text", { x: lx.toFixed(1), y: (ly - 6).toFixed(1) }, excluded ? `${r.name} (excluded)` : r.name));
    g.appendChild(group);
  }
  const draft = state.draw;
  if (draft && draft.points.length) {
    const pts = draft.points.slice();
    if (!draft.closed && draft.cursor) pts.push(draft.cursor);
    d.appendChild(svg(draft.closed ? "polygon" : "polyline", { points: pointsAttr(pts), class: "draft-line" }));
    if (!draft.closed && draft.cursor && draft.points.length >= 2) {
      // where the outline would close
      const [ax, ay] = toScreen(draft.cursor);
      const [bx, by] = toScreen(draft.points[0]);
      d.appendChild(svg("line", { x1: ax, y1: ay, x2: bx, y2: by, class: "draft-closing" }));
    }
    draft.points.forEach((p, i) => {
      const [x, y] = toScreen(p);
      d.appendChild(svg("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: i === 0 ? 5 : 3.5, class: i === 0 ? "draft-vertex first" : "draft-vertex" }));
    });
  }
}

viewer.addHandler("update-viewport", drawLayer);
viewer.addHandler("resize", drawLayer);
viewer.addHandler("open", () => {
  els.viewer.dataset.open = String(state.image.id);
  delete els.viewer.dataset.tileLoaded;
  drawLayer();
  whenLoaded(viewer).then(() => { els.viewer.dataset.tileLoaded = "true"; }, () => {});
});
viewer.addHandler("open-failed", () => {
  showError(`The zoomable view of ${state.image ? state.image.name : "the reference"} could not be opened.`);
});

function openImage(image) {
  const same = state.image && image && state.image.id === image.id && viewer.isOpen();
  state.image = image;
  if (same) return drawLayer();
  delete els.viewer.dataset.open;
  if (!image) {
    viewer.close();
    els.viewer.hidden = true;
    return;
  }
  els.viewer.hidden = false;
  if (!image.dzi) {
    viewer.close();
    showError(`The zoomable view of ${image.name} is still being prepared: reload in a moment.`);
    return;
  }
  viewer.open(image.dzi);
}

/* Outside drawing, a click on an outline selects its region in the list. */
viewer.addHandler("canvas-click", (e) => {
  if (state.draw) {
    e.preventDefaultAction = true; // never zoom (or anything else) on a drawing click
    if (e.quick) addPoint(e.position);
    return;
  }
  if (!e.quick || !state.image) return;
  const [x, y] = toImage(e.position);
  const hit = shown().filter((r) => pointInPolygon(x, y, r.polygon || []));
  if (hit.length) select(hit[hit.length - 1].id, { zoom: false });
});
viewer.addHandler("canvas-double-click", (e) => {
  if (!state.draw) return;
  e.preventDefaultAction = true;
  finish();
});
els.viewer.addEventListener("pointermove", (e) => {
  if (!state.draw || state.draw.closed || !state.image || !viewer.isOpen()) return;
  const box = els.viewer.getBoundingClientRect();
  state.draw.cursor = toImage(new OpenSeadragon.Point(e.clientX - box.left, e.clientY - box.top));
  drawLayer();
});
els.viewer.addEventListener("pointerleave", () => {
  if (state.draw && state.draw.cursor) { state.draw.cursor = null; drawLayer(); }
});

/* --- drawing ------------------------------------------------------------------------------- */

function drawHint() {
  if (!els.drawHint || !state.draw) return;
  const n = state.draw.points.length;
  const what = state.draw.target ? "New outline" : "Click on the image to add points";
  els.drawHint.textContent = `${what}: ${n} point${n === 1 ? "" : "s"}${n >= 3 ? " · Enter or double-click closes it" : ""} · Esc cancels`;
  els.finish.disabled = n < 3;
}

function startDraw(target = null) {
  if (!canEdit || !state.image || !viewer.isOpen()) return;
  showError("");
  state.draw = { points: [], cursor: null, closed: false, target };
  els.form.hidden = true;
  els.drawTools.hidden = false;
  els.draw.hidden = true;
  els.refSelect.disabled = true;
  els.viewer.classList.add("drawing");
  els.viewer.focus({ preventScroll: true });
  drawHint();
  drawLayer();
}

function stopDraw() {
  state.draw = null;
  if (!els.form) return;
  els.form.hidden = true;
  els.drawTools.hidden = true;
  els.draw.hidden = false;
  els.refSelect.disabled = false;
  els.viewer.classList.remove("drawing");
  drawLayer();
}

function addPoint(position) {
  const draft = state.draw;
  if (!draft || draft.closed || !state.image) return;
  const [sx, sy] = [position.x, position.y];
  const near = (p, px) => { const [x, y] = toScreen(p); return Math.hypot(x - sx, y - sy) <= px; };
  if (draft.points.length >= 3 && near(draft.points[0], CLOSE_PX)) return finish();
  if (draft.points.length && near(draft.points[draft.points.length - 1], SAME_PX)) return;
  draft.points.push(toImage(position));
  drawHint();
  drawLayer();
}

async function finish() {
  const draft = state.draw;
  if (!draft || draft.closed) return;
  if (draft.points.length < 3) {
    showError("A region needs at least 3 points: click on the image to add them (Esc cancels).");
    return;
  }
  showError("");
  draft.closed = true;
  draft.cursor = null;
  els.drawTools.hidden = true;
  drawLayer();
  if (draft.target) {
    // a new outline for an existing region: saved at once
    const res = await call("PATCH", urls.region(draft.target), { polygon: draft.points });
    if (!res) { draft.closed = false; els.drawTools.hidden = false; drawLayer(); return; }
    replaceRegion(res.body);
    stopDraw();
    return;
  }
  els.formPoints.textContent = `An outline of ${draft.points.length} points on ${state.image.name}.`;
  els.form.hidden = false;
  els.name.focus();
}

async function save(event) {
  event.preventDefault();
  const draft = state.draw;
  if (!draft || !draft.closed) return;
  const name = els.name.value.trim();
  if (!name) {
    showError("Name the region before saving it.");
    els.name.focus();
    return;
  }
  const button = $("region-save");
  button.disabled = true;
  try {
    const res = await call("POST", urls.list, {
      name,
      reference: state.image.id,
      polygon: draft.points,
      mode: els.mode.value,
    });
    if (!res) return;
    els.name.value = "";
    els.mode.value = "inspect";
    stopDraw();
    state.selected = res.body && res.body.id;
    await load();
  } finally {
    button.disabled = false;
  }
}

if (canEdit) {
  els.draw.addEventListener("click", () => startDraw());
  els.finish.addEventListener("click", () => finish());
  els.cancel.addEventListener("click", () => stopDraw());
  els.formCancel.addEventListener("click", () => stopDraw());
  els.form.addEventListener("submit", save);
  // capture: before OpenSeadragon's own key handling on the focused viewer
  document.addEventListener("keydown", (e) => {
    if (!state.draw) return;
    // a key meant for a field (the list's threshold, the new region's name) stays there
    const field = e.target && e.target.closest && e.target.closest("input, select, textarea");
    if (field && e.key === "Enter") return;
    if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      stopDraw();
    } else if (e.key === "Enter" && !state.draw.closed) {
      e.preventDefault();
      e.stopPropagation();
      finish();
    }
  }, true);
}

/* --- the list ------------------------------------------------------------------------------ */

function h(tag, attrs, children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => {
    if (v == null || v === false) return;
    if (k === "text") node.textContent = v; else node.setAttribute(k, v === true ? "" : v);
  });
  (children || []).forEach((c) => c != null && node.appendChild(typeof c === "string" ? document.createTextNode(c) : c));
  return node;
}

function modelText(r) {
  if (r.mode === "exclude") return "not inspected";
  if (!r.model) {
    // model_status is then the latest training's
    const last = { training: "one is training", failed: "the last training failed", ready: "one is ready: choose it" }[r.model_status];
    return "no model of its own yet" + (last ? ` (${last})` : "");
  }
  const own = (r.models || []).find((m) => m.id === r.model_version);
  const seen = own && own.trained_on != null ? ` · trained on ${own.trained_on} normal image${own.trained_on === 1 ? "" : "s"}` : "";
  return `${r.model}${r.model_status ? " · " + r.model_status : ""}${seen}`;
}

/** The normal images the region's model could not be trained on (not registered), or "". */
function skippedText(r) {
  const own = (r.models || []).find((m) => m.id === r.model_version);
  if (!own || !own.skipped || !own.skipped.length) return "";
  const n = own.skipped.length;
  return `${n} normal image${n === 1 ? "" : "s"} left out (not registered onto the reference): ` +
    own.skipped.slice(0, 3).map((x) => x.name).join(", ") + (n > 3 ? "…" : "");
}

/** Whether one of the region's models is training now (its own model may be another, ready). */
function trainingNow(r) {
  return (r.models || []).some((m) => m.status === "training");
}

function thresholdText(r) {
  return r.threshold == null ? "auto (the project's)" : String(r.threshold);
}

function regionItem(r) {
  const excluded = r.mode === "exclude";
  const li = h("li", {
    class: `region-item ${excluded ? "excluded" : "inspected"}${state.selected === r.id ? " selected" : ""}`,
    "data-region": r.id,
    "data-mode": r.mode,
  });
  const swatch = h("span", { class: "swatch", style: excluded ? null : `background: ${colourOf(r)}` });
  const name = h("button", { type: "button", class: "link region-name", title: "Show it on the image", text: r.name });
  name.addEventListener("click", () => select(r.id, { zoom: true }));
  const n = r.suggestions || 0;
  li.appendChild(h("div", { class: "region-head" }, [
    swatch, name,
    h("span", { class: `badge mode-${r.mode}`, text: excluded ? "excluded" : "inspected" }),
    n && reviewUrl
      ? h("a", { class: "hint region-suggestions", href: `${reviewUrl}?region=${r.id}`, title: "Review them", text: `${n} pending suggestion${n === 1 ? "" : "s"}` })
      : h("span", { class: "hint region-suggestions", text: `${n} pending suggestion${n === 1 ? "" : "s"}` }),
  ]));
  li.appendChild(h("div", { class: "hint region-model" }, [
    h("span", { class: { ready: "status-succeeded", failed: "status-failed" }[r.model_status] || null, text: modelText(r) }),
    excluded ? null : ` · threshold ${thresholdText(r)}`,
  ]));
  const left = excluded ? "" : skippedText(r);
  if (left) {
    const own = r.models.find((m) => m.id === r.model_version);
    li.appendChild(h("div", { class: "hint region-skipped", title: own.skipped.map((x) => `${x.name}: ${x.reason}`).join("\n"), text: left }));
  }
  if (!canEdit) return li;

  const mode = h("select", { class: "region-mode", "aria-label": `Mode of ${r.name}` }, [
    h("option", { value: "inspect", text: "inspect", selected: !excluded }),
    h("option", { value: "exclude", text: "exclude", selected: excluded }),
  ]);
  mode.addEventListener("change", () => patch(r, { mode: mode.value }));
  const edits = [h("label", {}, ["Mode", mode])];
  if (!excluded) {
    const threshold = h("input", {
      class: "region-threshold", type: "number", min: "0.05", max: "10", step: "any", placeholder: "auto",
      value: r.threshold == null ? "" : String(r.threshold), "aria-label": `Threshold of ${r.name} (empty: the project's)`,
      title: "Calibrated score: 0.5 is the model's own threshold, higher means fewer, surer suggestions. Empty: the project's.",
    });
    threshold.addEventListener("change", () => {
      const raw = threshold.value.trim();
      if (raw === "") return patch(r, { threshold: null });
      const value = Number(raw);
      if (!Number.isFinite(value) || value <= 0) {
        showError("The threshold is a positive number (0.5 is the model's own), or empty for the project's.");
        return;
      }
      patch(r, { threshold: value });
    });
    const models = r.models || [];
    const model = h("select", { class: "region-model-select", "aria-label": `Model of ${r.name}`, disabled: !models.length }, [
      h("option", { value: "", text: models.length ? "— none —" : "— none trained yet —", selected: r.model_version == null }),
      ...models.map((m) => h("option", {
        value: String(m.id), text: m.status === "ready" ? m.label : `${m.label} (${m.status})`,
        selected: m.id === r.model_version, disabled: m.status !== "ready" && m.id !== r.model_version,
      })),
    ]);
    model.addEventListener("change", () => patch(r, { model_version: model.value ? Number(model.value) : null }));
    edits.push(h("label", {}, ["Threshold", threshold]), h("label", {}, ["Model", model]));
  }
  li.appendChild(h("div", { class: "row region-edit" }, edits));

  const actions = [];
  if (!excluded) {
    const arch = h("select", { class: "region-arch", "aria-label": `Model to train for ${r.name}` },
      architectures.map((a) => h("option", { value: a, text: a, selected: a === "padim" })));
    const train = h("button", { type: "button", class: "region-train", disabled: state.training.has(r.id) || trainingNow(r), text: "Train" });
    train.addEventListener("click", () => trainRegion(r, arch.value, train));
    actions.push(h("label", { class: "inline" }, [arch]), train);
  }
  const redraw = h("button", { type: "button", class: "link region-redraw", text: "Redraw", title: "Draw a new outline for this region" });
  redraw.addEventListener("click", () => { select(r.id, { zoom: false }); startDraw(r.id); });
  const del = h("button", { type: "button", class: "link danger region-delete", text: "Delete" });
  del.addEventListener("click", () => remove(r));
  actions.push(h("span", { class: "grow" }), redraw, del);
  li.appendChild(h("div", { class: "row region-actions" }, actions));
  li.appendChild(h("div", { class: "hint region-job", role: "status", text: state.training.get(r.id) || "" }));
  return li;
}

function renderList() {
  const list = regions();
  els.list.replaceChildren(...(list.length ? list.map(regionItem) : [h("li", { class: "hint empty", text: canEdit ? "No region yet: choose the reference and draw one." : "No region yet." })]));
  els.count.textContent = list.length ? `(${list.length})` : "";
}

function replaceRegion(region) {
  const list = state.data.results;
  const i = list.findIndex((r) => r.id === region.id);
  if (i >= 0) list[i] = region; else list.push(region);
  renderList();
  drawLayer();
}

function select(id, { zoom }) {
  state.selected = id;
  els.list.querySelectorAll("li[data-region]").forEach((li) => li.classList.toggle("selected", li.dataset.region === String(id)));
  const item = els.list.querySelector(`li[data-region="${id}"]`);
  if (item) item.scrollIntoView({ block: "nearest" });
  const r = regions().find((x) => x.id === id);
  if (zoom && r && r.polygon && r.polygon.length && viewer.isOpen()) {
    const b = bounds(r.polygon);
    const m = 0.15 * Math.max(b.x1 - b.x0, b.y1 - b.y0, 1);
    viewer.viewport.fitBounds(viewer.viewport.imageToViewportRectangle(b.x0 - m, b.y0 - m, b.x1 - b.x0 + 2 * m, b.y1 - b.y0 + 2 * m));
  }
  drawLayer();
}

async function patch(region, changes) {
  const res = await call("PATCH", urls.region(region.id), changes);
  if (res) replaceRegion(res.body);
  else renderList(); // the controls go back to what the server has
}

async function remove(region) {
  const n = region.suggestions || 0;
  const also = n ? ` Its ${n} pending suggestion${n === 1 ? "" : "s"} stay${n === 1 ? "s" : ""} in the review queue.` : "";
  if (!window.confirm(`Delete the region "${region.name}"?${also}`)) return;
  const res = await call("DELETE", urls.region(region.id));
  if (!res) return;
  state.data.results = state.data.results.filter((r) => r.id !== region.id);
  if (state.selected === region.id) state.selected = null;
  if (!state.data.results.length) await load(); // the reference may be free to choose again
  else { renderList(); drawLayer(); }
}

async function trainRegion(region, architecture, button) {
  button.disabled = true;
  const res = await call("POST", urls.train(region.id), { architecture });
  if (!res) { button.disabled = false; return; }
  // the job as {"job": {"id", ...}}, or {"job_detail": {...}} beside the model version's "job" id
  const body = res.body || {};
  const job = body.job_detail || (body.job && typeof body.job === "object" ? body.job : { id: body.job });
  const say = (text) => {
    state.training.set(region.id, text);
    const node = els.list.querySelector(`li[data-region="${region.id}"] .region-job`);
    if (node) node.textContent = text;
  };
  say(`Training ${architecture} on this region's crops of the normal images…`);
  await load();
  if (!job.id) return;
  const done = await window.Loupe.watchJob(job.id, (j) => say(`Training ${architecture}: ${j.status} ${Math.round(j.progress || 0)} %${j.message ? " · " + j.message : ""}`));
  state.training.delete(region.id);
  if (done.status !== "succeeded") showError(`Training ${architecture} for "${region.name}" ${done.status}${done.error ? ": " + done.error.split("\n")[0] : "."}`);
  await load();
}

/* --- the project's setting for the area outside every region -------------------------------- */

els.outside.addEventListener("change", async () => {
  els.outsideStatus.textContent = "Saving…";
  const value = els.outside.value;
  const res = await call("PATCH", urls.project, { inspection: { outside_regions: value } });
  if (!res) {
    els.outsideStatus.textContent = "";
    if (state.data) els.outside.value = state.data.outside;
    return;
  }
  if (state.data) state.data.outside = value;
  els.outsideStatus.textContent = value === "ignore"
    ? "Saved: the next runs inspect the regions only."
    : "Saved: the next runs inspect the rest of the image with the project's model.";
});

/* --- loading ------------------------------------------------------------------------------- */

function chooseReference() {
  const data = state.data;
  const refs = data.references || [];
  // once regions exist they are drawn on their reference; before, any reference may be chosen
  if (data.reference) {
    els.refChoice.hidden = true;
    els.refLabel.textContent = `On ${data.reference.name} (${data.reference.width} × ${data.reference.height} px)`;
    els.noRef.hidden = true;
    return data.reference;
  }
  if (!refs.length) {
    els.refChoice.hidden = true;
    els.refLabel.textContent = "";
    els.noRef.hidden = false;
    return null;
  }
  els.noRef.hidden = true;
  els.refLabel.textContent = "";
  const current = state.image && refs.find((r) => r.id === state.image.id);
  els.refSelect.replaceChildren(...refs.map((r) => h("option", { value: String(r.id), text: `${r.name} (${r.width} × ${r.height} px)` })));
  const chosen = current || refs[0];
  els.refSelect.value = String(chosen.id);
  els.refChoice.hidden = false;
  return chosen;
}

els.refSelect.addEventListener("change", () => {
  const ref = (state.data.references || []).find((r) => String(r.id) === els.refSelect.value);
  if (ref) openImage(ref);
});

let polling = null;
async function load() {
  let res;
  try {
    res = await window.Loupe.request("GET", urls.list);
  } catch (e) {
    showError("Network error: the regions could not be loaded. Reload the page.");
    return;
  }
  if (res.status !== 200) {
    showError(`The regions could not be loaded: ${errorText(res.status, res.body)}`);
    return;
  }
  state.data = res.body;
  state.data.results = state.data.results || [];
  els.outside.value = state.data.outside || "inspect";
  const image = chooseReference();
  openImage(image);
  if (els.draw) els.draw.disabled = !image || !image.dzi;
  renderList();
  drawLayer();
  root.dataset.loaded = String(Date.now());
  // while a region's model trains, its status follows without a reload
  clearTimeout(polling);
  if (regions().some(trainingNow)) {
    polling = setTimeout(() => {
      const editing = els.list.contains(document.activeElement) && document.activeElement.tagName !== "BUTTON";
      if (!state.draw && !editing) load();
      else polling = setTimeout(load, 5000);
    }, 5000);
  }
}

els.viewer.addEventListener("keydown", (e) => {
  // + / - / 0 zoom and fit, as in the workspace (OpenSeadragon's own keys are off)
  if (e.target !== els.viewer && !els.viewer.contains(e.target)) return;
  if (e.key === "+" || e.key === "=") viewer.viewport.zoomBy(1.4);
  else if (e.key === "-") viewer.viewport.zoomBy(1 / 1.4);
  else if (e.key === "0") viewer.viewport.goHome();
  else return;
  viewer.viewport.applyConstraints();
});

// for browser tests and the console: where an image pixel is on screen, and back
window.loupeRegions = {
  view: () => {
    const c = viewer.viewport.getCenter(true);
    return { x: c.x, y: c.y, zoom: viewer.viewport.getZoom(true) };
  },
  imageToWindow: (x, y) => {
    const p = viewer.viewport.imageToWindowCoordinates(new OpenSeadragon.Point(x, y));
    return { x: p.x, y: p.y };
  },
  windowToImage: (x, y) => {
    const p = viewer.viewport.windowToImageCoordinates(new OpenSeadragon.Point(x, y));
    return { x: p.x, y: p.y };
  },
};

load();
