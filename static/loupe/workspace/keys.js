/* Tools, categories, the clipboard, zoom and pan, next / previous, and the keyboard that drives
 * them (see docs/workspace.md#keys). */

import { pageUrl, typingIn } from "./format.js";
import { categoryOf, withCategory } from "./shapes.js";

/* global OpenSeadragon */


/** While a drawing tool is on, the minimap (bottom right) and the control boxes OpenSeadragon
 * wraps it in let the pointer through, so a box dragged onto it ends on the image: the minimap
 * used to take the mouse-up and the shape was lost (issue #17). OpenSeadragon sets the
 * minimap's pointer-events inline, hence a property set here, not a stylesheet rule. */
function minimapLetsThrough(viewer, on) {
  const nav = viewer && viewer.navigator && viewer.navigator.element;
  for (let el = nav; el && !el.classList.contains("openseadragon-container"); el = el.parentElement) {
    if (on) el.style.setProperty("pointer-events", "none", "important");
    else el.style.removeProperty("pointer-events");
  }
  if (nav) nav.style.setProperty("opacity", on ? "0.4" : "0.8");
}

/** Tool and category buttons; returns {setTool, setCategory, tool()}. They act on the viewer on
 * screen (`ctx.anno`, `ctx.viewer`: the page keeps two, see panes.js). */
export function createTools(ctx) {
  let current = "select";

  function setTool(tool) {
    const { anno } = ctx;
    if (tool === "select") {
      anno.setDrawingEnabled(false);
    } else {
      if (!ctx.category) { ctx.toast("Add a defect category first (project settings)."); return; }
      anno.cancelSelected();
      anno.setDrawingTool(tool);
      anno.setDrawingMode(tool === "rectangle" ? "drag" : "click");
      anno.setDrawingEnabled(true);
    }
    current = tool;
    document.querySelectorAll(".tool").forEach((b) => b.setAttribute("aria-pressed", b.dataset.tool === tool ? "true" : "false"));
    ctx.els.viewer.dataset.tool = tool;
    minimapLetsThrough(ctx.viewer, tool !== "select");
  }

  function setCategory(id) {
    if (!ctx.categories.has(String(id))) return;
    ctx.category = String(id);
    document.querySelectorAll(".cat").forEach((b) => b.setAttribute("aria-pressed", b.dataset.category === ctx.category ? "true" : "false"));
    // With a shape selected, the key relabels it (an undoable update).
    const { anno } = ctx;
    anno.getSelected().forEach((a) => {
      if (categoryOf(a) !== ctx.category) anno.updateAnnotation(withCategory(a, ctx.category));
    });
    ctx.renderList();
  }

  document.querySelectorAll(".tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  document.querySelectorAll(".cat").forEach((b) => b.addEventListener("click", () => setCategory(b.dataset.category)));
  return { setTool, setCategory, tool: () => current };
}

function createClipboard(ctx) {
  const { data } = ctx;
  const { bounds, toSelector, toGeometry } = window.LoupeOverlay;
  let clipboard = null; // kept from image to image: a shape copied on one can be pasted on the next

  function copy() {
    const a = ctx.anno.getSelected()[0];
    if (a) { clipboard = { geometry: toGeometry(a.target.selector), category: categoryOf(a) }; ctx.toast("Shape copied: Ctrl+V pastes it"); }
  }

  function paste() {
    if (!clipboard) return;
    const off = 10;
    const W = data.image.width;
    const H = data.image.height;
    const g = JSON.parse(JSON.stringify(clipboard.geometry));
    if (g.type === "box") {
      g.x = Math.min(g.x + off, W - g.w);
      g.y = Math.min(g.y + off, H - g.h);
    } else {
      const b = bounds(g.points);
      const dx = Math.min(off, W - b.maxX);
      const dy = Math.min(off, H - b.maxY);
      g.points = g.points.map(([x, y]) => [x + dx, y + dy]);
    }
    const id = "new-" + Math.random().toString(36).slice(2);
    const a = withCategory({ id, bodies: [], target: { annotation: id, selector: toSelector(g), creator: { id: ctx.me } } }, clipboard.category || ctx.category);
    ctx.anno.state.store.addAnnotation(a, "LOCAL");
    ctx.anno.setSelected(id);
  }

  return { copy, paste };
}

/** Every key of the workspace with a viewer. */
export function bindKeys(ctx, tools, notes) {
  const { data } = ctx;
  const { setTool, setCategory } = tools;
  const clipboard = createClipboard(ctx);

  const deleteSelected = () => ctx.anno.getSelected().forEach((a) => ctx.anno.removeAnnotation(a.id));
  const zoomBy = (f) => { ctx.viewer.viewport.zoomBy(f); ctx.viewer.viewport.applyConstraints(); };
  const panBy = (dx, dy) => {
    const viewport = ctx.viewer.viewport;
    const b = viewport.getBounds();
    viewport.panBy(new OpenSeadragon.Point(dx * b.width, dy * b.height));
    viewport.applyConstraints();
  };
  const toggle = (id) => {
    const t = document.getElementById(id);
    if (!t.disabled) { t.checked = !t.checked; t.dispatchEvent(new Event("change")); }
  };

  const categoryKeys = new Map();
  data.categories.forEach((c, i) => {
    if (i < 9) categoryKeys.set(String(i + 1), String(c.id));
  });
  data.categories.forEach((c) => { if (c.shortcut && !categoryKeys.has(c.shortcut)) categoryKeys.set(c.shortcut, String(c.id)); });

  const actions = {
    b: () => setTool("rectangle"),
    g: () => setTool("polygon"),
    v: () => setTool("select"),
    Escape: () => { ctx.anno.cancelDrawing(); ctx.anno.cancelSelected(); setTool("select"); },
    Delete: deleteSelected,
    Backspace: deleteSelected,
    h: () => toggle("heatmap-toggle"),
    s: () => toggle("suggestions-toggle"),
    i: () => toggle("regions-toggle"),
    f: () => toggle("reference-toggle"),
    d: () => toggle("difference-toggle"),
    o: () => notes.setVerdict("ok"),
    r: () => notes.setVerdict("needs_review"),
    n: () => ctx.images.go("next"),
    p: () => ctx.images.go("previous"),
    "+": () => zoomBy(1.5),
    "=": () => zoomBy(1.5),
    "-": () => zoomBy(1 / 1.5),
    0: () => ctx.viewer.viewport.goHome(),
    ArrowLeft: () => panBy(-0.2, 0),
    ArrowRight: () => panBy(0.2, 0),
    ArrowUp: () => panBy(0, -0.2),
    ArrowDown: () => panBy(0, 0.2),
  };

  document.addEventListener("keydown", (e) => {
    if (typingIn(e) && e.key !== "Escape") return;
    const ctrl = e.ctrlKey || e.metaKey;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (ctrl) {
      // Ctrl+Z / Ctrl+Y: panes.js (undo stays on the image it was made on)
      if (key === "c") { clipboard.copy(); }
      else if (key === "v") { e.preventDefault(); clipboard.paste(); }
      return;
    }
    if (e.altKey) return;
    if (categoryKeys.has(key) && !(key in actions && isNaN(Number(key)))) {
      e.preventDefault();
      setCategory(categoryKeys.get(key));
      return;
    }
    if (actions[key]) { e.preventDefault(); actions[key](); }
  });
}

/** The keys that work without a zoomable view (pyramid pending or failed). */
export function bindPlainKeys(ctx, notes) {
  const { data } = ctx;
  document.addEventListener("keydown", (e) => {
    if (typingIn(e)) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key.toLowerCase();
    if (k === "o") notes.setVerdict("ok");
    else if (k === "r") notes.setVerdict("needs_review");
    else if ((k === "n" && data.neighbors.next) || (k === "p" && data.neighbors.previous)) {
      window.location.href = pageUrl(data, data.neighbors[k === "n" ? "next" : "previous"]);
    }
  });
}
