/* Regions of interest placed on the image being labelled: pure functions, no DOM (tested in
 * Node: tests/js/region-placement.test.mjs).
 *
 * The regions are polygons in the pixels of one reference image. The server says how the image
 * on screen lies on that reference (annotations/views.py `_regions_data`, the same rule inspection
 * runs use: inspection.services.regions.registration_onto): the reference itself (its own
 * frame), aligned (a stored 3x3 homography, reference pixels -> image pixels), or not placed
 * (pending, failed, paired with another reference, unpaired): then nothing is drawn and a status
 * line says why. A homography keeps straight lines straight, so mapping the vertices maps the
 * outline. */

/** `[x, y]` of the reference mapped through `matrix` (3x3, row-major); null where the point
 * goes to or beyond infinity (w <= 0: behind the camera of the homography). */
export function mapPoint(matrix, [x, y]) {
  const [a, b, c] = matrix;
  const w = c[0] * x + c[1] * y + c[2];
  if (!(w > 1e-12)) return null;
  return [(a[0] * x + a[1] * y + a[2]) / w, (b[0] * x + b[1] * y + b[2]) / w];
}

/** A polygon of the reference in the image's pixels (`matrix` null: the same frame); null when
 * a vertex cannot be mapped. */
export function mapPolygon(matrix, polygon) {
  if (!matrix) return polygon.map(([x, y]) => [x, y]);
  const out = [];
  for (const p of polygon) {
    const q = mapPoint(matrix, p);
    if (!q || !Number.isFinite(q[0]) || !Number.isFinite(q[1])) return null;
    out.push(q);
  }
  return out;
}

/** Where a region's name goes: its topmost vertex (the leftmost of equals). */
export function labelAnchor(polygon) {
  return polygon.reduce((a, p) => (p[1] < a[1] || (p[1] === a[1] && p[0] < a[0]) ? p : a));
}

/** Whether any part of `polygon`'s bounding box lies on the image (`width` x `height`). */
export function touchesImage(polygon, width, height) {
  const xs = polygon.map((p) => p[0]);
  const ys = polygon.map((p) => p[1]);
  return Math.max(...xs) >= 0 && Math.min(...xs) <= width && Math.max(...ys) >= 0 && Math.min(...ys) <= height;
}

/**
 * What to draw for the image's `regions` data (null: the project has no regions):
 *   {state, drawn: [{id, name, excluded, polygon (image pixels), anchor}], message}
 * `drawn` is empty and `message` says why when the regions cannot be placed on this image.
 * `size`: the image's {width, height}; a region that falls wholly off the image is left out.
 */
export function placeRegions(regions, size) {
  if (!regions || !regions.items || !regions.items.length) return { state: "none", drawn: [], message: "" };
  const ref = regions.reference ? regions.reference.name : "the reference";
  const { state } = regions;
  if (state !== "reference" && state !== "aligned") {
    return { state, drawn: [], message: notPlacedMessage(state, ref, regions.reason) };
  }
  const matrix = state === "aligned" ? regions.matrix : null;
  if (state === "aligned" && !validMatrix(matrix)) {
    return { state: "failed", drawn: [], message: notPlacedMessage("failed", ref, "no usable alignment matrix") };
  }
  const drawn = [];
  for (const r of regions.items) {
    const polygon = mapPolygon(matrix, r.polygon || []);
    if (!polygon || polygon.length < 3) continue;
    if (size && !touchesImage(polygon, size.width, size.height)) continue;
    drawn.push({ id: r.id, name: r.name, excluded: r.mode === "exclude", polygon, anchor: labelAnchor(polygon) });
  }
  const n = regions.items.length;
  const message = drawn.length
    ? ""
    : `None of the ${n} region(s) drawn on ${ref} falls on this image.`;
  return { state, drawn, message };
}

/** The image's `regions` data once its reference was set to `referenceId` (null: none) in the
 * workspace, before the server has aligned the pair: the regions are placed again only when the
 * alignment job's result comes (the page then reads the image's data anew). */
export function afterPairing(regions, referenceId) {
  if (!regions) return regions;
  if (regions.state === "reference") return regions; // the reference keeps its own frame
  const onto = regions.reference && referenceId === regions.reference.id;
  return { ...regions, state: onto ? "pending" : referenceId ? "other" : "unpaired", matrix: null, reason: "" };
}

function validMatrix(m) {
  return Array.isArray(m) && m.length === 3 && m.every((row) => Array.isArray(row) && row.length === 3 && row.every(Number.isFinite));
}

function notPlacedMessage(state, ref, reason) {
  const lead = "Regions of interest not shown: ";
  if (state === "pending") return `${lead}this image is being aligned with ${ref}, which they are drawn on.`;
  if (state === "failed") return `${lead}this image's alignment with ${ref}, which they are drawn on, failed${reason ? ` (${reason})` : ""}.`;
  if (state === "other") return `${lead}this image is compared with another reference, not with ${ref}, which they are drawn on.`;
  return `${lead}this image is not aligned with ${ref}, which they are drawn on (compare it with ${ref} in the Reference panel to see them).`;
}
