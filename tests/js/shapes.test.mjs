/* The workspace modules load without a browser (they read the page's globals when called, not
 * when imported), and shapes.js' adapter between the save queue and Annotorious keeps a stored
 * annotation's category and geometry. Run: node --test tests/js/ */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { after, before, describe, test } from "node:test";
import vm from "node:vm";

const workspace = new URL("../../static/loupe/workspace/", import.meta.url);

test("every workspace module but the entry (main.js) imports without a browser", async () => {
  assert.equal(typeof globalThis.window, "undefined");
  for (const name of ["format", "keys", "notes", "overlays", "panes", "reference", "region-placement", "regions-layer", "save-queue", "shapes", "shapes-panel", "viewer"]) {
    await assert.doesNotReject(import(new URL(name + ".js", workspace).href), name + ".js");
  }
});

describe("the save queue's view of the shapes on screen (annotoriousShapes)", () => {
  // overlay.js is a classic script that sets window.LoupeOverlay: run it as the page does.
  before(async () => {
    const source = await readFile(new URL("../overlay.js", workspace), "utf8");
    const page = {};
    vm.runInThisContext("(function (window) {\n" + source + "\n})")(page);
    globalThis.window = { LoupeOverlay: page.LoupeOverlay };
  });
  after(() => { delete globalThis.window; });

  /** Annotorious' annotator as the adapter uses it, with an in-memory store. */
  function fakeAnno() {
    const byId = new Map();
    const log = [];
    const store = {
      getAnnotation: (id) => byId.get(id),
      addAnnotation(a, origin) { byId.set(a.id, a); log.push(["add", a.id, origin]); },
      updateAnnotation(a, origin) { byId.set(a.id, a); log.push(["update", a.id, origin]); },
      deleteAnnotation(id, origin) { byId.delete(id); log.push(["delete", id, origin]); },
    };
    return { log, state: { store }, getAnnotationById: (id) => byId.get(id) };
  }

  test("a stored box and polygon shown through the adapter give back their category and geometry", async () => {
    const { annotoriousShapes, categoryOf } = await import(new URL("shapes.js", workspace).href);
    const anno = fakeAnno();
    const shapes = annotoriousShapes({ anno, category: "1" });
    const box = { id: 3, category: 2, geometry: { type: "box", x: 10, y: 20, w: 30, h: 40 } };
    const polygon = { id: 4, category: 5, geometry: { type: "polygon", points: [[0, 0], [10, 0], [5, 8]] } };
    shapes.put("srv-3", box);
    shapes.put("new-a", polygon);
    assert.equal(categoryOf(anno.getAnnotationById("srv-3")), "2");
    assert.deepEqual(shapes.payload("srv-3"), { category: 2, geometry: box.geometry });
    assert.deepEqual(shapes.payload("new-a"), { category: 5, geometry: polygon.geometry });
    assert.equal(shapes.payload("gone"), null);

    shapes.put("srv-3", Object.assign({}, box, { category: 7 })); // shown again: an update, not a copy
    assert.equal(shapes.payload("srv-3").category, 7);
    shapes.drop("new-a");
    assert.equal(shapes.has("new-a"), false);
    shapes.drop("new-a"); // not there: nothing happens
    assert.deepEqual(anno.log, [["add", "srv-3", "REMOTE"], ["add", "new-a", "REMOTE"], ["update", "srv-3", "REMOTE"], ["delete", "new-a", "REMOTE"]]);
  });

  test("the adapter works on the annotator on screen: after N / P swap the panes, the other one", async () => {
    const { annotoriousShapes } = await import(new URL("shapes.js", workspace).href);
    const first = fakeAnno();
    const second = fakeAnno();
    const ctx = { anno: first, category: "1" };
    const shapes = annotoriousShapes(ctx);
    shapes.put("srv-1", { id: 1, category: 2, geometry: { type: "box", x: 1, y: 2, w: 3, h: 4 } });
    ctx.anno = second;
    assert.equal(shapes.has("srv-1"), false, "the hidden pane's shapes are not the ones on screen");
    shapes.put("srv-9", { id: 9, category: 2, geometry: { type: "box", x: 5, y: 6, w: 7, h: 8 } });
    assert.deepEqual(second.log, [["add", "srv-9", "REMOTE"]]);
    assert.equal(first.log.length, 1);
  });
});
