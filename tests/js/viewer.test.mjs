/* viewer.js' promises for browser tests, against a stand-in for OpenSeadragon's viewer: "all
 * tiles of this view loaded" settles when a tile fails too, with its URL. Run: node --test tests/js/ */

import assert from "node:assert/strict";
import { test } from "node:test";

import { nextDraw, whenLoaded } from "../../static/loupe/workspace/viewer.js";
import { settle } from "./fakes.mjs";

/** The part of OpenSeadragon's Viewer these promises use; `raise` fires an event. */
function fakeViewer(items) {
  const handlers = new Map(); // event name -> handlers
  const viewer = {
    addHandler(name, fn) {
      if (!handlers.has(name)) handlers.set(name, []);
      handlers.get(name).push(fn);
    },
    removeHandler(name, fn) {
      handlers.set(name, (handlers.get(name) || []).filter((h) => h !== fn));
    },
    addOnceHandler(name, fn) {
      const once = (e) => { viewer.removeHandler(name, once); fn(e); };
      viewer.addHandler(name, once);
    },
    raise(name, e = {}) {
      [...(handlers.get(name) || [])].forEach((fn) => fn(e));
    },
    handlers: (name) => (handlers.get(name) || []).length,
    forceRedraw() { setImmediate(() => viewer.raise("update-viewport")); },
    world: { getItemCount: () => items.length, getItemAt: (i) => items[i] },
  };
  return viewer;
}

/** A TiledImage: fully loaded once the test says so. */
function fakeItem() {
  let loaded = false;
  const waiting = [];
  return {
    whenFullyLoaded(callback) {
      if (loaded) setTimeout(callback, 1);
      else waiting.push(callback);
    },
    finish() {
      loaded = true;
      waiting.splice(0).forEach((fn) => fn());
    },
  };
}

const tile = (url) => ({ getUrl: () => url });

/** Whether `promise` has settled, and how. */
function track(promise) {
  const state = { settled: false, error: null };
  promise.then(() => { state.settled = true; }, (e) => { state.settled = true; state.error = e; });
  return state;
}

test("nextDraw resolves on the viewer's next draw", async () => {
  const viewer = fakeViewer([]);
  const drawn = track(nextDraw(viewer));
  await settle();
  assert.equal(drawn.settled, true);
});

test("whenLoaded resolves once the view is drawn and every item (image, heatmap) is fully loaded", async () => {
  const image = fakeItem();
  const heatmap = fakeItem();
  const viewer = fakeViewer([image, heatmap]);
  const loaded = track(whenLoaded(viewer));
  await settle();
  image.finish();
  await settle();
  assert.equal(loaded.settled, false, "the heatmap is still loading");
  heatmap.finish();
  await settle();
  assert.deepEqual(loaded, { settled: true, error: null });
  assert.equal(viewer.handlers("tile-load-failed"), 0, "no handler left behind");
});

test("whenLoaded rejects with the tile's URL when a tile fails to load, instead of never settling", async () => {
  const image = fakeItem();
  const viewer = fakeViewer([image]);
  const loaded = track(whenLoaded(viewer));
  await settle();
  viewer.raise("tile-load-failed", { tile: tile("/media/tiles/7/12/3_4.jpg"), message: "HTTP 404", maxReached: true });
  await settle();
  assert.equal(loaded.settled, true);
  assert.match(loaded.error.message, /^tile failed to load: \/media\/tiles\/7\/12\/3_4\.jpg \(HTTP 404\)$/);
  assert.equal(viewer.handlers("tile-load-failed"), 0, "no handler left behind");
});

test("whenLoaded also rejects when a tile fails before the view is drawn", async () => {
  const viewer = fakeViewer([fakeItem()]);
  const loaded = track(whenLoaded(viewer));
  viewer.raise("tile-load-failed", { tile: tile("/t/0_0.jpg"), maxReached: true });
  await settle();
  assert.match(loaded.error.message, /\/t\/0_0\.jpg/);
});

test("whenLoaded waits while OpenSeadragon will try a failed tile again", async () => {
  const image = fakeItem();
  const viewer = fakeViewer([image]);
  const loaded = track(whenLoaded(viewer));
  await settle();
  viewer.raise("tile-load-failed", { tile: tile("/t/0_0.jpg"), maxReached: false });
  await settle();
  assert.equal(loaded.settled, false);
  image.finish();
  await settle();
  assert.deepEqual(loaded, { settled: true, error: null });
});
