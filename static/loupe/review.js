/* Loupe review queue: model suggestions by score, then annotators' labels, one at a time.
 *
 * Keys: 1-9 category · A accept (or approve a label) · E edit the outline, then A/Enter ·
 * R reject (then 1-4 for the reason, Enter for none) or send a label back (with a comment) ·
 * N next without deciding. Each decision is one API call; the server keeps the record.
 */
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("review-data").textContent);
  const viewerEl = document.getElementById("viewer");
  const toastEl = document.getElementById("toast");
  const countEl = document.getElementById("queue-count");
  const tally = { accepted: 0, rejected: 0, approved: 0, returned: 0 };
  let items = [];
  let index = 0;
  let mode = "idle"; // idle | edit | reject | return
  // The category an accept gives: the one the item proposes (a detector's), else none until the
  // reviewer presses 1-9 for this item. Preselecting the first category (or the last one
  // chosen) made every accept of a trial session the same, wrong, category.
  let category = null;
  let openImage = null;
  let heatItem = null;
  const skipped = new Set();

  const request = Loupe.request;
  const toast = (message) => Loupe.toast(toastEl, message, 5000);

  const url = (template, id) => template.replace("{id}", id);

  const { toSelector: selector, toGeometry: geometry } = LoupeOverlay;

  const viewer = OpenSeadragon({
    element: viewerEl,
    prefixUrl: document.querySelector("script[src*='openseadragon.min.js']").src.replace(/openseadragon\.min\.js.*$/, "images/"),
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 16,
    loadTilesWithAjax: true,
    ajaxWithCredentials: true,
    drawer: "canvas", // see workspace/viewer.js
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
  });
  viewer.addHandler("canvas-key", (e) => { e.preventDefaultAction = true; });
  const anno = AnnotoriousOSD.createOSDAnnotator(viewer, {
    drawingEnabled: false,
    userSelectAction: "NONE",
    style: (a, state) => ({ stroke: "#facc15", strokeWidth: state && state.selected ? 3 : 2, fill: "#facc15", fillOpacity: 0.08 }),
  });

  function current() { return items[index]; }

  function describe(item) {
    const title = document.getElementById("item-title");
    const info = document.getElementById("item-info");
    const open = document.getElementById("item-open");
    if (!item) {
      title.textContent = "Nothing left to review";
      info.textContent = skipped.size ? skipped.size + " skipped item(s) remain for later." : "The queue is empty for these filters.";
      open.hidden = true;
      return;
    }
    open.hidden = false;
    open.href = url(data.urls.page, item.image);
    if (item.type === "suggestion") {
      const what = item.category_name ? item.category_name + " · " : "";
      const also = item.also || [];
      const both = also.length ? "anomaly model and detector · " : "";
      title.textContent = "Suggestion · " + both + what + "score " + item.score.toFixed(3);
      info.textContent = item.image_name + " · " + (item.model || "model") + " · " + Math.round(item.area) + " px²" +
        also.map((a) => " · also found by " + (a.model || "a deleted model") + " (" + (a.category_name ? a.category_name + " " : "score ") + a.score.toFixed(2) + ")").join("");
      setCategory(item.category ? String(item.category) : null, true);  // a detector's proposal
    } else {
      title.textContent = "Label by " + item.author + " · " + item.category_name;
      info.textContent = "Image " + item.image + " · " + item.kind + " · waiting for approval";
      setCategory(String(item.category), true);
    }
    document.querySelector('[data-key="e"]').disabled = item.type !== "suggestion";
    countEl.textContent = (items.length - index) + " to review (" + items.filter((i) => i.type === "suggestion").length + " suggestions in this batch)";
  }

  async function show() {
    setMode("idle");
    const item = current();
    describe(item);
    anno.clearAnnotations();
    if (!item) { viewerEl.dataset.item = ""; return; }
    if (openImage !== item.image) {
      openImage = item.image;
      heatItem = null;
      viewer.open(url(data.urls.dzi, item.image));
      const opened = await new Promise((resolve) => {
        viewer.addOnceHandler("open", () => resolve(true));
        viewer.addOnceHandler("open-failed", () => resolve(false));
      });
      if (!opened) {
        // the pyramid is still being built (or failed): decisions still work, without the picture
        toast("This image's zoomable view is not ready yet; the outline is shown without it.");
        viewerEl.dataset.item = item.type + ":" + item.id;
        return;
      }
      const anomaly = item.source !== "detector" || (item.also || []).some((a) => a.source === "anomaly");
      if (anomaly) {  // a detector makes no heatmap
        LoupeOverlay.addHeatmap(viewer, url(data.urls.heatmap, item.image), 0.45).then((it) => { heatItem = it; }).catch(() => {});
      }
    }
    const id = "item-" + item.type + "-" + item.id;
    anno.setAnnotations([{ id, bodies: [], target: { annotation: id, selector: selector(item.geometry) } }], true);
    anno.fitBoundsWithConstraints(id, { padding: 140, immediately: true });
    viewerEl.dataset.item = item.type + ":" + item.id;
  }

  async function load() {
    const params = new URLSearchParams(Object.assign({ status: "pending", limit: "200" }, data.filters));
    let s;
    let l;
    try {
      const f = data.filters;  // filters about model output leave labels out of the queue
      const onlySuggestions = f.source || f.run || f.model_version || f.score_min || f.score_max;
      const labelsUrl = data.urls.labels + "?limit=200" + (data.filters.image ? "&image=" + data.filters.image : "");
      [s, l] = await Promise.all([
        request("GET", data.urls.suggestions + "?" + params.toString()),
        onlySuggestions ? Promise.resolve({ body: { results: [] } }) : request("GET", labelsUrl),
      ]);
    } catch (e) {
      countEl.textContent = "The queue could not be loaded: the server is unreachable. Retrying…";
      setTimeout(load, 5000);
      return;
    }
    if (s.status !== 200 || !s.body) {
      countEl.textContent = "The queue could not be loaded: " + ((s.body && s.body.error) || "HTTP " + s.status);
      return;
    }
    items = (s.body.results || []).map((x) => Object.assign({ type: "suggestion" }, x));
    items = items.concat(((l.body && l.body.results) || []).map((x) => Object.assign({ type: "label" }, x)));
    index = 0;
    viewerEl.dataset.loaded = "1";
    await show();
  }

  function setCategory(id, silent) {
    category = id ? String(id) : null;
    document.querySelectorAll(".cat").forEach((b) => b.setAttribute("aria-pressed", b.dataset.category === category ? "true" : "false"));
    if (!silent && category) viewerEl.dataset.category = category;
  }

  function setMode(m) {
    mode = m;
    document.getElementById("reasons").hidden = m !== "reject";
    document.getElementById("return-form").hidden = m !== "return";
    document.getElementById("edit-hint").hidden = m !== "edit";
    viewerEl.dataset.mode = m;
    if (m === "return") document.getElementById("return-comment").focus();
  }

  function updateTally() {
    document.getElementById("tally").textContent =
      tally.accepted + " accepted · " + tally.rejected + " rejected · " + tally.approved + " approved · " + tally.returned + " sent back";
  }

  // A decision call that cannot reach the server: nothing was decided, say so, stay on the item.
  async function send(method, target, body) {
    try {
      return await request(method, target, body);
    } catch (e) {
      return { status: 0, body: { error: "the server is unreachable; nothing was decided, try again" } };
    }
  }

  async function decided(r, okStatus, counter) {
    if (r.status === okStatus) {
      tally[counter] += 1;
      updateTally();
    } else if (r.status === 409) {
      toast((r.body && r.body.error) || "Already decided by someone else.");
    } else {
      toast((r.body && r.body.error) || "HTTP " + r.status);
      return false;
    }
    items.splice(index, 1);
    if (index >= items.length) index = Math.max(0, items.length - 1);
    await show();
    if (!items.length) load();
    return true;
  }

  async function accept() {
    const item = current();
    if (!item) return;
    if (item.type === "label") {
      const r = await send("POST", url(data.urls.approve, item.id), {});
      return decided(r, 200, "approved");
    }
    if (!category) {
      toast(data.categories.length ? "Which defect is it? Press 1-" + Math.min(9, data.categories.length) + " (or click a category), then A." : "Add a defect category first (project settings).");
      return;
    }
    const body = { category: Number(category) };
    if (mode === "edit") {
      const a = anno.getAnnotations()[0];
      anno.cancelSelected();
      body.geometry = geometry(a.target.selector);
    }
    const r = await send("POST", url(data.urls.accept, item.id), body);
    return decided(r, 201, "accepted");
  }

  async function reject(reason) {
    const item = current();
    const r = await send("POST", url(data.urls.reject, item.id), { reason: reason || "" });
    return decided(r, 200, "rejected");
  }

  async function sendBack(comment) {
    const item = current();
    const r = await send("POST", url(data.urls.return, item.id), { comment });
    return decided(r, 200, "returned");
  }

  function edit() {
    const item = current();
    if (!item || item.type !== "suggestion") return;
    const a = anno.getAnnotations()[0];
    anno.setUserSelectAction("EDIT");
    anno.setSelected(a.id, true);
    setMode("edit");
  }

  async function next() {
    const item = current();
    if (!item) return;
    skipped.add(item.type + item.id);
    index = (index + 1) % items.length;
    await show();
  }

  document.addEventListener("keydown", async (e) => {
    if (mode === "return") {
      if (e.key === "Escape") { setMode("idle"); e.preventDefault(); }
      return; // typing a comment
    }
    if (e.target.closest && e.target.closest("input, textarea, select")) return;
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (mode === "reject") {
      e.preventDefault();
      if (key === "Escape") return setMode("idle");
      if (key === "Enter") return reject("");
      const n = Number(key);
      if (n >= 1 && n <= data.reasons.length) return reject(data.reasons[n - 1].key);
      return;
    }
    const n = Number(key);
    if (n >= 1 && n <= 9 && data.categories[n - 1]) { e.preventDefault(); setCategory(String(data.categories[n - 1].id)); return; }
    if (key === "a" || (key === "Enter" && mode === "edit")) { e.preventDefault(); accept(); }
    else if (key === "e") { e.preventDefault(); edit(); }
    else if (key === "r") {
      e.preventDefault();
      const item = current();
      if (item) setMode(item.type === "label" ? "return" : "reject");
    } else if (key === "n") { e.preventDefault(); next(); }
    else if (key === "Escape") { anno.cancelSelected(); anno.setUserSelectAction("NONE"); setMode("idle"); show(); }
    else if (key === "h" && heatItem) { heatItem.setOpacity(heatItem.getOpacity() > 0 ? 0 : 0.45); }
  });

  document.querySelectorAll("[data-key]").forEach((b) => b.addEventListener("click", () => {
    const k = b.dataset.key;
    if (k === "a") accept();
    else if (k === "e") edit();
    else if (k === "r") { const item = current(); if (item) setMode(item.type === "label" ? "return" : "reject"); }
    else if (k === "n") next();
  }));
  document.querySelectorAll("[data-reason]").forEach((b) => b.addEventListener("click", () => reject(b.dataset.reason)));
  document.querySelectorAll(".cat").forEach((b) => b.addEventListener("click", () => setCategory(b.dataset.category)));
  document.getElementById("return-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = document.getElementById("return-comment").value.trim();
    if (!text) { toast("Say what should change."); return; }
    document.getElementById("return-comment").value = "";
    sendBack(text);
  });

  setCategory(category);
  load();
  window.loupeReview = { viewer, anno, items: () => items, current };
})();
