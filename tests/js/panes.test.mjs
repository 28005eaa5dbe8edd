/* panes.js' pure parts: which keys are undo / redo, the image id in a workspace address, and the
 * part of Annotorious' undo history that belongs to the image on screen (its history lives as
 * long as the pane, which shows image after image). Run: node --test tests/js/ */

import assert from "node:assert/strict";
import { test } from "node:test";

import { createUndoFloor, imageIdOf, undoKey } from "../../static/loupe/workspace/panes.js";

/** Annotorious' undo history as getHistory() shows it: pushing after an undo drops the redo part. */
function fakeHistory() {
  let changes = [];
  let pointer = -1;
  return {
    getHistory: () => ({ changes: [...changes], pointer }),
    change(name) { changes = changes.slice(0, pointer + 1); changes.push({ name }); pointer = changes.length - 1; },
    undo() { pointer -= 1; },
    redo() { pointer += 1; },
  };
}

test("undo and redo keys, on Windows/Linux and Mac", () => {
  const key = (k, mods = {}) => Object.assign({ key: k, ctrlKey: false, metaKey: false, shiftKey: false, altKey: false }, mods);
  assert.equal(undoKey(key("z", { ctrlKey: true })), "undo");
  assert.equal(undoKey(key("Z", { ctrlKey: true, shiftKey: true })), "redo");
  assert.equal(undoKey(key("y", { ctrlKey: true })), "redo");
  assert.equal(undoKey(key("z", { metaKey: true })), "undo");
  assert.equal(undoKey(key("z", { metaKey: true, shiftKey: true })), "redo");
  assert.equal(undoKey(key("z")), null, "plain Z is not undo");
  assert.equal(undoKey(key("z", { ctrlKey: true, altKey: true })), null);
  assert.equal(undoKey(key("c", { ctrlKey: true })), null);
});

test("the image id of a workspace address", () => {
  assert.equal(imageIdOf("/images/42/"), 42);
  assert.equal(imageIdOf("/images/42"), 42);
  assert.equal(imageIdOf("/projects/3/"), null);
  assert.equal(imageIdOf("/images/42/workspace.json"), null);
});

test("undo stops at the first change made on this image; redo never brings back an earlier image's change", () => {
  const anno = fakeHistory();
  const floor = createUndoFloor(anno);
  anno.change("box on image 1");
  anno.change("polygon on image 1");
  anno.undo(); // the polygon is undone: its redo is still in the history
  assert.equal(floor.canUndo(), true);
  assert.equal(floor.canRedo(), true);

  floor.mark(); // the pane comes back on screen with image 2
  assert.equal(floor.canUndo(), false, "undo would delete image 1's box");
  assert.equal(floor.canRedo(), false, "redo would bring image 1's polygon onto image 2");

  anno.change("box on image 2"); // drops the old redo part
  assert.equal(floor.canUndo(), true);
  anno.undo();
  assert.equal(floor.canUndo(), false);
  assert.equal(floor.canRedo(), true, "image 2's own change can be redone");
  anno.redo();
  assert.equal(floor.canRedo(), false);
});
