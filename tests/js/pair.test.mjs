/* The pair view shared by the workspace and the review queue (static/loupe/pair.js, a classic
 * script run here as the pages run it): what the four controls say, the reference's opacity and
 * swipe clip, the difference's opacity, and the viewer's data-reference / data-difference.
 * Run: node --test tests/js/ */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import vm from "node:vm";

const source = await readFile(new URL("../../static/loupe/pair.js", import.meta.url), "utf8");
class Rect {
  constructor(x, y, width, height) { Object.assign(this, { x, y, width, height }); }
}
const page = { OpenSeadragon: { Rect } };
vm.runInThisContext("(function (window) {\n" + source + "\n})")(page);
const P = page.LoupePair;

/** An OpenSeadragon item as far as the pair view uses it. */
function item() {
  return { opacity: null, clip: null, setOpacity(v) { this.opacity = v; }, setClip(r) { this.clip = r; } };
}

const controls = (reference, swipe, difference, opacity) => ({
  refToggle: { checked: reference },
  swipe: { value: String(swipe) },
  diffToggle: { checked: difference },
  diffOpacity: { value: String(opacity) },
});

test("the controls are read as on / off and percentages, clamped", () => {
  assert.deepEqual(P.read(controls(true, 40, false, 70)), { reference: true, swipe: 40, difference: false, opacity: 70 });
  assert.deepEqual(P.read(controls(false, 140, true, -5)), { reference: false, swipe: 100, difference: true, opacity: 0 });
  assert.deepEqual(P.read({}), { reference: false, swipe: 100, difference: false, opacity: 100 });
});

test("the reference is opaque or gone; the difference has its own opacity while on", () => {
  assert.equal(P.referenceOpacity({ reference: true }), 1);
  assert.equal(P.referenceOpacity({ reference: false }), 0);
  assert.equal(P.differenceOpacity({ difference: true, opacity: 30 }), 0.3);
  assert.equal(P.differenceOpacity({ difference: false, opacity: 30 }), 0);
});

test("the swipe keeps the reference left of a vertical line, the full height", () => {
  assert.deepEqual(P.swipeRect(1600, 1200, 40), { x: 0, y: 0, width: 640, height: 1200 });
  assert.deepEqual(P.swipeRect(1600, 1200, 100), { x: 0, y: 0, width: 1600, height: 1200 });
  assert.deepEqual(P.swipeRect(1600, 1200, 0), { x: 0, y: 0, width: 0, height: 1200 });
});

test("apply sets a pane's items; a pane without them is left alone", () => {
  const pane = { ref: item(), diff: item(), width: 1600, height: 1200 };
  P.apply(pane, P.read(controls(true, 25, true, 50)));
  assert.equal(pane.ref.opacity, 1);
  assert.ok(pane.ref.clip instanceof Rect);
  assert.deepEqual({ ...pane.ref.clip }, { x: 0, y: 0, width: 400, height: 1200 });
  assert.equal(pane.diff.opacity, 0.5);
  P.apply(pane, P.read(controls(false, 25, false, 50)));
  assert.equal(pane.ref.opacity, 0);
  assert.equal(pane.diff.opacity, 0);
  P.apply({ ref: null, diff: null, width: 10, height: 10 }, P.read(controls(true, 50, true, 50)));
  // no size yet (a label's image): opacity only, no clip
  const sizeless = { ref: item(), diff: null };
  P.apply(sizeless, P.read(controls(true, 50, false, 50)));
  assert.equal(sizeless.ref.opacity, 1);
  assert.equal(sizeless.ref.clip, null);
});

test("mark says what the pane on screen shows, and nothing without the items", () => {
  const el = { dataset: {} };
  P.mark(el, { ref: item(), diff: item() }, { reference: true, difference: false });
  assert.deepEqual({ ...el.dataset }, { reference: "shown", difference: "hidden" });
  P.mark(el, { ref: item(), diff: null }, { reference: false, difference: true });
  assert.deepEqual({ ...el.dataset }, { reference: "hidden" });
  P.mark(el, null, { reference: true, difference: true });
  assert.deepEqual({ ...el.dataset }, {});
});
