/* The image's reference (golden sample, template, 'before' picture), aligned onto the image by
 * the server (workers/tasks/references.py): its own deep-zoom pyramid laid exactly over the
 * image. F shows or hides it (flicker between the two), the swipe slider lets it cover only the
 * left part of the image; D lays the aligned difference over the image with its own opacity.
 * The side panel says how the alignment went and picks the reference. Each of the two viewers
 * (panes.js) has its own reference and difference items. What the controls do to the items is
 * shared with the review queue (static/loupe/pair.js, window.LoupePair). */

import { urlFor } from "./format.js";
import { afterPairing } from "./region-placement.js";

export function bindReference(ctx) {
  const viewerEl = ctx.els.viewer;
  const refToggle = document.getElementById("reference-toggle");
  const swipe = document.getElementById("reference-swipe");
  const diffToggle = document.getElementById("difference-toggle");
  const diffOpacity = document.getElementById("difference-opacity");
  const status = document.getElementById("reference-status");
  const select = document.getElementById("reference-select");
  const choice = document.getElementById("reference-choice");
  const find = document.getElementById("reference-find");
  const choices = ctx.data.references || [];

  const pair = window.LoupePair;
  const controls = { refToggle, swipe, diffToggle, diffOpacity };
  const ref = (pane) => (pane.data && pane.data.image.reference) || null;
  const refOpacity = () => pair.referenceOpacity(pair.read(controls));
  const diffValue = () => pair.differenceOpacity(pair.read(controls));

  function clip(pane) {
    if (!pane.ref) return;
    const { width, height } = pane.data.image;
    const r = pair.swipeRect(width, height, swipe.value);
    pane.ref.setClip(new OpenSeadragon.Rect(r.x, r.y, r.width, r.height));
  }

  function addTiled(viewer, url) {
    return new Promise((resolve, reject) => {
      // preload: the tiles come while it is hidden, so F flickers without waiting for them
      viewer.addTiledImage({
        tileSource: url, x: 0, y: 0, width: 1, opacity: refOpacity(), preload: true,
        success: (ev) => resolve(ev.item), error: (ev) => reject(new Error(ev.message || "no reference")),
      });
    });
  }

  /** Add `pane`'s aligned reference (always, hidden while off) and its difference (when on) once;
   * items that arrive after the pane moved on to another image are dropped. */
  async function prepare(pane) {
    const r = ref(pane);
    if (!r) return;
    const forImage = pane.image;
    if (r.dzi && !pane.ref && pane.refAdding !== forImage) {
      pane.refAdding = forImage;
      try {
        const item = await addTiled(pane.viewer, r.dzi);
        if (pane.image !== forImage || pane.ref) pane.viewer.world.removeItem(item);
        else { pane.ref = item; item.setOpacity(refOpacity()); clip(pane); }
      } catch (e) { /* not there (yet): the status says why */ }
      finally { if (pane.refAdding === forImage) pane.refAdding = null; }
    }
    if (r.difference && diffToggle.checked && !pane.diff && pane.diffAdding !== forImage) {
      pane.diffAdding = forImage;
      try {
        const item = await window.LoupeOverlay.addHeatmap(pane.viewer, r.difference, diffValue());
        if (pane.image !== forImage || pane.diff) pane.viewer.world.removeItem(item);
        else { pane.diff = item; item.setOpacity(diffValue()); }
      } catch (e) { /* the status says why */ }
      finally { if (pane.diffAdding === forImage) pane.diffAdding = null; }
    }
    if (pane === ctx.pane) mark();
  }

  /** data-reference / data-difference on the viewer: what is on screen (tests read them). */
  function mark() {
    pair.mark(viewerEl, ctx.pane, pair.read(controls));
  }

  function describe(r) {
    if (ctx.data.image.isReference) return "This image is a reference: others are compared with it.";
    if (!r) return choices.length ? "No reference: pick one to compare with." : "No reference images in this project yet.";
    if (r.status === "pending") return "Aligning with " + r.name + "…";
    if (r.status === "failed") return "Not aligned with " + r.name + ": " + (r.reason || "the alignment failed") + ".";
    const figures = [r.method, r.inliers != null ? r.inliers + " inliers" : null,
      r.residual_px != null ? "residual " + Number(r.residual_px).toFixed(2) + " px" : null].filter(Boolean);
    return "Aligned with " + r.name + (figures.length ? " (" + figures.join(", ") + ")" : "") + ".";
  }

  /** The pane on screen changed (or its data did): controls and items follow its image. */
  function shown() {
    const pane = ctx.pane;
    const r = ref(pane);
    refToggle.disabled = swipe.disabled = !(r && r.dzi);
    diffToggle.disabled = diffOpacity.disabled = !(r && r.difference);
    document.getElementById("reference-tools").hidden = !r;
    status.textContent = describe(r);
    status.dataset.state = r ? r.status || "" : "none";
    choice.hidden = Boolean(ctx.data.image.isReference);
    find.hidden = Boolean(ctx.data.image.isReference || r || !choices.length);
    select.replaceChildren(new Option("— none —", ""));
    choices.filter((c) => c.id !== ctx.data.image.id).forEach((c) => select.add(new Option(c.name, String(c.id))));
    if (r && !choices.some((c) => c.id === r.id)) select.add(new Option(r.name, String(r.id)));
    select.value = r ? String(r.id) : "";
    if (pane.ref) { pane.ref.setOpacity(refOpacity()); clip(pane); }
    if (pane.diff) pane.diff.setOpacity(diffValue());
    mark();
    prepare(pane);
    if (r && r.status === "pending") waitForAlignment(pane.image);
  }

  let waiting = null;
  /** Poll the image until its alignment is decided, then show the result (while it is on screen). */
  function waitForAlignment(image) {
    if (waiting === image) return;
    waiting = image;
    const started = Date.now();
    const poll = async () => {
      if (ctx.pane.image !== image) { waiting = null; return; }
      let body = null;
      try { body = (await window.Loupe.request("GET", urlFor(ctx.data.urls.pageData, image))).body; } catch (e) { /* retry */ }
      if (ctx.pane.image !== image) { waiting = null; return; }
      const r = body && body.image.reference;
      if (r && r.status === "pending" && Date.now() - started < 10 * 60 * 1000) { setTimeout(poll, 1000); return; }
      waiting = null;
      if (!body) return;
      forget(ctx.pane);
      ctx.pane.data.image.reference = ctx.data.image.reference = r;
      ctx.pane.data.image.regions = ctx.data.image.regions = body.image.regions;
      shown();
      ctx.pairChanged();
    };
    setTimeout(poll, 1000);
  }

  /** Drop `pane`'s reference items (its pair changed). */
  function forget(pane) {
    if (pane.ref) pane.viewer.world.removeItem(pane.ref);
    if (pane.diff) pane.viewer.world.removeItem(pane.diff);
    pane.ref = pane.diff = null;
  }

  refToggle.addEventListener("change", () => {
    if (ctx.pane.ref) ctx.pane.ref.setOpacity(refOpacity());
    mark();
  });
  swipe.addEventListener("input", () => clip(ctx.pane));
  diffToggle.addEventListener("change", () => {
    if (ctx.pane.diff) { ctx.pane.diff.setOpacity(diffValue()); mark(); } else prepare(ctx.pane);
  });
  diffOpacity.addEventListener("input", () => { if (ctx.pane.diff) ctx.pane.diff.setOpacity(diffValue()); });
  select.addEventListener("change", async () => {
    const id = select.value ? Number(select.value) : null;
    const pane = ctx.pane;
    let r;
    try { r = await window.Loupe.request("POST", ctx.data.urls.setReference, { reference: id }); }
    catch (e) { ctx.toast("The reference could not be set: " + e.message); shown(); return; }
    if (r.status !== 200) {
      const msg = (r.body && (r.body.reference || r.body.detail)) || "refused (" + r.status + ")";
      ctx.toast("The reference could not be set: " + msg);
      shown();
      return;
    }
    forget(pane);
    const name = id ? (choices.find((c) => c.id === id) || { name: String(id) }).name : "";
    pane.data.image.reference = ctx.data.image.reference = id ? { id, name, status: "pending" } : null;
    pane.data.image.regions = ctx.data.image.regions = afterPairing(ctx.data.image.regions, id);
    shown();
    ctx.pairChanged();
  });

  // the server ranks the references by a global descriptor and keeps the first that aligns
  find.addEventListener("click", async () => {
    const image = ctx.pane.image;
    find.disabled = true;
    status.textContent = "Looking for the most similar reference…";
    try {
      const r = await window.Loupe.request("POST", ctx.data.urls.bulk, { image_ids: [image], action: "propose_reference" });
      if (r.status !== 200) throw new Error((r.body && (r.body.error || r.body.detail)) || "refused (" + r.status + ")");
      let job = null;
      for (let waited = 0; waited < 600; waited++) {
        await new Promise((ok) => setTimeout(ok, 1000));
        job = (await window.Loupe.request("GET", urlFor(ctx.data.urls.job, r.body.job))).body;
        if (job && ["succeeded", "failed", "cancelled"].includes(job.status)) break;
      }
      if (ctx.pane.image !== image) return;
      const page = (await window.Loupe.request("GET", urlFor(ctx.data.urls.pageData, image))).body;
      const found = page && page.image.reference;
      ctx.pane.data.image.reference = ctx.data.image.reference = found;
      if (page) ctx.pane.data.image.regions = ctx.data.image.regions = page.image.regions;
      ctx.pairChanged();
      const missed = job && job.result && (job.result.unpaired || [])[0];
      if (!found) ctx.toast("No reference found: " + (missed ? missed.reason : (job && job.error) || "the search did not finish"));
      shown();
    } catch (e) {
      ctx.toast("The search could not start: " + e.message);
      shown();
    } finally {
      find.disabled = false;
    }
  });

  return { prepare, shown, forget };
}
