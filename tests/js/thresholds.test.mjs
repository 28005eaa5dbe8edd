/* The models page's threshold card helpers (static/loupe/thresholds.js, a classic script run
 * here as the page runs it): the expected share between the worker's tabulated thresholds,
 * the histogram's bars and lines, and the sentences. Run: node --test tests/js/ */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import vm from "node:vm";

const source = await readFile(new URL("../../static/loupe/thresholds.js", import.meta.url), "utf8");
const page = {};
vm.runInThisContext("(function (window) {\n" + source + "\n})")(page);
const T = page.LoupeThresholds;

const table = [[0.25, 0.6], [0.5, 0.25], [0.75, 0.1], [1.0, 0.04]];

test("the share is read between the tabulated thresholds, clamped outside them", () => {
  assert.equal(T.shareAt(table, 0.5), 0.25);
  assert.ok(Math.abs(T.shareAt(table, 0.625) - 0.175) < 1e-12);
  assert.equal(T.shareAt(table, 0.1), 0.6);
  assert.equal(T.shareAt(table, 3), 0.04);
  assert.equal(T.shareAt([], 0.5), null);
});

test("peaks fall into bins of 0.1, the largest into the last bin", () => {
  assert.deepEqual(T.bins([0.05, 0.12, 0.19, 0.95, 7], 0.1, 1), [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
});

test("the histogram has a bar per filled bin, both thresholds and the reviewed ticks", () => {
  const svg = T.histogramSvg({ peaks: [0.2, 0.21, 0.4, 0.6], threshold: 0.8, accepted: [1.2], rejected: [0.55, 0.7] });
  const bars = [...svg.matchAll(/<rect class="bar" data-count="(\d+)"/g)].map((m) => Number(m[1]));
  assert.deepEqual(bars, [2, 1, 1]);
  assert.match(svg, /class="model-threshold"/);
  assert.match(svg, /class="project-threshold" data-threshold="0.8"/);
  assert.equal([...svg.matchAll(/class="tick-accepted"/g)].length, 1);
  assert.equal([...svg.matchAll(/class="tick-rejected"/g)].length, 2);
  assert.match(svg, /Peak scores of 4 held-out normal images/);
});

test("the sentences give the expected share, the held-out count and the reviewed suggestions", () => {
  const data = { version: 3, peaks: [0.1, 0.3, 0.45, 0.6], expected_share: table, on_training_images: false };
  const lines = T.effectText(data, 0.5, { accepted: [0.7, 1.4, 0.45], rejected: [0.52, 0.3] });
  assert.match(lines[0], /From a score of 0.5: about 25 % of normal images would get a suggestion/);
  assert.match(lines[0], /4 held-out normal images; 1 of them reach it/);
  assert.match(lines[1], /4 held-out images are few for a fit/);
  assert.equal(lines[2], "Reviewed suggestions of v3: 2 of 3 accepted and 1 of 2 rejected score at least this.");
  const unlike = T.effectText({ ...data, unlike_normals: 2 }, 0.5, null);
  assert.match(unlike[1], /^2 held-out images peak far above the rest/);
  const higher = T.effectText(data, 1.0, null);
  assert.match(higher[0], /about 4.0 % of normal images/);
  assert.equal(higher.length, 2);
  assert.equal(T.percent(0.0004), "under 0.1 %");
  assert.equal(T.percent(0), "under 0.1 %");
});
