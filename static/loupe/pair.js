/* The pair view shared by the workspace (workspace/reference.js) and the review queue
 * (review.js): an image's aligned reference laid exactly over it, and the aligned difference
 * as another overlay. Four controls drive it, with the same ids on both pages:
 *   #reference-toggle   (F) the reference over the image, or not (flicker between the two)
 *   #reference-swipe    the share of the width, from the left, that the reference covers
 *   #difference-toggle  (D) the difference over the image, or not
 *   #difference-opacity the difference's opacity
 * A pane is what a page keeps per viewer: {ref, diff} (OpenSeadragon items, or null) and the
 * image's full-resolution size. The helpers down to apply() use no DOM;
 * tests/js/pair.test.mjs runs them in Node.
 *
 * A classic script like overlay.js: it sets window.LoupePair.
 */
(function () {
  "use strict";

  const clampPercent = (v) => {
    const n = Number(v);
    return isFinite(n) ? Math.min(100, Math.max(0, n)) : 100;
  };

  /* What the controls say: {reference, swipe (0-100), difference, opacity (0-100)}. */
  function read(controls) {
    return {
      reference: Boolean(controls.refToggle && controls.refToggle.checked),
      swipe: clampPercent(controls.swipe ? controls.swipe.value : 100),
      difference: Boolean(controls.diffToggle && controls.diffToggle.checked),
      opacity: clampPercent(controls.diffOpacity ? controls.diffOpacity.value : 100),
    };
  }

  const referenceOpacity = (state) => (state.reference ? 1 : 0);
  const differenceOpacity = (state) => (state.difference ? state.opacity / 100 : 0);

  /* The part of the reference on screen, in the image's pixels: from the left edge to the
     swipe's line, the full height. */
  function swipeRect(width, height, swipe) {
    return { x: 0, y: 0, width: (width * clampPercent(swipe)) / 100, height };
  }

  /* Set `pane`'s items as `state` says: the reference's opacity and clip, the difference's
     opacity. `pane.width` / `pane.height`: the image's size (the reference is aligned onto it). */
  function apply(pane, state) {
    if (pane.ref) {
      pane.ref.setOpacity(referenceOpacity(state));
      if (pane.width && pane.height) {
        const r = swipeRect(pane.width, pane.height, state.swipe);
        pane.ref.setClip(new window.OpenSeadragon.Rect(r.x, r.y, r.width, r.height));
      }
    }
    if (pane.diff) pane.diff.setOpacity(differenceOpacity(state));
  }

  /* data-reference / data-difference on the viewer element: what the pane on screen shows
     ("shown" / "hidden"; absent without the item). Browser tests read them. */
  function mark(el, pane, state) {
    if (pane && pane.ref) el.dataset.reference = state.reference ? "shown" : "hidden";
    else delete el.dataset.reference;
    if (pane && pane.diff) el.dataset.difference = state.difference ? "shown" : "hidden";
    else delete el.dataset.difference;
  }

  /* The page's four controls, by their shared ids. */
  function controls(doc) {
    return {
      refToggle: doc.getElementById("reference-toggle"),
      swipe: doc.getElementById("reference-swipe"),
      diffToggle: doc.getElementById("difference-toggle"),
      diffOpacity: doc.getElementById("difference-opacity"),
    };
  }

  /* Flip a checkbox as a click would (F, D), unless it is disabled. */
  function toggle(input) {
    if (!input || input.disabled) return;
    input.checked = !input.checked;
    input.dispatchEvent(new Event("change"));
  }

  window.LoupePair = { read, referenceOpacity, differenceOpacity, swipeRect, apply, mark, controls, toggle };
})();
