/* Shapes on screen: Loupe annotations as Annotorious annotations (the category as a
 * 'classifying' body, the geometry as a selector), the adapter the save queue works through, and
 * Annotorious' change events turned into save-queue operations. */

// overlay.js' geometry conversion (window.LoupeOverlay) is looked up when called, as the other
// modules do, so that this module (and those importing it) also load without a browser.

export function categoryOf(a) {
  const body = (a.bodies || []).find((b) => b.purpose === "classifying");
  return body ? body.value : null;
}

export function withCategory(a, categoryId) {
  const body = { id: a.id + "-cat", annotation: a.id, purpose: "classifying", value: String(categoryId) };
  return Object.assign({}, a, { bodies: [body] });
}

/** Stored annotation `s` (the API's representation) as an Annotorious annotation `localId`. */
export function toAnnotation(localId, s) {
  return withCategory({ id: localId, bodies: [], target: { annotation: localId, selector: window.LoupeOverlay.toSelector(s.geometry) } }, s.category);
}

/** The save queue's view of the shapes on screen (see save-queue.js): those of the viewer on
 * screen (`ctx.anno`). Changes made through it are REMOTE: they raise no change events and make
 * no undo steps. */
export function annotoriousShapes(ctx) {
  const store = () => ctx.anno.state.store;
  return {
    payload(id) {
      const a = ctx.anno.getAnnotationById(id);
      if (!a) return null;
      return { category: Number(categoryOf(a) || ctx.category), geometry: window.LoupeOverlay.toGeometry(a.target.selector) };
    },
    has: (id) => Boolean(store().getAnnotation(id)),
    put(id, s) {
      const a = toAnnotation(id, s);
      if (store().getAnnotation(id)) store().updateAnnotation(a, "REMOTE");
      else store().addAnnotation(a, "REMOTE");
    },
    drop(id) {
      if (store().getAnnotation(id)) store().deleteAnnotation(id, "REMOTE");
    },
  };
}

/** Every change `anno` reports (including undo and redo) goes to the save queue, while it is the
 * annotator on screen. */
export function bindShapeEvents(ctx, anno) {
  const { queue } = ctx;
  const onScreen = (handler) => (a) => { if (anno === ctx.anno) handler(a); };
  anno.on("createAnnotation", onScreen((a) => {
    // New shapes (and redone/undone deletions) take the current category unless they carry one.
    if (!categoryOf(a)) {
      if (!ctx.category) {
        ctx.toast("Add a defect category first (project settings).");
        anno.state.store.deleteAnnotation(a.id, "SILENT");
        return;
      }
      anno.state.store.updateAnnotation(withCategory(a, ctx.category), "SILENT");
    }
    queue.created(a.id);
    ctx.renderList();
  }));
  anno.on("updateAnnotation", onScreen((a) => { queue.updated(a.id); ctx.renderList(); }));
  anno.on("deleteAnnotation", onScreen((a) => { queue.deleted(a.id); ctx.renderList(); }));
  anno.on("selectionChanged", onScreen(() => ctx.renderList()));
}

/** An image's stored shapes, as the API lists them (null when they could not be read: the
 * page says so when that image is on screen). */
export async function fetchShapes(url) {
  try {
    const r = await window.Loupe.request("GET", url);
    return r.status === 200 && Array.isArray(r.body) ? r.body : null;
  } catch (e) {
    return null;
  }
}

/** Show `list` (stored shapes of the image on screen) as the shapes on screen. */
export function showShapes(ctx, list) {
  // added to what is there (nothing, or a shape drawn a moment ago), not replacing it
  ctx.anno.setAnnotations(list.map((s) => toAnnotation(ctx.queue.track(s), s)), false);
  ctx.renderList();
  ctx.els.viewer.setAttribute("data-annotations-loaded", "1");
}

/** Every `seconds`, while nothing waits to be sent and the page is visible, colleagues' changes
 * are fetched and shown. */
export function pollShapes(ctx, seconds) {
  setInterval(() => { if (!document.hidden) ctx.queue.poll(); }, seconds * 1000);
}

/** The page is idle for tests: every change sent, and the shapes on screen are exactly the ones
 * the server has. Annotorious changes its store at once but tells us a tick later, so a shape
 * drawn or undone a moment ago may not have queued its save yet. */
export function shapesIdle(ctx) {
  const { anno, queue } = ctx;
  if (!queue.idle()) return false;
  const records = queue.records;
  const shapes = anno.getAnnotations();
  const ids = new Set(shapes.map((a) => a.id));
  return shapes.every((a) => records.get(a.id) && records.get(a.id).serverId) && [...records.keys()].every((id) => ids.has(id));
}
