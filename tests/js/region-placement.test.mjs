/* Regions of interest placed on the image being labelled (static/loupe/workspace/
 * region-placement.js): a reference's polygon through the stored homography (reference pixels ->
 * image pixels, as workers/change/align.py stores it and workers/anomaly/roi.py applies it), the
 * reference itself in its own frame, and no outlines, with the reason, for an image the regions
 * cannot be placed on.
 * Run: node --test tests/js/ */

import assert from "node:assert/strict";
import { test } from "node:test";

import { afterPairing, labelAnchor, mapPoint, mapPolygon, placeRegions, touchesImage } from "../../static/loupe/workspace/region-placement.js";

const close = (actual, expected, eps = 1e-9) => {
  assert.equal(actual.length, expected.length);
  actual.forEach((p, i) => {
    assert.ok(Math.abs(p[0] - expected[i][0]) < eps && Math.abs(p[1] - expected[i][1]) < eps, `${p} != ${expected[i]}`);
  });
};

const SHIFT = [[1, 0, -5], [0, 1, -3], [0, 0, 1]]; // the part sits 5 px left, 3 px up
const SQUARE = [[100, 100], [300, 100], [300, 200], [100, 200]];
const regions = (state, matrix, extra = {}) => ({
  reference: { id: 7, name: "plate-golden.jpg" },
  state,
  matrix,
  reason: "",
  items: [
    { id: 1, name: "face", mode: "inspect", polygon: SQUARE },
    { id: 2, name: "label", mode: "exclude", polygon: [[400, 50], [500, 50], [450, 150]] },
  ],
  ...extra,
});

test("a point goes through the homography, with the projective divide", () => {
  close([mapPoint(SHIFT, [10, 20])], [[5, 17]]);
  // rotation by 90 degrees about the origin, then scaled 2x, translated
  const rot = [[0, -2, 50], [2, 0, 10], [0, 0, 1]];
  close([mapPoint(rot, [3, 4])], [[42, 16]]);
  // a true perspective: w = 0.001 x + 1
  const persp = [[1, 0, 0], [0, 1, 0], [0.001, 0, 1]];
  close([mapPoint(persp, [1000, 500])], [[500, 250]]);
  // a point sent to infinity or behind it cannot be placed
  assert.equal(mapPoint([[1, 0, 0], [0, 1, 0], [-0.01, 0, 1]], [100, 0]), null);
  assert.equal(mapPoint([[1, 0, 0], [0, 1, 0], [-0.01, 0, 1]], [200, 0]), null);
});

test("the same matrix as OpenCV's perspectiveTransform (a homography made of four points)", () => {
  // H maps the unit square's corners onto a quadrilateral; values worked out with cv2:
  // cv2.getPerspectiveTransform([[0,0],[1,0],[1,1],[0,1]], [[10,20],[110,25],[105,130],[5,120]])
  const H = [
    [94.7867298578199, -5.011848341232228, 10.0],
    [3.815165876777251, 99.71563981042655, 20.0],
    [-0.047393364928909956, -0.002369668246445498, 1.0],
  ];
  close(mapPolygon(H, [[0, 0], [1, 0], [1, 1], [0, 1]]), [[10, 20], [110, 25], [105, 130], [5, 120]], 1e-6);
});

test("the identity frame for the reference itself; a polygon with a vertex at infinity is dropped", () => {
  close(mapPolygon(null, SQUARE), SQUARE);
  assert.notEqual(mapPolygon(null, SQUARE), SQUARE); // a copy
  assert.equal(mapPolygon([[1, 0, 0], [0, 1, 0], [-0.01, 0, 1]], SQUARE), null);
});

test("the label goes at the topmost vertex, the leftmost of equals", () => {
  assert.deepEqual(labelAnchor([[5, 9], [3, 2], [8, 2], [1, 7]]), [3, 2]);
});

test("an aligned image gets every region through its matrix, excluded ones marked", () => {
  const out = placeRegions(regions("aligned", SHIFT), { width: 1600, height: 1200 });
  assert.equal(out.state, "aligned");
  assert.equal(out.message, "");
  assert.deepEqual(out.drawn.map((r) => [r.id, r.name, r.excluded]), [[1, "face", false], [2, "label", true]]);
  close(out.drawn[0].polygon, [[95, 97], [295, 97], [295, 197], [95, 197]]);
  assert.deepEqual(out.drawn[0].anchor, [95, 97]);
  close(out.drawn[1].polygon, [[395, 47], [495, 47], [445, 147]]);
});

test("the reference itself shows the polygons as drawn", () => {
  const out = placeRegions(regions("reference", null), { width: 1600, height: 1200 });
  close(out.drawn[0].polygon, SQUARE);
});

test("a region wholly off the image is left out; none on it says so", () => {
  const far = [[1, 0, 5000], [0, 1, 0], [0, 0, 1]];
  const out = placeRegions(regions("aligned", far), { width: 1600, height: 1200 });
  assert.equal(out.drawn.length, 0);
  assert.match(out.message, /None of the 2 region\(s\) drawn on plate-golden\.jpg falls on this image/);
  assert.ok(touchesImage([[-10, -10], [5, -10], [5, 5]], 100, 100));
  assert.ok(!touchesImage([[-10, -10], [-5, -10], [-5, -5]], 100, 100));
});

test("an image that cannot be placed gets no outlines and the reason", () => {
  const size = { width: 1600, height: 1200 };
  for (const [state, words] of [
    ["unpaired", /not aligned with plate-golden\.jpg, which they are drawn on/],
    ["other", /compared with another reference, not with plate-golden\.jpg/],
    ["pending", /being aligned with plate-golden\.jpg/],
  ]) {
    const out = placeRegions(regions(state, null), size);
    assert.equal(out.state, state);
    assert.deepEqual(out.drawn, []);
    assert.match(out.message, /^Regions of interest not shown: /);
    assert.match(out.message, words);
  }
  const failed = placeRegions(regions("failed", null, { reason: "too few agreeing matches" }), size);
  assert.match(failed.message, /alignment with plate-golden\.jpg, which they are drawn on, failed \(too few agreeing matches\)/);
  // "aligned" with a broken matrix is not drawn in the wrong place either
  const broken = placeRegions(regions("aligned", [[1, 0], [0, 1]]), size);
  assert.equal(broken.state, "failed");
  assert.deepEqual(broken.drawn, []);
});

test("a project without regions: nothing to draw, nothing to say", () => {
  assert.deepEqual(placeRegions(null), { state: "none", drawn: [], message: "" });
  assert.deepEqual(placeRegions({ items: [] }), { state: "none", drawn: [], message: "" });
});

test("a reference set in the panel: pending when it is the regions' one, until the server aligns", () => {
  const aligned = regions("aligned", SHIFT);
  assert.deepEqual(afterPairing(aligned, 7), { ...aligned, state: "pending", matrix: null, reason: "" });
  assert.equal(afterPairing(aligned, 9).state, "other");
  assert.equal(afterPairing(aligned, null).state, "unpaired");
  assert.equal(aligned.state, "aligned"); // a new object: the page's data is replaced, not edited
  const ref = regions("reference", null);
  assert.equal(afterPairing(ref, null), ref);
  assert.equal(afterPairing(null, 7), null);
  assert.deepEqual(placeRegions(afterPairing(aligned, 7), { width: 1600, height: 1200 }).drawn, []);
});
