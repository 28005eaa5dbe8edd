/* Loupe labeling workspace: OpenSeadragon deep zoom + Annotorious shapes, saved as they change.
 *
 * Shapes live in Annotorious (which owns drawing, editing and the undo stack). Every change it
 * reports (create / update / delete, including undo and redo) becomes an operation in a
 * sequential save queue that talks to the REST API. Network errors and server restarts leave the
 * operation at the head of the queue and retry with back-off; version conflicts (409) show the
 * other person's change and say so. Coordinates are full-resolution image pixels throughout.
 */
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("workspace-data").textContent);
  const viewerEl = document.getElementById("viewer");
  const statusEl = document.getElementById("save-status");
  const toastEl = document.getElementById("toast");
  const me = data.user.username;
  const categories = new Map(data.categories.map((c) => [String(c.id), c]));

  let currentCategory = data.categories.length ? String(data.categories[0].id) : null;
  let clipboard = null;
  const meta = new Map(); // local annotation id -> {serverId, version, author, source, created, updated}

  // ---- small helpers ---------------------------------------------------------------------

  const request = Loupe.request;

  const toast = (message) => Loupe.toast(toastEl, message, 6000);

  function urlFor(template, id) { return template.replace("{id}", id); }

  const { bounds, toSelector, toGeometry } = LoupeOverlay;

  function categoryOf(a) {
    const body = (a.bodies || []).find((b) => b.purpose === "classifying");
    return body ? body.value : null;
  }

  function withCategory(a, categoryId) {
    const body = { id: a.id + "-cat", annotation: a.id, purpose: "classifying", value: String(categoryId) };
    return Object.assign({}, a, { bodies: [body] });
  }

  function fromServer(s) {
    const id = "srv-" + s.id;
    meta.set(id, { serverId: s.id, version: s.version, author: s.author, source: s.source, created: s.created_at, updated: s.updated_at, updatedBy: s.updated_by });
    return withCategory({ id, bodies: [], target: { annotation: id, selector: toSelector(s.geometry) } }, s.category);
  }

  // ---- viewer and annotator --------------------------------------------------------------

  if (!viewerEl) {
    // No zoomable view yet (pyramid pending or failed): the verdict, comments, history and
    // next/previous still work.
    showVerdict(data.image.verdict);
    document.querySelectorAll("[data-verdict]").forEach((b) => b.addEventListener("click", () => setVerdict(b.dataset.verdict)));
    wireComments();
    loadComments();
    loadHistory();
    document.addEventListener("keydown", (e) => {
      if (e.target.closest && e.target.closest("input, textarea, select")) return;
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      const k = e.key.toLowerCase();
      if (k === "o") setVerdict("ok");
      else if (k === "r") setVerdict("needs_review");
      else if ((k === "n" && data.neighbors.next) || (k === "p" && data.neighbors.previous)) {
        window.location.href = urlFor(data.urls.page, data.neighbors[k === "n" ? "next" : "previous"]) + (data.query ? "?" + data.query : "");
      }
    });
    return;
  }
  const viewer = OpenSeadragon({
    element: viewerEl,
    tileSources: data.image.dzi,
    prefixUrl: document.querySelector("script[src*='openseadragon.min.js']").src.replace(/openseadragon\.min\.js.*$/, "images/"),
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 16,
    zoomPerScroll: 1.4,
    loadTilesWithAjax: true,
    ajaxWithCredentials: true,
    imageLoaderLimit: 8,
    visibilityRatio: 0.5,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
    // The canvas drawer: measured 5x faster than OpenSeadragon's WebGL default where WebGL is
    // emulated in software (VMs, PCs without a GPU driver) and as fast elsewhere for plain tiles;
    // ?drawer=webgl switches (see docs/benchmarks.md).
    drawer: new URLSearchParams(window.location.search).get("drawer") || "canvas",
  });
  // Our own keys replace OpenSeadragon's (its w/a/s/d/r/f would clash with shortcuts).
  viewer.addHandler("canvas-key", (e) => { e.preventDefaultAction = true; });
  viewer.addHandler("tile-loaded", () => viewerEl.setAttribute("data-tile-loaded", "1"));

  const styleFor = (a, state) => {
    const c = categories.get(categoryOf(a) || currentCategory);
    const color = c ? c.color : "#ff00ff";
    const m = meta.get(a.id);
    const mine = !m || m.author === me;
    return {
      stroke: color,
      strokeWidth: state && state.selected ? 3 : 2,
      strokeOpacity: mine ? 1 : 0.75,
      fill: color,
      fillOpacity: state && state.selected ? 0.25 : (mine ? 0.12 : 0.05),
    };
  };

  const anno = AnnotoriousOSD.createOSDAnnotator(viewer, {
    drawingEnabled: false,
    drawingMode: "drag",
    autoSave: true,
    style: styleFor,
  });
  anno.setUser({ id: me, name: me });

  // ---- save queue ------------------------------------------------------------------------

  const queue = [];
  let busy = false;
  let inFlight = null; // the op whose request is on its way: it cannot be withdrawn
  let retryDelay = 1000;

  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text;
  }

  function refreshStatus() {
    if (!queue.length) setStatus("saved", "All changes saved");
    else if (statusEl.dataset.state !== "offline") setStatus("saving", "Saving " + queue.length + " change(s)…");
  }

  function enqueue(op) {
    queue.push(op);
    refreshStatus();
    pump();
  }

  async function pump() {
    if (busy) return;
    busy = true;
    while (queue.length) {
      const op = queue[0];
      let outcome;
      inFlight = op;
      try {
        outcome = await op.run();
      } catch (e) {
        outcome = "retry"; // network down or server restarting
      } finally {
        inFlight = null;
      }
      if (outcome === "retry") {
        if (statusEl.dataset.state !== "offline") {
          setStatus("offline", "Not saved: server unreachable, " + queue.length + " change(s) waiting — retrying");
        }
        await new Promise((r) => setTimeout(r, retryDelay));
        retryDelay = Math.min(retryDelay * 2, 15000);
        continue;
      }
      retryDelay = 1000;
      const done = queue.indexOf(op); // ops waiting to be retried may have been withdrawn
      if (done >= 0) queue.splice(done, 1);
      refreshStatus();
    }
    busy = false;
    renderList();
  }

  // Logged out (session expired) or refused (CSRF, role removed): keep every change queued and
  // say so; after logging in again in another tab, the queue goes through.
  function signedOut(r) {
    const why = (r.body && r.body.error) || "not allowed";
    setStatus("offline", "Not saved: " + why + " — log in again (in another tab); " + queue.length + " change(s) kept");
    return "retry";
  }

  function applyRemote(s) {
    // Show what is stored now, without creating events or undo entries.
    const a = fromServer(s);
    const local = "srv-" + s.id;
    // a shape drawn here keeps its local id: move the fresh details onto it
    for (const [id, m] of [...meta]) if (m.serverId === s.id && id !== local) { meta.set(id, meta.get(local)); meta.delete(local); a.id = id; a.target.annotation = id; a.bodies[0].annotation = id; break; }
    const store = anno.state.store;
    if (store.getAnnotation(a.id)) store.updateAnnotation(a, "REMOTE");
    else store.addAnnotation(a, "REMOTE");
  }

  function removeRemote(localId) {
    meta.delete(localId);
    if (anno.state.store.getAnnotation(localId)) anno.state.store.deleteAnnotation(localId, "REMOTE");
  }

  function payloadOf(localId) {
    const a = anno.getAnnotationById(localId);
    if (!a) return null;
    return { category: Number(categoryOf(a) || currentCategory), geometry: toGeometry(a.target.selector) };
  }

  function createOp(localId) {
    let sent = null; // what an earlier attempt sent: it may have reached the server
    return {
      kind: "create",
      localId,
      run: async () => {
        // A shape removed since an attempt that may have been stored (its answer was lost) is
        // sent once more, so that its id is known and the queued delete removes it.
        const payload = payloadOf(localId) || sent;
        if (!payload) {
          // removed before it was ever sent: nothing to send, and the later delete op has nothing to do
          if (!anno.state.store.getAnnotation(localId)) meta.delete(localId);
          return "done";
        }
        sent = payload;
        // the local id makes a retried create idempotent on the server
        const r = await request("POST", data.urls.annotations, Object.assign({ client_id: localId }, payload));
        if (r.status >= 500) return "retry";
        if (r.status === 401 || r.status === 403) return signedOut(r);
        if (r.status === 201) {
          const s = r.body;
          meta.set(localId, { serverId: s.id, version: s.version, author: s.author, source: s.source, created: s.created_at, updated: s.updated_at, updatedBy: s.updated_by });
          return "done";
        }
        toast("Not saved: " + ((r.body && r.body.error) || "HTTP " + r.status));
        meta.delete(localId);
        if (anno.state.store.getAnnotation(localId)) anno.state.store.deleteAnnotation(localId, "REMOTE");
        return "done";
      },
    };
  }

  function updateOp(localId) {
    return {
      kind: "update",
      localId,
      run: async () => {
        const m = meta.get(localId);
        const payload = payloadOf(localId);
        if (!m || !m.serverId || !payload) return "done";
        const r = await request("PATCH", urlFor(data.urls.annotation, m.serverId), Object.assign({ version: m.version }, payload));
        if (r.status >= 500) return "retry";
        if (r.status === 401) return signedOut(r);
        if (r.status === 200) {
          Object.assign(m, { version: r.body.version, updated: r.body.updated_at, updatedBy: r.body.updated_by });
        } else if (r.status === 409) {
          toast(r.body.error + " Showing their version.");
          if (r.body.current) applyRemote(r.body.current); else removeRemote(localId);
        } else if (r.status === 404) {
          toast("This shape was deleted by someone else.");
          removeRemote(localId);
        } else {
          toast("Not saved: " + ((r.body && r.body.error) || "HTTP " + r.status));
          const fresh = await request("GET", urlFor(data.urls.annotation, m.serverId));
          if (fresh.status === 200) applyRemote(fresh.body);
        }
        return "done";
      },
    };
  }

  function deleteOp(localId, before) {
    return {
      kind: "delete",
      localId,
      before, // the shape's record when it was deleted: an undo before this runs cancels it
      run: async () => {
        // the record it had when deleted, or (created meanwhile) the one its create stored
        const m = before && before.serverId ? before : meta.get(localId);
        if (!m || !m.serverId) {
          // never saved: forget it unless it is back on screen (undo) with its own create queued
          if (m && !anno.state.store.getAnnotation(localId)) meta.delete(localId);
          return "done";
        }
        const r = await request("DELETE", urlFor(data.urls.annotation, m.serverId) + "?version=" + m.version);
        if (r.status >= 500) return "retry";
        if (r.status === 401) return signedOut(r);
        if (r.status === 409) {
          if (r.body.current) {
            toast(r.body.error + " Their version is back on the image.");
            applyRemote(r.body.current);
          } else if (meta.get(localId) === m) meta.delete(localId); // already deleted: as wished
          return "done";
        }
        if (r.status === 403) {
          toast(r.body.error);
          const fresh = await request("GET", urlFor(data.urls.annotation, m.serverId));
          if (fresh.status === 200) applyRemote(fresh.body);
          return "done";
        }
        if (meta.get(localId) === m) meta.delete(localId);
        return "done";
      },
    };
  }

  anno.on("createAnnotation", (a) => {
    // New shapes (and redone/undone deletions) take the current category unless they carry one.
    if (!categoryOf(a)) {
      if (!currentCategory) {
        toast("Add a defect category first (project settings).");
        anno.state.store.deleteAnnotation(a.id, "SILENT");
        return;
      }
      anno.state.store.updateAnnotation(withCategory(a, currentCategory), "SILENT");
    }
    // An undone delete that has not been sent yet cancels it: the shape keeps its record on the
    // server instead of being deleted there and stored again as a new one.
    const waiting = (kind, op) => op.kind === kind && op.localId === a.id && op !== inFlight;
    const pending = queue.findIndex((op) => waiting("delete", op));
    if (pending >= 0) {
      const op = queue.splice(pending, 1)[0];
      const current = meta.get(a.id);
      if (!(current && current.serverId) && op.before && op.before.serverId) meta.set(a.id, op.before);
      const m = meta.get(a.id);
      if ((m && m.serverId) || queue.some((op2) => waiting("create", op2))) {
        refreshStatus();
        renderList();
        return;
      }
    }
    meta.set(a.id, Object.assign({ author: me, source: "manual" }, meta.get(a.id) || {}, { serverId: null, version: 0 }));
    enqueue(createOp(a.id));
    renderList();
  });
  anno.on("updateAnnotation", (a) => { enqueue(updateOp(a.id)); renderList(); });
  anno.on("deleteAnnotation", (a) => { enqueue(deleteOp(a.id, meta.get(a.id))); renderList(); });
  anno.on("selectionChanged", () => renderList());

  // ---- loading and polling ---------------------------------------------------------------

  async function load() {
    const r = await request("GET", data.urls.annotations);
    if (r.status !== 200) { toast("Could not load the shapes: " + ((r.body && r.body.error) || r.status)); return; }
    anno.setAnnotations(r.body.map(fromServer), true);
    renderList();
    viewerEl.setAttribute("data-annotations-loaded", "1");
  }

  async function poll() {
    if (queue.length || document.hidden) return;
    let r;
    try { r = await request("GET", data.urls.annotations); } catch (e) { return; }
    if (r.status !== 200 || queue.length) return;
    const seen = new Set();
    for (const s of r.body) {
      seen.add(s.id);
      const entry = [...meta.entries()].find(([, m]) => m.serverId === s.id);
      if (!entry) applyRemote(s);
      else if (entry[1].version < s.version) applyRemote(s);
    }
    for (const [id, m] of [...meta.entries()]) if (m.serverId && !seen.has(m.serverId)) removeRemote(id);
    renderList();
  }
  setInterval(poll, (data.pollSeconds || 10) * 1000);

  window.addEventListener("beforeunload", (e) => {
    if (queue.length) { e.preventDefault(); e.returnValue = "Some changes are not saved yet."; }
  });

  // ---- side panel ------------------------------------------------------------------------

  function ago(iso) {
    if (!iso) return "";
    const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 60) return "just now";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return new Date(iso).toLocaleDateString();
  }

  function renderList() {
    const list = document.getElementById("shape-list");
    const selected = new Set(anno.getSelected().map((a) => a.id));
    const items = anno.getAnnotations();
    document.getElementById("shape-count").textContent = "(" + items.length + ")";
    list.replaceChildren();
    items.forEach((a) => {
      const c = categories.get(categoryOf(a)) || { name: "?", color: "#999" };
      const m = meta.get(a.id) || {};
      const li = document.createElement("li");
      li.dataset.id = a.id;
      li.setAttribute("aria-selected", selected.has(a.id) ? "true" : "false");
      if (m.author && m.author !== me) li.classList.add("other");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = c.color;
      const name = document.createElement("strong");
      name.textContent = c.name;
      const info = document.createElement("span");
      info.className = "hint";
      const kind = a.target.selector.type === "RECTANGLE" ? "box" : "polygon";
      const who = m.author || me;
      const edited = m.updatedBy && m.updatedBy !== who ? ", edited by " + m.updatedBy : "";
      info.textContent = kind + " · " + (m.source && m.source !== "manual" ? m.source.replace("_", " ") + " · " : "") + "by " + who + " " + ago(m.created) + edited + (m.serverId ? "" : " · saving");
      li.append(sw, name, info);
      li.addEventListener("click", () => { anno.setSelected(a.id); anno.fitBoundsWithConstraints(a.id, { padding: 80 }); });
      list.appendChild(li);
    });
  }

  // ---- tools, categories, keys -----------------------------------------------------------

  function setTool(tool) {
    if (tool === "select") {
      anno.setDrawingEnabled(false);
    } else {
      if (!currentCategory) { toast("Add a defect category first (project settings)."); return; }
      anno.cancelSelected();
      anno.setDrawingTool(tool);
      anno.setDrawingMode(tool === "rectangle" ? "drag" : "click");
      anno.setDrawingEnabled(true);
    }
    document.querySelectorAll(".tool").forEach((b) => b.setAttribute("aria-pressed", b.dataset.tool === tool ? "true" : "false"));
    viewerEl.dataset.tool = tool;
  }

  function setCategory(id) {
    if (!categories.has(String(id))) return;
    currentCategory = String(id);
    document.querySelectorAll(".cat").forEach((b) => b.setAttribute("aria-pressed", b.dataset.category === currentCategory ? "true" : "false"));
    // With a shape selected, the key relabels it (an undoable update).
    anno.getSelected().forEach((a) => {
      if (categoryOf(a) !== currentCategory) anno.updateAnnotation(withCategory(a, currentCategory));
    });
    renderList();
  }

  function deleteSelected() {
    anno.getSelected().forEach((a) => anno.removeAnnotation(a.id));
  }

  function copySelected() {
    const a = anno.getSelected()[0];
    if (a) { clipboard = { geometry: toGeometry(a.target.selector), category: categoryOf(a) }; toast("Shape copied: Ctrl+V pastes it"); }
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
    const a = withCategory({ id, bodies: [], target: { annotation: id, selector: toSelector(g), creator: { id: me } } }, clipboard.category || currentCategory);
    anno.state.store.addAnnotation(a, "LOCAL");
    anno.setSelected(id);
  }

  function zoomBy(f) { viewer.viewport.zoomBy(f); viewer.viewport.applyConstraints(); }
  function panBy(dx, dy) {
    const b = viewer.viewport.getBounds();
    viewer.viewport.panBy(new OpenSeadragon.Point(dx * b.width, dy * b.height));
    viewer.viewport.applyConstraints();
  }

  async function go(which) {
    const id = data.neighbors[which];
    if (!id) { toast(which === "next" ? "This is the last image of the list." : "This is the first image of the list."); return; }
    setStatus(queue.length ? "saving" : "saved", queue.length ? "Saving before leaving…" : statusEl.textContent);
    while (queue.length) await new Promise((r) => setTimeout(r, 100));
    window.location.href = urlFor(data.urls.page, id) + (data.query ? "?" + data.query : "");
  }

  const categoryKeys = new Map();
  data.categories.forEach((c, i) => {
    if (i < 9) categoryKeys.set(String(i + 1), String(c.id));
  });
  data.categories.forEach((c) => { if (c.shortcut && !categoryKeys.has(c.shortcut)) categoryKeys.set(c.shortcut, String(c.id)); });

  document.addEventListener("keydown", (e) => {
    const typing = e.target.closest && e.target.closest("input, textarea, select");
    if (typing && e.key !== "Escape") return;
    const ctrl = e.ctrlKey || e.metaKey;
    const inViewer = viewerEl.contains(e.target);
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    if (ctrl) {
      // Annotorious handles Ctrl+Z / Ctrl+Y itself while the viewer has focus.
      if (key === "z" && !inViewer) { e.preventDefault(); e.shiftKey ? anno.redo() : anno.undo(); }
      else if (key === "y" && !inViewer) { e.preventDefault(); anno.redo(); }
      else if (key === "c") { copySelected(); }
      else if (key === "v") { e.preventDefault(); paste(); }
      return;
    }
    if (e.altKey) return;
    const actions = {
      b: () => setTool("rectangle"),
      g: () => setTool("polygon"),
      v: () => setTool("select"),
      Escape: () => { anno.cancelDrawing(); anno.cancelSelected(); setTool("select"); },
      Delete: deleteSelected,
      Backspace: deleteSelected,
      h: () => { const t = document.getElementById("heatmap-toggle"); if (!t.disabled) { t.checked = !t.checked; t.dispatchEvent(new Event("change")); } },
      s: () => { const t = document.getElementById("suggestions-toggle"); if (!t.disabled) { t.checked = !t.checked; t.dispatchEvent(new Event("change")); } },
      o: () => setVerdict("ok"),
      r: () => setVerdict("needs_review"),
      n: () => go("next"),
      p: () => go("previous"),
      "+": () => zoomBy(1.5),
      "=": () => zoomBy(1.5),
      "-": () => zoomBy(1 / 1.5),
      0: () => viewer.viewport.goHome(),
      ArrowLeft: () => panBy(-0.2, 0),
      ArrowRight: () => panBy(0.2, 0),
      ArrowUp: () => panBy(0, -0.2),
      ArrowDown: () => panBy(0, 0.2),
    };
    if (categoryKeys.has(key) && !(key in actions && isNaN(Number(key)))) {
      e.preventDefault();
      setCategory(categoryKeys.get(key));
      return;
    }
    if (actions[key]) { e.preventDefault(); actions[key](); }
  });

  document.querySelectorAll(".tool").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  document.querySelectorAll(".cat").forEach((b) => b.addEventListener("click", () => setCategory(b.dataset.category)));

  // ---- heatmap overlay -------------------------------------------------------------------

  let heatItem = null;
  const opacityInput = document.getElementById("heatmap-opacity");

  async function showHeatmap(on) {
    if (!data.image.heatmap) return;
    if (on && !heatItem) {
      heatItem = await LoupeOverlay.addHeatmap(viewer, data.image.heatmap, opacityInput.value / 100);
      viewerEl.dataset.heatmap = "shown";
    } else if (heatItem) {
      heatItem.setOpacity(on ? opacityInput.value / 100 : 0);
      viewerEl.dataset.heatmap = on ? "shown" : "hidden";
    }
  }
  document.getElementById("heatmap-toggle").addEventListener("change", (e) => showHeatmap(e.target.checked));
  opacityInput.addEventListener("input", () => {
    if (heatItem && document.getElementById("heatmap-toggle").checked) heatItem.setOpacity(opacityInput.value / 100);
  });
  // Suggestion outlines: the image's pending model suggestions, as dashed boxes with their score
  // (decided ones are labels now, or rejected). Deciding happens in the review queue.
  const sugg = document.getElementById("suggestions-toggle");
  const suggestionEls = [];
  async function loadSuggestions() {
    let r;
    try { r = await request("GET", data.urls.suggestions); } catch (e) { return; }
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
  }
  sugg.addEventListener("change", () => suggestionEls.forEach((el) => { el.style.display = sugg.checked ? "" : "none"; }));

  async function loadHistory() {
    let r;
    try { r = await request("GET", data.urls.reviews); } catch (e) { return; }
    const list = document.getElementById("history-list");
    list.replaceChildren();
    const words = { accept: "accepted a suggestion", edit_accept: "edited and accepted a suggestion", reject: "rejected a suggestion", approve: "approved a label", return: "sent a label back" };
    (r.body || []).forEach((h) => {
      const li = document.createElement("li");
      const what = (words[h.action] || h.action) + (h.category_name ? " as " + h.category_name : "") + (h.reason ? " (" + h.reason.replace("_", " ") + ")" : "") + (h.comment ? ": " + h.comment : "");
      li.textContent = (h.decided_by || "?") + " " + what + " ";
      const when = document.createElement("span");
      when.className = "hint";
      when.textContent = ago(h.decided_at);
      li.appendChild(when);
      list.appendChild(li);
    });
    if (!list.children.length) list.innerHTML = '<li class="hint">No decisions yet.</li>';
  }

  // ---- verdict and comments --------------------------------------------------------------

  function showVerdict(v) {
    document.querySelectorAll("[data-verdict]").forEach((b) => b.setAttribute("aria-pressed", b.dataset.verdict === v ? "true" : "false"));
    document.getElementById("verdict-text").textContent = v === "ok" ? "Marked OK: no defect." : v === "needs_review" ? "Marked for review." : "";
  }

  async function setVerdict(v) {
    const next = data.image.verdict === v ? "" : v;
    try {
      const r = await request("POST", data.urls.verdict, { verdict: next });
      if (r.status === 200) { data.image.verdict = next; showVerdict(next); } else toast((r.body && r.body.error) || "HTTP " + r.status);
    } catch (e) { toast("The verdict was not saved: the server is unreachable."); }
  }
  document.querySelectorAll("[data-verdict]").forEach((b) => b.addEventListener("click", () => setVerdict(b.dataset.verdict)));
  showVerdict(data.image.verdict);

  async function loadComments() {
    const r = await request("GET", data.urls.comments);
    const list = document.getElementById("comment-list");
    list.replaceChildren();
    (r.body || []).forEach((c) => {
      const li = document.createElement("li");
      const who = document.createElement("span");
      who.className = "hint";
      who.textContent = (c.author || "?") + " · " + ago(c.created_at);
      li.append(document.createTextNode(c.text + " "), who);
      list.appendChild(li);
    });
  }
  function wireComments() {
    document.getElementById("comment-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const input = document.getElementById("comment-text");
      try {
        const r = await request("POST", data.urls.comments, { text: input.value });
        if (r.status === 201) { input.value = ""; loadComments(); } else toast((r.body && r.body.error) || "HTTP " + r.status);
      } catch (err) { toast("The comment was not saved: the server is unreachable."); }
    });
  }
  wireComments();

  // ---- prefetch the next image's first tiles ---------------------------------------------

  async function prefetchNext() {
    const id = data.neighbors.next;
    if (!id) return;
    try {
      const url = urlFor(data.urls.dzi, id);
      const res = await fetch(url, { credentials: "same-origin" });
      if (!res.ok) return;
      const xml = new DOMParser().parseFromString(await res.text(), "application/xml");
      const size = xml.getElementsByTagName("Size")[0];
      const tile = Number(xml.documentElement.getAttribute("TileSize"));
      const w = Number(size.getAttribute("Width"));
      const h = Number(size.getAttribute("Height"));
      const maxLevel = Math.ceil(Math.log2(Math.max(w, h)));
      const fit = Math.max(viewerEl.clientWidth, viewerEl.clientHeight) * (window.devicePixelRatio || 1);
      const base = url.replace(/\.dzi$/, "_files/");
      for (let level = 8; level <= maxLevel; level++) {
        const scale = Math.pow(2, maxLevel - level);
        const lw = Math.ceil(w / scale);
        const lh = Math.ceil(h / scale);
        if (Math.max(lw, lh) > fit * 2) break;
        for (let col = 0; col * tile < lw; col++) {
          for (let row = 0; row * tile < lh; row++) fetch(base + level + "/" + col + "_" + row + ".jpg", { credentials: "same-origin" });
        }
      }
    } catch (e) { /* prefetch is best effort */ }
  }

  // ---- start -----------------------------------------------------------------------------

  setTool("select");
  if (currentCategory) setCategory(currentCategory);
  viewer.addHandler("open", () => {
    viewerEl.setAttribute("data-opened", "1");
    load();
    loadComments();
    loadSuggestions();
    loadHistory();
    setTimeout(prefetchNext, 1500);
  });

  window.loupeWorkspace = {
    viewer,
    anno,
    meta,
    queue,
    setTool,
    setCategory,
    imageToWindow: (x, y) => {
      const p = viewer.viewport.imageToWindowCoordinates(new OpenSeadragon.Point(x, y));
      return { x: p.x, y: p.y };
    },
    windowToImage: (x, y) => {
      const p = viewer.viewport.windowToImageCoordinates(new OpenSeadragon.Point(x, y));
      return { x: p.x, y: p.y };
    },
    // Every change sent, and the shapes on screen are exactly the ones the server has: Annotorious
    // changes its store at once but tells us a tick later, so a shape drawn or undone a moment ago
    // may not have queued its save yet.
    idle: () => {
      if (queue.length || busy) return false;
      const shapes = anno.getAnnotations();
      const ids = new Set(shapes.map((a) => a.id));
      return shapes.every((a) => meta.get(a.id) && meta.get(a.id).serverId) && [...meta.keys()].every((id) => ids.has(id));
    },
  };
})();
