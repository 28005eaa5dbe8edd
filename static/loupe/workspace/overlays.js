/* What is drawn over the image besides the shapes: the anomaly heatmap (H, with its opacity
 * slider) and the outlines of the image's pending model suggestions (S). */

export function bindHeatmap(ctx) {
  const { data, viewer } = ctx;
  const viewerEl = ctx.els.viewer;
  const toggle = document.getElementById("heatmap-toggle");
  const opacityInput = document.getElementById("heatmap-opacity");
  let heatItem = null;

  async function showHeatmap(on) {
    if (!data.image.heatmap) return;
    if (on && !heatItem) {
      heatItem = await window.LoupeOverlay.addHeatmap(viewer, data.image.heatmap, opacityInput.value / 100);
      viewerEl.dataset.heatmap = "shown";
    } else if (heatItem) {
      heatItem.setOpacity(on ? opacityInput.value / 100 : 0);
      viewerEl.dataset.heatmap = on ? "shown" : "hidden";
    }
  }
  toggle.addEventListener("change", (e) => showHeatmap(e.target.checked));
  opacityInput.addEventListener("input", () => {
    if (heatItem && toggle.checked) heatItem.setOpacity(opacityInput.value / 100);
  });
}

/* Suggestion outlines: the image's pending model suggestions, as dashed boxes with their score
 * (decided ones are labels now, or rejected). Deciding happens in the review queue. */
export function bindSuggestions(ctx) {
  const { data, viewer } = ctx;
  const viewerEl = ctx.els.viewer;
  const sugg = document.getElementById("suggestions-toggle");
  const suggestionEls = [];
  sugg.addEventListener("change", () => suggestionEls.forEach((el) => { el.style.display = sugg.checked ? "" : "none"; }));

  return async function loadSuggestions() {
    const { bounds, toSelector, toGeometry } = window.LoupeOverlay;
    let r;
    try { r = await window.Loupe.request("GET", data.urls.suggestions); } catch (e) { return; }
    const pending = (r.body || []).filter((x) => x.status === "pending");
    const item = viewer.world.getItemAt(0);
    pending.forEach((x) => {
      const g = toGeometry(toSelector(x.geometry));
      const b = g.type === "box" ? { minX: g.x, minY: g.y, maxX: g.x + g.w, maxY: g.y + g.h } : bounds(g.points);
      const el = document.createElement("div");
      el.className = "suggestion-outline";
      el.dataset.suggestion = x.id;
      el.title = "Suggestion " + x.score.toFixed(2) + " (" + (x.model || "model") + ")";
      const tag = document.createElement("span");
      tag.textContent = x.score.toFixed(2);
      el.appendChild(tag);
      viewer.addOverlay({ element: el, location: item.imageToViewportRectangle(b.minX, b.minY, b.maxX - b.minX, b.maxY - b.minY) });
      suggestionEls.push(el);
    });
    if (!pending.length) {
      sugg.disabled = true;
      sugg.checked = false;
      sugg.closest("label").title = "No pending suggestions on this image (they come from inspection runs).";
    } else {
      sugg.closest("label").title = pending.length + " pending suggestion(s): review them in the review queue (S toggles)";
      viewerEl.dataset.suggestions = String(pending.length);
    }
  };
}
