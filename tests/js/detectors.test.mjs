/* The models page's detector helpers (static/loupe/detectors.js, a classic script run here as
 * the page runs it): the time estimate in words, and the
 * training curves drawn as SVG. Run: node --test tests/js/ */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import vm from "node:vm";

const source = await readFile(new URL("../../static/loupe/detectors.js", import.meta.url), "utf8");
const page = {};
vm.runInThisContext("(function (window) {\n" + source + "\n})")(page);
const D = page.LoupeDetectors;

/** [[x, y], ...] of an SVG's polyline and of its dots. */
function shapes(svg) {
  const line = /<polyline class="line" points="([^"]*)"/.exec(svg);
  const dots = [...svg.matchAll(/<circle class="dot" cx="([\d.]+)" cy="([\d.]+)"/g)].map((m) => [Number(m[1]), Number(m[2])]);
  return {
    line: line ? line[1].split(" ").map((p) => p.split(",").map(Number)) : [],
    dots,
  };
}

function charts(html) {
  const out = {};
  for (const m of html.matchAll(/<svg[^>]*data-series="(\w+)"[^>]*data-points="(\d+)"[\s\S]*?<\/svg>/g)) {
    out[m[1]] = { count: Number(m[2]), svg: m[0], ...shapes(m[0]) };
  }
  return out;
}

test("durations read as a person would say them", () => {
  assert.equal(D.humanDuration(12), "under a minute");
  assert.equal(D.humanDuration(12 * 60 + 10), "about 12 min");
  assert.equal(D.humanDuration(2 * 3600 + 5 * 60), "about 2 h 5 min");
  assert.equal(D.humanDuration(3 * 3600), "about 3 h");
  assert.equal(D.humanDuration(3 * 86400 + 4 * 3600), "about 3 days 4 h");
  assert.equal(D.humanDuration(null), "");
});

test("axis tops are round numbers at or above the largest value", () => {
  assert.equal(D.niceCeil(0.37), 0.5);
  assert.equal(D.niceCeil(1.7), 2);
  assert.equal(D.niceCeil(2.2), 2.5);
  assert.equal(D.niceCeil(7), 10);
  assert.equal(D.niceCeil(40), 50);
  assert.equal(D.niceCeil(0), 1);
});

test("loss per epoch and mAP50 per evaluated epoch, on the planned epochs' axis", () => {
  const history = [
    { epoch: 1, loss: 3.2 },
    { epoch: 2, loss: 2.4, map50: 0.1, map: 0.04, ap_small: -1 },
    { epoch: 3, loss: 1.9 },
    { epoch: 4, loss: 1.6, map50: 0.3 },
  ];
  const c = charts(D.curvesSvg(history, 8));
  assert.equal(c.loss.count, 4);
  assert.equal(c.map50.count, 2);
  assert.equal(c.loss.line.length, 4);
  // x is the epoch over the 8 planned ones: epoch 4 halfway along the axis, epoch 2 a quarter
  const [x0, x1] = [36, 230 - 10]; // the plot's left and right edges (PAD in detectors.js)
  assert.ok(Math.abs(c.loss.line[3][0] - (x0 + (x1 - x0) / 2)) < 0.2, c.loss.line);
  assert.ok(Math.abs(c.map50.line[0][0] - (x0 + (x1 - x0) / 4)) < 0.2, c.map50.line);
  // a falling loss is drawn lower and lower (SVG's y grows downwards)
  const ys = c.loss.line.map(([, y]) => y);
  assert.deepEqual([...ys].sort((a, b) => a - b), ys);
  // the loss axis tops at 5 (3.2 rounded up), mAP's at 0.5 (0.3 rounded up); ticks say so
  assert.match(c.loss.svg, />5<\/text>/);
  assert.match(c.map50.svg, />0.5<\/text>/);
  assert.match(c.loss.svg, />8<\/text>/); // the planned last epoch
  assert.match(c.map50.svg, /<title>epoch 4: 0.3<\/title>/);
});

test("one epoch is a dot; no evaluation yet says so; bad numbers are left out", () => {
  const c = charts(D.curvesSvg([{ epoch: 1, loss: 2.5, map50: null }], 1));
  assert.equal(c.loss.count, 1);
  assert.equal(c.loss.line.length, 0);
  assert.equal(c.loss.dots.length, 1);
  assert.equal(c.map50.count, 0);
  assert.match(c.map50.svg, /not evaluated yet/);
  const nan = charts(D.curvesSvg([{ epoch: 1, loss: "NaN" }, { epoch: 2, loss: 1 }], 2));
  assert.equal(nan.loss.count, 1);
  const empty = charts(D.curvesSvg([], 10));
  assert.equal(empty.loss.count, 0);
  assert.match(empty.loss.svg, /no figures yet/);
});

test("networks trained one after the other: a dashed line where each next one starts", () => {
  // a two-stage detector of two networks of 3 epochs (epochs counted over both)
  const history = [1, 2, 3, 4, 5, 6].map((epoch) => ({ epoch, network: epoch <= 3 ? 1 : 2, loss: 2 / epoch }));
  const c = charts(D.curvesSvg(history, 6));
  for (const series of ["loss", "map50"]) {
    const marks = [...c[series].svg.matchAll(/<line class="mark" x1="([\d.]+)"[^>]*><title>([^<]*)<\/title>/g)];
    assert.equal(marks.length, 1, series);
    assert.equal(marks[0][2], "network 2 starts");
    // between epochs 3 and 4: x = 3.5 of 6 along the plot
    const [x0, x1] = [36, 230 - 10];
    assert.ok(Math.abs(Number(marks[0][1]) - (x0 + ((x1 - x0) * 3.5) / 6)) < 0.2, marks[0][1]);
  }
  // one network (a single-image detector): no line
  assert.doesNotMatch(D.curvesSvg([{ epoch: 1, loss: 1 }, { epoch: 2, loss: 0.5 }], 2), /class="mark"/);
});

test("a training version's progress in one line", () => {
  assert.equal(D.progressLine([], 10), "waiting for the first epoch");
  assert.equal(
    D.progressLine([{ epoch: 1, loss: 2.5, map50: 0.2 }, { epoch: 2, loss: 1.25 }], 10),
    "epoch 2 of 10 · loss 1.25 · mAP50 0.200",
  );
  // a two-stage detector of two networks of 30 epochs: its epochs are counted over both
  assert.equal(
    D.progressLine([{ epoch: 31, network: 2, loss: 0.5 }], 60),
    "epoch 31 of 60 (network 2) · loss 0.5",
  );
});

test("the retrain trigger's state in one line", () => {
  assert.equal(D.retrainLine({ retrain_after_labels: null, detector: null }), "No active detector yet: the first one is trained by hand.");
  assert.equal(
    D.retrainLine({ retrain_after_labels: null, detector: 2, dataset: 3, new_labels: 1 }),
    "1 new approved label since detector v2's dataset v3; automatic retraining is off.",
  );
  assert.equal(
    D.retrainLine({ retrain_after_labels: 50, detector: 2, dataset: null, new_labels: 12 }),
    "12 of 50 new approved labels since detector v2.",
  );
});
