/* What is drawn over the image besides the shapes: the anomaly heatmap (H, with its opacity
 * slider) and the outlines of the image's pending model suggestions (S). The page keeps two
 * viewers (panes.js): each pane has its own heatmap item and outlines, and the switches follow
 * the person from image to image. */

export function bindHeatmap(ctx) {
  const viewerEl = ctx.els.viewer;
  const toggle = document.getElementById("heatmap-toggle");
  const opacityInput = document.getElementById("heatmap-opacity");
  const opacity = () => (toggle.checked ? opacityInput.value / 100 : 0);

  /** Add the heatmap of `pane`'s image to it once (while the switch is on); resolves when it is
   * there. A heatmap that arrives after its pane moved on to another image is dropped. */
  async function prepare(pane) {
    const url = pane.data && pane.data.image.heatmap;
    if (!url || !toggle.checked || pane.heat || pane.heatAdding === pane.image) return;
    const forImage = (pane.heatAdding = pane.image);
    let item;
    try {
      item = await window.LoupeOverlay.addHeatmap(pane.viewer, url, opacity());
    } catch (e) {
      return;
    } finally {
      if (pane.heatAdding === forImage) pane.heatAdding = null;
    }
    // the pane moved on to another image, or another add for it (N / P back and forth) won
    if (pane.image !== forImage || pane.heat) { pane.viewer.world.removeItem(item); return; }
    pane.heat = item;
    item.setOpacity(opacity());
    if (pane === ctx.pane) viewerEl.dataset.heatmap = toggle.checked ? "shown" : "hidden";
  }

  /** The pane on screen changed: the switch and the state follow its image. */
  function shown() {
    const has = Boolean(ctx.data.image.heatmap);
    toggle.disabled = !has;
    opacityInput.disabled = !has;
    const pane = ctx.pane;
    if (pane.heat) {
      pane.heat.setOpacity(opacity());
      viewerEl.dataset.heatmap = toggle.checked ? "shown" : "hidden";
    } else {
      delete viewerEl.dataset.heatmap;
      prepare(pane);
    }
  }

  toggle.addEventListener("change", () => {
    const pane = ctx.pane;
    if (pane.heat) {
      pane.heat.setOpacity(opacity());
      viewerEl.dataset.heatmap = toggle.checked ? "shown" : "hidden";
    } else prepare(pane);
  });
  opacityInput.addEventListener("input", () => {
    if (ctx.pane.heat) ctx.pane.heat.setOpacity(opacity());
  });
  return { prepare, shown };
}

/* Suggestion outlines: the image's pending model suggestions, as dashed boxes with their score
 * (decided ones are labels now, or rejected). Deciding happens in the review queue. */
export function bindSuggestions(ctx) {
  const viewerEl = ctx.els.viewer;
  const sugg = document.getElementById("suggestions-toggle");
  const label = sugg.closest("label");
  let wanted = sugg.checked; // the person's choice, kept from image to image
  let els = [];

  sugg.addEventListener("change", () => {
    wanted = sugg.checked;
    els.forEach((el) => { el.style.display = sugg.checked ? "" : "none"; });
  });

  /** The outlines of the image on screen, fresh from the server (they change as people review). */
  async function load() {
    const { bounds, toSelector, toGeometry } = window.LoupeOverlay;
    const pane = ctx.pane;
    const image = pane.image;
    let r;
    try { r = await window.Loupe.request("GET", pane.data.urls.suggestions); } catch (e) { return; }
    if (pane !== ctx.pane || pane.image !== image) return; // the page moved on
    const pending = (r.body || []).filter((x) => x.status === "pending");
    els.forEach((el) => pane.viewer.removeOverlay(el));
    els = [];
    const item = pane.viewer.world.getItemAt(0);
    pending.forEach((x) => {
      const g = toGeometry(toSelector(x.geometry));
      const b = g.type === "box" ? { minX: g.x, minY: g.y, maxX: g.x + g.w, maxY: g.y + g.h } : bounds(g.points);
      const el = document.createElement("div");
      el.className = "suggestion-outline";
      el.dataset.suggestion = x.id;
      el.title = "Suggestion " + x.score.toFixed(2) + " (" + (x.model || "model") + (x.region_name ? ", region " + x.region_name : "") + ")";
      if (!wanted) el.style.display = "none";
      const tag = document.createElement("span");
      tag.textContent = x.score.toFixed(2);
      el.appendChild(tag);
      pane.viewer.addOverlay({ element: el, location: item.imageToViewportRectangle(b.minX, b.minY, b.maxX - b.minX, b.maxY - b.minY) });
      els.push(el);
    });
    sugg.disabled = !pending.length;
    sugg.checked = pending.length ? wanted : false;
    if (!pending.length) {
      label.title = "No pending suggestions on this image (they come from inspection runs).";
      delete viewerEl.dataset.suggestions;
    } else {
      label.title = pending.length + " pending suggestion(s): review them in the review queue (S toggles)";
      viewerEl.dataset.suggestions = String(pending.length);
    }
  }

  /** Another pane came on screen: the outlines of the one before go (they are fetched anew). */
  function leave(pane) {
    els.forEach((el) => pane.viewer.removeOverlay(el));
    els = [];
    delete viewerEl.dataset.suggestions;
  }

  return { load, leave };
}
