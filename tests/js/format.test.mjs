/* format.js: which key presses belong to a form field. Run: node --test tests/js/ */

import test from "node:test";
import assert from "node:assert/strict";

import { typingIn } from "../../static/loupe/workspace/format.js";

// a key event whose target sits in `field` (or in nothing: the view)
const ev = (key, field) => ({ key, target: { closest: () => field } });

test("letters typed in a text field or a menu are theirs", () => {
  assert.equal(typingIn(ev("f", { type: "text" })), true);
  assert.equal(typingIn(ev("f", { type: "select-one" })), true);
  assert.equal(typingIn(ev("f", { type: "textarea" })), true);
});

test("letters pressed on a slider or a checkbox go to the workspace (F after the swipe slider)", () => {
  assert.equal(typingIn(ev("f", { type: "range" })), false);
  assert.equal(typingIn(ev("d", { type: "checkbox" })), false);
  assert.equal(typingIn(ev("f", null)), false);
});

test("a slider keeps the keys that move it", () => {
  for (const key of ["ArrowLeft", "ArrowRight", "Home", "End", "PageUp"]) {
    assert.equal(typingIn(ev(key, { type: "range" })), true, key);
  }
});
