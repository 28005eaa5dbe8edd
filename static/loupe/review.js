/* Loupe review queue: model suggestions by score, then annotators' labels, one at a time.
 *
 * Keys: 1-9 category · A accept (or approve a label) · E edit the outline, then A/Enter ·
 * R reject (then 1-4 for the reason, Enter for none) or send a label back (with a comment) ·
 * N next without deciding · H heatmap · F / D the aligned reference / difference, for an image
 * with a reference (the Reference section's sliders: the swipe, the difference's opacity; the
 * pair view is the workspace's, static/loupe/pair.js). Each decision is one API call; the
 * server keeps the record.
 *
 * Speed (issue #17: the next item on screen <= 300 ms after a decision): two viewers are stacked
 * in #viewer. The visible one shows the item; the hidden one has already opened the next item
 * that is on another image, zoomed on it, its tiles loaded, so moving on is a swap. A decision
 * moves on at once and its call finishes in the background: a refusal puts the item back with
 * the reason; "already decided" (409) just says so. #viewer[data-pending] counts the calls not
 * answered yet.
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
  const skipped = new Set();
  let heatShown = true;
  // F / D and the two sliders: the reference over the image (flicker, swipe) and the difference
  // over it (its opacity). One set of controls for both panes: the next image keeps the choice.
  const pair = LoupePair;
  const pairControls = pair.controls(document);
  const pairState = () => pair.read(pairControls);

  const request = Loupe.request;
  const toast = (message) => Loupe.toast(toastEl, message, 5000);

  const url = (template, id) => template.replace("{id}", id);

  const { toSelector: selector, toGeometry: geometry } = LoupeOverlay;

  const prefixUrl = document.querySelector("script[src*='openseadragon.min.js']").src.replace(/openseadragon\.min\.js.*$/, "images/");

  /* One viewer with its outline layer, the image it has open and that image's heatmap. */
  function makePane() {
    const el = document.createElement("div");
    el.className = "viewer-pane";
    viewerEl.append(el);
    const viewer = OpenSeadragon({
      element: el,
      prefixUrl,
      showNavigator: true,
      navigatorPosition: "BOTTOM_RIGHT",
      maxZoomPixelRatio: 16,
      loadTilesWithAjax: true,
      ajaxWithCredentials: true,
      drawer: "canvas", // see workspace/viewer.js
      imageLoaderLimit: 8,
      maxTilesPerFrame: 16, // see workspace/viewer.js
      gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
    });
    viewer.addHandler("canvas-key", (e) => { e.preventDefaultAction = true; });
    const anno = AnnotoriousOSD.createOSDAnnotator(viewer, {
      drawingEnabled: false,
      userSelectAction: "NONE",
      style: (a, state) => ({ stroke: "#facc15", strokeWidth: state && state.selected ? 3 : 2, fill: "#facc15", fillOpacity: 0.08 }),
    });
    return { el, viewer, anno, image: null, width: 0, height: 0, opened: null, heat: null, ref: null, diff: null };
  }

  viewerEl.classList.add("has-panes");
  let active = makePane();
  let spare = makePane();
  active.el.classList.add("shown");

  /* Open the item's image in `pane` (once): resolves true when its pyramid opened. Opens of one
     pane run one after the other, so an "open" event always belongs to the image that waits for
     it, and a heatmap that arrives after its pane moved on to another image is dropped. */
  function openIn(pane, item) {
    if (pane.image === item.image && pane.opened) return pane.opened;
    const image = item.image;
    const before = pane.opened || Promise.resolve(true);
    pane.image = image;
    pane.width = item.image_width || 0; // the swipe's line is a share of the image's width
    pane.height = item.image_height || 0;
    pane.heat = null;
    pane.ref = null;
    pane.diff = null;
    pane.anno.clearAnnotations();
    pane.opened = before.then(() => new Promise((resolve) => {
      pane.viewer.addOnceHandler("open", () => resolve(true));
      pane.viewer.addOnceHandler("open-failed", () => resolve(false));
      pane.viewer.open(url(data.urls.dzi, image));
    })).then((ok) => {
      const anomaly = item.type === "suggestion" && (item.source !== "detector" || (item.also || []).some((x) => x.source === "anomaly"));
      if (ok && anomaly && pane.image === image) {  // a detector makes no heatmap
        LoupeOverlay.addHeatmap(pane.viewer, url(data.urls.heatmap, image), 0.45).then((it) => {
          if (pane.image !== image) { pane.viewer.world.removeItem(it); return; }
          pane.heat = it;
          if (!heatShown) it.setOpacity(0);
        }).catch(() => {});
      }
      if (ok && item.reference && pane.image === image) addReference(pane, item.reference, image);
      return ok;
    });
    return pane.opened;
  }

  /* The image's aligned reference (hidden until F; its tiles load meanwhile) and the difference
     (hidden until D): the same pair view as the workspace's (docs/references.md), swipe and
     difference opacity included. */
  function addReference(pane, ref, image) {
    if (ref.dzi) {
      pane.viewer.addTiledImage({
        tileSource: ref.dzi, x: 0, y: 0, width: 1, opacity: pair.referenceOpacity(pairState()), preload: true,
        success: (ev) => {
          if (pane.image !== image) { pane.viewer.world.removeItem(ev.item); return; }
          pane.ref = ev.item;
          pair.apply(pane, pairState());
          markPair();
        },
      });
    }
    if (!ref.difference) return;
    LoupeOverlay.addHeatmap(pane.viewer, ref.difference, pair.differenceOpacity(pairState())).then((it) => {
      if (pane.image !== image) { pane.viewer.world.removeItem(it); return; }
      pane.diff = it;
      pair.apply(pane, pairState());
      markPair();
    }).catch(() => {});
  }

  /* data-reference / data-difference on #viewer: what the visible pane shows (tests read it). */
  function markPair() {
    pair.mark(viewerEl, active, pairState());
  }

  /* The Reference section follows the item on screen: shown only for an image with an aligned
     reference; the difference's controls are enabled only where there is a difference. */
  function describePair(item) {
    const ref = item && item.reference;
    const { refToggle, swipe, diffToggle, diffOpacity } = pairControls;
    document.getElementById("reference-tools").hidden = !(ref && ref.dzi);
    refToggle.disabled = swipe.disabled = !(ref && ref.dzi);
    diffToggle.disabled = diffOpacity.disabled = !(ref && ref.difference);
  }

  /* A control changed: both panes follow it (the hidden one keeps the choice for the next image). */
  function pairChanged() {
    const state = pairState();
    [active, spare].forEach((p) => pair.apply(p, state));
    markPair();
  }
  pairControls.refToggle.addEventListener("change", pairChanged);
  pairControls.swipe.addEventListener("input", pairChanged);
  pairControls.diffToggle.addEventListener("change", pairChanged);
  pairControls.diffOpacity.addEventListener("input", pairChanged);

  /* Outline `item` in `pane` and zoom on it (the pane's image must be the item's). */
  function place(pane, item) {
    const id = "item-" + item.type + "-" + item.id;
    pane.anno.setAnnotations([{ id, bodies: [], target: { annotation: id, selector: selector(item.geometry) } }], true);
    pane.anno.fitBoundsWithConstraints(id, { padding: 140, immediately: true });
  }

  function swap() {
    [active, spare] = [spare, active];
    active.el.classList.add("shown");
    spare.el.classList.remove("shown");
    spare.anno.cancelSelected();
  }

  /* The hidden pane opens the next item that is on another image and zooms on it, so its tiles
     are loaded before the reviewer gets there. */
  async function preload() {
    const shown = current();
    const upcoming = items.slice(index + 1).find((x) => shown && x.image !== shown.image);
    if (!upcoming) return;
    const ok = await openIn(spare, upcoming);
    if (ok && spare.image === upcoming.image && current() === shown) place(spare, upcoming);
  }

  function current() { return items[index]; }

  function describe(item) {
    const title = document.getElementById("item-title");
    const info = document.getElementById("item-info");
    const open = document.getElementById("item-open");
    describePair(item);
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
      info.textContent = item.image_name + " · " + (item.model || "model") + (item.region_name ? " · region " + item.region_name : "") + " · " + Math.round(item.area) + " px²" +
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
    if (!item) { active.anno.clearAnnotations(); viewerEl.dataset.item = ""; return; }
    if (active.image !== item.image) {
      if (spare.image === item.image) swap(); // preloaded: already open, usually zoomed on it
      const ok = await openIn(active, item);
      if (current() !== item) return; // the reviewer moved on meanwhile
      if (!ok) {
        // the pyramid is still being built (or failed): decisions still work, without the picture
        active.anno.clearAnnotations();
        toast("This image's zoomable view is not ready yet; the outline is shown without it.");
        viewerEl.dataset.item = item.type + ":" + item.id;
        preload();
        return;
      }
    }
    place(active, item);
    markPair();
    viewerEl.dataset.item = item.type + ":" + item.id;
    preload();
  }

  async function load() {
    await Promise.allSettled(Array.from(inflight.values()));
    const params = new URLSearchParams(Object.assign({ status: "pending", limit: "200" }, data.filters));
    let s;
    let l;
    try {
      const f = data.filters;  // filters about model output leave labels out of the queue
      const onlySuggestions = f.source || f.run || f.model_version || f.region || f.score_min || f.score_max;
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
    items = items.filter((x) => !inflight.has(x.type + ":" + x.id));
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

  const inflight = new Map(); // "type:id" -> the decision call's promise

  function setPending() { viewerEl.dataset.pending = String(inflight.size); }

  /* Move on at once and send the decision; reconcile when the answer comes. */
  async function decide(item, target, body, okStatus, counter) {
    const key = item.type + ":" + item.id;
    const call = send("POST", target, body);
    inflight.set(key, call);
    setPending();
    const at = items.indexOf(item);
    if (at >= 0) {
      items.splice(at, 1);
      if (at < index) index -= 1;
      if (index >= items.length) index = Math.max(0, items.length - 1);
    }
    const moved = show();
    const r = await call;
    inflight.delete(key);
    setPending();
    if (r.status === okStatus) {
      tally[counter] += 1;
      updateTally();
    } else if (r.status === 409) {
      toast((r.body && r.body.error) || "Already decided by someone else.");
    } else {
      // not decided: the item comes back, shown again, with the reason
      toast("Not decided: " + ((r.body && r.body.error) || "HTTP " + r.status) + ". The item is back.");
      await moved;
      items.splice(index, 0, item);
      await show();
      return false;
    }
    await moved;
    if (!items.length && !inflight.size) load();
    return true;
  }

  async function accept() {
    const item = current();
    if (!item) return;
    if (item.type === "label") return decide(item, url(data.urls.approve, item.id), {}, 200, "approved");
    if (!category) {
      toast(data.categories.length ? "Which defect is it? Press 1-" + Math.min(9, data.categories.length) + " (or click a category), then A." : "Add a defect category first (project settings).");
      return;
    }
    const body = { category: Number(category) };
    if (mode === "edit") {
      const a = active.anno.getAnnotations()[0];
      active.anno.cancelSelected();
      active.anno.setUserSelectAction("NONE");
      body.geometry = geometry(a.target.selector);
    }
    return decide(item, url(data.urls.accept, item.id), body, 201, "accepted");
  }

  async function reject(reason) {
    const item = current();
    if (!item) return;
    return decide(item, url(data.urls.reject, item.id), { reason: reason || "" }, 200, "rejected");
  }

  async function sendBack(comment) {
    const item = current();
    if (!item) return;
    return decide(item, url(data.urls.return, item.id), { comment }, 200, "returned");
  }

  function edit() {
    const item = current();
    if (!item || item.type !== "suggestion") return;
    const a = active.anno.getAnnotations()[0];
    if (!a) return;
    active.anno.setUserSelectAction("EDIT");
    active.anno.setSelected(a.id, true);
    setMode("edit");
  }

  async function next() {
    const item = current();
    if (!item) return;
    skipped.add(item.type + item.id);
    index = (index + 1) % items.length;
    await show();
  }

  // keys a slider uses itself; letters mean nothing to a slider or a checkbox, so they stay the
  // queue's (A after dragging the swipe accepts), as in the workspace (workspace/format.js)
  const SLIDER_KEYS = new Set(["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End", "PageUp", "PageDown"]);
  function typingIn(e) {
    const field = e.target.closest && e.target.closest("input, textarea, select");
    if (!field) return false;
    if (field.type === "checkbox") return false;
    if (field.type === "range") return SLIDER_KEYS.has(e.key);
    return true;
  }

  document.addEventListener("keydown", async (e) => {
    if (mode === "return") {
      if (e.key === "Escape") { setMode("idle"); e.preventDefault(); }
      return; // typing a comment
    }
    if (typingIn(e)) return;
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
    else if (key === "Escape") { active.anno.cancelSelected(); active.anno.setUserSelectAction("NONE"); setMode("idle"); show(); }
    else if (key === "h") {
      // one switch for both panes, so the next image keeps the reviewer's choice
      heatShown = !heatShown;
      [active, spare].forEach((p) => { if (p.heat) p.heat.setOpacity(heatShown ? 0.45 : 0); });
    } else if (key === "f") { e.preventDefault(); pair.toggle(pairControls.refToggle); }
    else if (key === "d") { e.preventDefault(); pair.toggle(pairControls.diffToggle); }
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
  // for browser tests and benchmarks/review_speed.py: the visible pane's viewer and annotator
  window.loupeReview = {
    get viewer() { return active.viewer; },
    get anno() { return active.anno; },
    // the visible pane's aligned reference and difference items (null without them)
    get reference() { return active.ref; },
    get difference() { return active.diff; },
    items: () => items,
    current,
  };
})();
