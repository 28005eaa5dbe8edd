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
  // the verdict's share, when the calibration has it (models trained before it do not)
  const verdict = T.effectText({ ...data, verdict_share: 0.1365, flag_rate: 0.05 }, 0.5, null);
  assert.equal(verdict.at(-1), "The verdict (an image flagged anomalous; NG at a station from its unsure margin above) has its own threshold: about 14 % of normal images would reach it (flag rate asked: 5.0 %; few held-out images make it higher).");
  const firm = T.effectText({ ...data, verdict_share: 0.042, flag_rate: 0.05 }, 0.5, null);
  assert.match(firm.at(-1), /about 4.2 % of normal images would reach it \(flag rate asked: 5.0 %\)\.$/);
  // none held out: the sentence above says to expect more, not that few were held out
  const none = T.effectText({ ...data, verdict_share: 0.2, flag_rate: 0.05, on_training_images: true }, 0.5, null);
  assert.match(none.at(-1), /about 20 % of normal images would reach it \(flag rate asked: 5.0 %\)\.$/);
  assert.equal(T.percent(0.0004), "under 0.1 %");
  assert.equal(T.percent(0), "under 0.1 %");
});

/* The reviewed images' curve as GET /api/models/{id}/threshold-effect/ answers it. */
const effect = {
  images_used: 4, good_images: 2, defect_images: 2, labels: 3, capped: false, limit: 300,
  curve: [
    { threshold: 0.3, false_per_good_image: 1.0, false_on_defect_images: 1, found: 2, recall: 0.6667 },
    { threshold: 0.5, false_per_good_image: 0.5, false_on_defect_images: 1, found: 2, recall: 0.6667 },
    { threshold: 0.6, false_per_good_image: 0.5, false_on_defect_images: 1, found: 1, recall: 0.3333 },
    { threshold: 0.95, false_per_good_image: 0.0, false_on_defect_images: 0, found: 0, recall: 0.0 },
  ],
};

test("the reviewed images' curve is read between its grid's rows, not outside it", () => {
  assert.equal(T.effectAt(effect, 0.5).false_per_good_image, 0.5);
  assert.ok(Math.abs(T.effectAt(effect, 0.4).false_per_good_image - 0.75) < 1e-12);
  assert.equal(T.effectAt(effect, 0.3).found, 2);
  assert.equal(T.effectAt(effect, 0.2), null);
  assert.equal(T.effectAt(effect, 1.5), null);
  assert.equal(T.effectAt({ curve: [] }, 0.5), null);
});

test("the sentence on the reviewed images: false suggestions per normal image and defects found", () => {
  const data = { version: 3, peaks: [0.2, 0.4], expected_share: [[0.5, 0.25]] };
  const lines = T.effectText(data, 0.6, null, effect);
  assert.equal(
    lines[lines.length - 1],
    "On 4 reviewed images (2 normal, 2 with defects): about 0.5 false suggestions per normal image and 1 of 3 labelled defects found from this score.",
  );
  assert.match(lines[0], /^From a score of 0.6: about 25 %/); // the existing lines stay
  const capped = T.effectLine({ ...effect, capped: true }, 0.3);
  assert.match(capped, /\(2 normal, 2 with defects; the 300 most recently reviewed\): about 1 false suggestion per normal image and 2 of 3/);
  assert.match(T.effectLine(effect, 2), /stop at 1/);
  // nothing without reviewed images, or before the curve arrives
  assert.equal(T.effectText(data, 0.6, null, { ...effect, images_used: 0 }).length, lines.length - 1);
  assert.equal(T.effectText(data, 0.6, null, null).length, lines.length - 1);
});

test("with labels of several categories, the sentence says which kinds are found", () => {
  const kinds = {
    ...effect,
    labels_by_category: { dent: 1, scratch: 2 },
    curve: effect.curve.map((r) => ({
      ...r, found_by_category: { dent: 0, scratch: r.found },
    })),
  };
  assert.match(
    T.effectLine(kinds, 0.6),
    /and 1 of 3 labelled defects found \(dent 0 of 1, scratch 1 of 2\) from this score\.$/,
  );
  // between two rows: the counts of the row above (what the score finds at least), which add
  // up, never a rounded interpolation of each (1.5 of 2 would say "2", 0.5 of 1 "1": 3 of 2)
  assert.match(T.effectLine(kinds, 0.55), /1 of 3 labelled defects found \(dent 0 of 1, scratch 1 of 2\)/);
  assert.match(T.effectLine(kinds, 0.5), /2 of 3 labelled defects found \(dent 0 of 1, scratch 2 of 2\)/);
  // one category: no list (the count says it all); older answers without categories alike
  const one = { ...kinds, labels_by_category: { scratch: 3 } };
  assert.match(T.effectLine(one, 0.6), /1 of 3 labelled defects found from this score\.$/);
  assert.match(T.effectLine(effect, 0.6), /1 of 3 labelled defects found from this score\.$/);
});

test("the curve chart: a point per threshold, the typed one circled, labelled for screen readers", () => {
  const svg = T.curveSvg(effect, 0.6);
  assert.match(svg, /role="img"/);
  assert.match(svg, /aria-label="False suggestions per normal image against recall of 3 labelled defects on 4 reviewed images; from 0.6: 0.5 per image, 33 % found"/);
  assert.equal([...svg.matchAll(/class="grid-point"/g)].length, 4);
  assert.match(svg, /class="current-threshold" data-threshold="0.6"/);
  assert.equal(T.curveSvg({ ...effect, curve: effect.curve.map((r) => ({ ...r, recall: null })) }, 0.6), "");
});
