/* Two viewers, one on screen: next / previous image without a page load (issue #17: N / P took
 * 2-3 s as page loads on a busy 2-core machine; the target is <= 500 ms, measured by
 * benchmarks/review_speed.py).
 *
 * Each pane is an OpenSeadragon viewer with its own Annotorious layer, stacked in #viewer; one is
 * shown. While the person works on the shown image, the hidden pane opens the image they will go
 * to next (in the direction they last went) and fills its view, with its shapes and heatmap. N or
 * P then swaps the panes: the save queue is re-pointed at the new image, and the side panel, the
 * bar and the address follow. When the hidden pane does not hold the image asked for, it opens it
 * first. Anything unusual (an image without a zoomable view yet, a refused or failed request, a
 * lost session) loads the page instead, which then shows what happened.
 *
 * Undo and redo belong to the image they were made on: a pane's Annotorious keeps one history
 * for its lifetime, so this page owns Ctrl+Z / Ctrl+Y and holds them back where they would reach
 * into an earlier image's changes. */

import { pageUrl, typingIn, urlFor } from "./format.js";
import { fetchShapes, showShapes } from "./shapes.js";
import { createAnnotator, createViewer, whenLoaded } from "./viewer.js";


/** Which Ctrl/Cmd key combination `e` is: "undo", "redo", or null. */
export function undoKey(e) {
  if (!(e.ctrlKey || e.metaKey) || e.altKey) return null;
  const k = e.key.toLowerCase();
  if (k === "z") return e.shiftKey ? "redo" : "undo";
  if (k === "y") return "redo";
  return null;
}

/** The part of an annotator's undo history that belongs to the image it shows: the changes
 * after `mark()` (called as the pane comes on screen with another image). */
export function createUndoFloor(anno) {
  let floor = -1; // the history pointer when this image came on screen
  let stale = new Set(); // an earlier image's undone changes, still in the redo part
  return {
    mark() {
      const h = anno.getHistory();
      floor = h.pointer;
      stale = new Set(h.changes.slice(h.pointer + 1));
    },
    canUndo: () => anno.getHistory().pointer > floor,
    canRedo() {
      const h = anno.getHistory();
      const next = h.changes[h.pointer + 1];
      return Boolean(next) && !stale.has(next);
    },
  };
}

/** The image id in a workspace address (/images/<id>/), or null. */
export function imageIdOf(path) {
  const m = /\/images\/(\d+)\/?$/.exec(path);
  return m ? Number(m[1]) : null;
}

/**
 * hooks:
 *   style(annotation, state)   how shapes are drawn (both panes)
 *   bind(anno)                 wire an annotator's change events (once per pane)
 *   prepare(pane)              extra work on a pane that opened an image (its heatmap)
 *   leave(pane)                a pane goes off screen
 *   leaving(pane)              ... the last moment `ctx.data` is still its image
 *   shown(pane)                a pane came on screen with `ctx.data` set to its image
 *   refreshed()                `ctx.data` was read again for the image on screen
 * Sets ctx.pane / ctx.viewer / ctx.anno to the pane on screen; returns {go, first}.
 */
export function createPanes(ctx, hooks) {
  const { data } = ctx;
  const viewerEl = ctx.els.viewer;
  viewerEl.classList.add("has-panes");

  function makePane() {
    const el = document.createElement("div");
    el.className = "viewer-pane";
    viewerEl.append(el);
    const viewer = createViewer(el);
    const anno = createAnnotator(viewer, ctx.me, hooks.style);
    const pane = { el, viewer, anno, undo: createUndoFloor(anno), image: null, data: null, opened: null, shapes: null, heat: null, heatAdding: null, ref: null, refAdding: null, diff: null, diffAdding: null };
    viewer.addHandler("tile-loaded", () => { if (pane === active) viewerEl.setAttribute("data-tile-loaded", "1"); });
    hooks.bind(anno);
    return pane;
  }

  let active = makePane();
  let spare = makePane();
  active.el.classList.add("shown");
  Object.defineProperties(ctx, {
    pane: { get: () => active, configurable: true },
    viewer: { get: () => active.viewer, configurable: true },
    anno: { get: () => active.anno, configurable: true },
  });
  let direction = "next"; // where the person went last: the hidden pane prepares that way
  let chain = Promise.resolve(); // switches run one after the other (N three times: three images)
  let switching = false; // the hidden pane is taken by a switch: not for preparing
  let moves = 0; // back / forward presses: a switch asked for before one is dropped

  /** Open image `id` in `pane` and fetch its shapes, its workspace data coming from `dataP` (the
   * pyramid is asked for at once, from the address every image's pyramid has). Opens of one pane
   * run one after the other, so an "open" event belongs to the image that waits for it. Resolves
   * true once the pyramid opened; `pane.ready` resolves to the data (null: load the page). */
  function openIn(pane, id, dataP) {
    if (pane.image === id && pane.opened) return pane.opened;
    const before = pane.opened || Promise.resolve(true);
    Object.assign(pane, { image: id, data: null, heat: null, heatAdding: null, ref: null, refAdding: null, diff: null, diffAdding: null });
    pane.anno.cancelSelected();
    pane.anno.setAnnotations([], true); // REMOTE: nothing is deleted on the server
    pane.ready = Promise.resolve(dataP).then((d) => {
      if (pane.image === id) pane.data = d;
      return d && d.image.dzi ? d : null;
    });
    pane.shapes = pane.ready.then((d) => (d && pane.image === id ? fetchShapes(d.urls.annotations) : null));
    pane.shapesAt = Date.now();
    pane.opened = before.then(() => new Promise((resolve) => {
      if (pane.image !== id) { resolve(false); return; } // asked for another image meanwhile
      const done = (ok) => {
        pane.viewer.removeHandler("open", opened);
        pane.viewer.removeHandler("open-failed", failed);
        resolve(ok);
      };
      const opened = () => done(true);
      const failed = () => done(false);
      pane.viewer.addHandler("open", opened);
      pane.viewer.addHandler("open-failed", failed);
      // A hidden pane loads only the tiles of the view it will show, not the blurry levels
      // before them (nobody sees them): fewer tiles to fetch and decode.
      pane.viewer.immediateRender = pane !== active;
      pane.viewer.open(urlFor(data.urls.dzi, id));
    }));
    Promise.all([pane.opened, pane.ready]).then(([ok, d]) => { if (ok && d && pane.image === id) hooks.prepare(pane); });
    return pane.opened;
  }

  /** The workspace data of image `id` (with the grid's filters), or null when the page should
   * be loaded instead (refused, lost session, no answer). */
  async function fetchData(id) {
    const url = urlFor(data.urls.pageData, id) + (data.query ? "?" + data.query : "");
    try {
      const res = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!res.ok || res.redirected || !(res.headers.get("content-type") || "").includes("application/json")) return null;
      return await res.json();
    } catch (e) {
      return null;
    }
  }

  /** The hidden pane opens the image the person will probably go to next, once the shown one
   * is drawn (so the two do not compete for the CPU). */
  async function prepareNext() {
    const shown = active;
    const image = shown.image;
    try { await whenLoaded(shown.viewer); } catch (e) { /* a tile failed: prepare anyway */ }
    const id = data.neighbors[direction];
    if (switching || active !== shown || shown.image !== image || !id || spare.image === id) return;
    openIn(spare, id, fetchData(id));
  }

  function showBar() {
    const img = data.image;
    const name = document.getElementById("ws-name");
    name.textContent = img.name.length > 40 ? img.name.slice(0, 39) + "…" : img.name;
    name.title = img.name;
    document.getElementById("ws-details").textContent = img.details;
    document.getElementById("ws-position").textContent = data.neighbors.count + " in list";
    for (const [which, elId] of [["previous", "prev-image"], ["next", "next-image"]]) {
      const a = document.getElementById(elId);
      const id = data.neighbors[which];
      if (id) { a.href = pageUrl(data, id); a.removeAttribute("aria-disabled"); } else { a.removeAttribute("href"); a.setAttribute("aria-disabled", "true"); }
    }
    const review = document.getElementById("review-link");
    if (review && data.urls.review) review.href = data.urls.review;
    document.title = img.name + " · Loupe";
  }

  /** The pane on screen has opened its image: shapes, side panel, overlays. */
  async function show(pane) {
    viewerEl.setAttribute("data-opened", "1");
    hooks.shown(pane);
    const image = pane.image;
    // shapes fetched while the pane was hidden are used when recent (and brought up to date by
    // a poll); older ones are fetched again, so a colleague's new shape is not missing
    if (!pane.shapes || Date.now() - pane.shapesAt > 1000 * (data.pollSeconds || 10)) {
      pane.shapes = fetchShapes(pane.data.urls.annotations);
      pane.shapesAt = Date.now();
    }
    const list = await pane.shapes;
    if (pane !== active || pane.image !== image) return;
    if (list) {
      showShapes(ctx, list);
      ctx.queue.poll();
    } else ctx.toast("Could not load this image's shapes: reload the page to try again.");
    prepareNext();
  }

  /** Every change to the shown image sent. A selected shape's last edit is reported as it is
   * deselected, a moment later: deselect first and let the report arrive, then drain the queue
   * (changes go to the image they were made on). */
  async function settled() {
    active.anno.cancelDrawing();
    active.anno.cancelSelected();
    await new Promise((resolve) => window.setTimeout(resolve, 20));
    while (ctx.queue.pending()) await ctx.queue.leaving();
  }

  /** Show image `id`; `asked` is the back / forward count when it was asked for (a switch a
   * back or forward press overtook is dropped, so the address and the screen agree). */
  async function switchTo(id, push, asked = moves) {
    await settled();
    const pane = spare;
    if (pane.image !== id) openIn(pane, id, fetchData(id));
    const [ok, d] = await Promise.all([pane.opened, pane.ready]);
    if (asked !== moves) return;
    if (!ok || !d || pane.image !== id) {
      await settled();
      window.location.assign(pageUrl(data, id));
      return;
    }
    await settled(); // changes made while the image was being prepared
    if (asked !== moves) return;
    // From here on nothing waits: the panes swap in one go.
    const old = active;
    old.anno.cancelSelected();
    old.anno.setDrawingEnabled(false);
    hooks.leave(old);
    old.shapes = null; // changed while it was shown: fetched again if it comes back
    active = pane;
    spare = old;
    active.el.classList.add("shown");
    old.el.classList.remove("shown");
    if (old.el.contains(document.activeElement)) active.viewer.canvas.focus();
    hooks.leaving(old); // before `data` follows the new image
    for (let i = 0; i < active.viewer.world.getItemCount(); i++) active.viewer.world.getItemAt(i).immediateRender = false;
    active.viewer.immediateRender = false;
    ctx.queue.reset({ annotations: pane.data.urls.annotations, annotation: pane.data.urls.annotation });
    active.undo.mark();
    active.anno.setAnnotations([], true); // the shapes come from the queue's records (show)
    Object.assign(data, pane.data);
    viewerEl.removeAttribute("data-annotations-loaded");
    ctx.renderList();
    showBar();
    if (push) window.history.pushState({ image: id }, "", pageUrl(data, id));
    show(active);
    // the data the hidden pane was opened with may be a little old: the verdict, neighbours
    // and counts come again (the shapes are polled in show)
    const verdict = data.image.verdict;
    fetchData(id).then((d) => {
      if (!d || active !== pane || pane.image !== id) return;
      // a verdict set meanwhile stands (the answer may have been read before it was stored)
      if (data.image.verdict !== verdict) d.image.verdict = data.image.verdict;
      pane.data = d;
      Object.assign(data, d);
      showBar();
      hooks.refreshed();
    });
  }

  function run(task) {
    chain = chain.then(async () => {
      switching = true;
      try { await task(); } finally { switching = false; }
    }).catch((e) => ctx.toast("Could not open the image: " + e.message));
    return chain;
  }

  /** Go to the next or previous image of the grid's list once every change is sent. */
  function go(which) {
    if (ctx.queue.status().state === "offline") {
      ctx.toast("Your last changes are not saved yet (the server does not answer): this image stays until they are.");
      return chain;
    }
    const asked = moves;
    return run(() => {
      if (asked !== moves) return undefined; // back or forward was pressed since
      const id = data.neighbors[which];
      if (!id) { ctx.toast(which === "next" ? "This is the last image of the list." : "This is the first image of the list."); return undefined; }
      direction = which;
      return switchTo(id, true, asked);
    });
  }

  /** The page's own image, in the first pane. */
  async function first() {
    const ok = await openIn(active, data.image.id, Object.assign({}, data)); // its own copy: `data` follows the screen
    if (ok) show(active);
  }

  // the bar's arrows: a plain click switches in the page; Ctrl / middle click still opens a tab
  for (const [which, elId] of [["previous", "prev-image"], ["next", "next-image"]]) {
    document.getElementById(elId).addEventListener("click", (e) => {
      if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      go(which);
    });
  }
  // back and forward through the images switched to in the page
  window.addEventListener("popstate", () => {
    moves += 1;
    const asked = moves;
    run(() => {
      const id = imageIdOf(window.location.pathname); // where the address is when it runs
      if (id && id !== data.image.id) return switchTo(id, false, asked);
      return undefined;
    });
  });
  window.history.replaceState({ image: data.image.id }, "", window.location.href);
  // Ctrl+Z / Ctrl+Y (Cmd+Z, Cmd+Shift+Z): the shown pane's annotator, within its image's changes.
  // Captured before Annotorious' own keys, which would act on whichever pane has the focus.
  window.addEventListener("keydown", (e) => {
    const which = undoKey(e);
    if (!which || typingIn(e)) return;
    e.preventDefault();
    e.stopImmediatePropagation();
    if (which === "undo" ? active.undo.canUndo() : active.undo.canRedo()) active.anno[which]();
  }, true);

  return { go, first };
}
