/* The models page's threshold card: where the active anomaly model's held-out normal images
 * peak (a histogram of their calibrated peak scores), the model's threshold (0.5) and the
 * project's "score from", and what that setting is expected to do: the share of normal images
 * that would get a suggestion (the calibration's fit of the peaks, tabulated by the worker) and,
 * once suggestions of that model are reviewed, how many accepted and rejected ones it keeps.
 * Once images are reviewed (confirmed normal, or with approved labels) it also fetches, after
 * the page, what each threshold on a grid does on them from the model's stored heatmaps
 * (effect_url: false suggestions per normal image and labelled defects found) and adds a
 * sentence and a second small chart, false suggestions per normal image against recall.
 * It follows the settings form's threshold field as it is typed (the grid is read between its
 * rows, so typing needs no request).
 *
 * A classic script like app.js: it sets window.LoupeThresholds. The helpers above init() use no
 * DOM; tests/js/thresholds.test.mjs runs them in Node.
 */
(function () {
  "use strict";

  /* The expected share at threshold t, linear between the table's [t, share] rows (sorted by
     t); the first or last row's share outside them. */
  function shareAt(table, t) {
    if (!table || !table.length || !isFinite(t)) return null;
    if (t <= table[0][0]) return table[0][1];
    for (let i = 1; i < table.length; i++) {
      const [t1, s1] = table[i];
      if (t <= t1) {
        const [t0, s0] = table[i - 1];
        return s0 + ((s1 - s0) * (t - t0)) / (t1 - t0);
      }
    }
    return table[table.length - 1][1];
  }

  /* Counts per bin of `width` from 0 to xMax; values above xMax go to the last bin. */
  function bins(values, width, xMax) {
    const n = Math.max(1, Math.round(xMax / width));
    const out = new Array(n).fill(0);
    for (const v of values) {
      if (!isFinite(v)) continue;
      out[Math.min(n - 1, Math.max(0, Math.floor(v / width)))] += 1;
    }
    return out;
  }

  function percent(share) {
    if (share == null) return "?";
    const p = 100 * share;
    if (p < 0.1) return "under 0.1 %";
    return (p < 10 ? p.toFixed(1) : Math.round(p)) + " %";
  }

  const W = 420;
  const H = 150;
  const PAD = { left: 30, right: 10, top: 14, bottom: 34 };
  const BIN = 0.1;

  /* The histogram: bars of the normal images' peaks, a dashed line at the model's threshold
     (0.5), a solid one at the project's, and the reviewed suggestions' scores as ticks under
     the axis (accepted, rejected). */
  function histogramSvg(opts) {
    const peaks = opts.peaks || [];
    const accepted = opts.accepted || [];
    const rejected = opts.rejected || [];
    const top = Math.max(1, opts.threshold || 0, ...peaks, ...accepted, ...rejected);
    const xMax = Math.min(5, Math.ceil(top * 1.1 * 2) / 2);
    const counts = bins(peaks, BIN, xMax);
    const yMax = Math.max(1, ...counts);
    const pw = W - PAD.left - PAD.right;
    const ph = H - PAD.top - PAD.bottom;
    const sx = (x) => +(PAD.left + (Math.min(x, xMax) / xMax) * pw).toFixed(1);
    const bw = (BIN / xMax) * pw;
    const parts = [
      `<svg xmlns="http://www.w3.org/2000/svg" class="histogram" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="Peak scores of ${peaks.length} held-out normal images">`,
      `<line class="axis" x1="${PAD.left}" y1="${PAD.top + ph}" x2="${PAD.left + pw}" y2="${PAD.top + ph}"/>`,
      `<text class="tick" x="${PAD.left - 4}" y="${PAD.top + 4}" text-anchor="end">${yMax}</text>`,
    ];
    counts.forEach((c, i) => {
      if (!c) return;
      const h = +((c / yMax) * ph).toFixed(1);
      parts.push(`<rect class="bar" data-count="${c}" x="${(PAD.left + i * bw).toFixed(1)}" y="${(PAD.top + ph - h).toFixed(1)}" width="${Math.max(1, bw - 1).toFixed(1)}" height="${h}"/>`);
    });
    for (let x = 0; x <= xMax + 1e-9; x += xMax > 2.5 ? 1 : 0.5) {
      parts.push(`<text class="tick" x="${sx(x)}" y="${PAD.top + ph + 12}" text-anchor="middle">${+x.toFixed(1)}</text>`);
    }
    const tickY = PAD.top + ph + 16;
    for (const [cls, values] of [["accepted", accepted], ["rejected", rejected]]) {
      for (const v of values) parts.push(`<line class="tick-${cls}" x1="${sx(v)}" y1="${tickY}" x2="${sx(v)}" y2="${tickY + 8}"/>`);
    }
    parts.push(`<line class="model-threshold" x1="${sx(0.5)}" y1="${PAD.top}" x2="${sx(0.5)}" y2="${PAD.top + ph}"/>`);
    if (opts.threshold != null && isFinite(opts.threshold)) {
      parts.push(`<line class="project-threshold" data-threshold="${opts.threshold}" x1="${sx(opts.threshold)}" y1="${PAD.top - 4}" x2="${sx(opts.threshold)}" y2="${PAD.top + ph}"/>`);
    }
    parts.push("</svg>");
    return parts.join("");
  }

  /* The reviewed images' curve at threshold t: false suggestions per good image, labels found
     and recall, linear between the grid's rows (sorted by threshold); null outside the grid
     (the stored heatmaps stop at a score of 1) or without rows. */
  function effectAt(effect, t) {
    const rows = (effect && effect.curve) || [];
    if (!rows.length || !isFinite(t)) return null;
    const eps = 1e-9;
    if (t < rows[0].threshold - eps || t > rows[rows.length - 1].threshold + eps) return null;
    const lerp = (a, b, f) => (a == null || b == null ? null : a + (b - a) * f);
    for (let i = 0; i < rows.length; i++) {
      const hi = rows[i];
      if (t <= hi.threshold + eps) {
        const lo = i ? rows[i - 1] : hi;
        const f = hi.threshold > lo.threshold ? Math.max(0, (t - lo.threshold) / (hi.threshold - lo.threshold)) : 1;
        return {
          threshold: t,
          false_per_good_image: lerp(lo.false_per_good_image, hi.false_per_good_image, f),
          found: lerp(lo.found, hi.found, f),
          recall: lerp(lo.recall, hi.recall, f),
          // counts per category are not interpolated: the grid row at or above t (what t finds
          // at least), so that they add up to its total
          row: hi,
        };
      }
    }
    return null;
  }

  function perImage(x) {
    if (x == null) return "?";
    return x < 1 ? (+x.toFixed(2)).toString() : (+x.toFixed(1)).toString();
  }

  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
  }

  /* The sentence on the reviewed images at threshold t (null when none were reviewed). */
  function effectLine(effect, t) {
    if (!effect || !effect.images_used) return null;
    const g = effect.good_images;
    const d = effect.defect_images;
    const head =
      `On ${plural(effect.images_used, "reviewed image", "reviewed images")} (${g} normal, ${d} with defects` +
      `${effect.capped ? `; the ${effect.limit} most recently reviewed` : ""})`;
    const at = effectAt(effect, t);
    if (!at) {
      const rows = effect.curve || [];
      const range = rows.length ? ` ${rows[0].threshold} to ${rows[rows.length - 1].threshold}` : "";
      return `${head}: the model's stored heatmaps show scores${range} only (they stop at 1), so this score's effect on them is unknown.`;
    }
    const parts = [];
    if (g) parts.push(`about ${perImage(at.false_per_good_image)} false suggestion${at.false_per_good_image === 1 ? "" : "s"} per normal image`);
    if (effect.labels) {
      // per category when there are several: which kind of defect a higher threshold loses
      // (then the counts are the grid row's at or above the score, not interpolated: they add up)
      const kinds = Object.entries(effect.labels_by_category || {});
      const byCategory = at.row.found_by_category || {};
      const listed = kinds.length > 1 && at.row.found_by_category;
      const each = listed
        ? ` (${kinds.map(([name, n]) => `${name} ${byCategory[name] || 0} of ${n}`).join(", ")})`
        : "";
      const found = listed ? at.row.found : Math.round(at.found);
      parts.push(`${found} of ${effect.labels} labelled defects found${each}`);
    }
    if (!parts.length) return null;
    return `${head}: ${parts.join(" and ")} from this score.`;
  }

  const CW = 260;
  const CH = 150;
  const CPAD = { left: 34, right: 10, top: 10, bottom: 30 };

  /* The second chart: recall of the labelled defects (up) against false suggestions per normal
     image (across), one point per grid threshold joined by a line, a dot at threshold t. Empty
     without both normal images and labels. */
  function curveSvg(effect, t) {
    const rows = ((effect && effect.curve) || []).filter((r) => r.false_per_good_image != null && r.recall != null);
    if (!rows.length) return "";
    const xMax = Math.max(1, ...rows.map((r) => r.false_per_good_image));
    const pw = CW - CPAD.left - CPAD.right;
    const ph = CH - CPAD.top - CPAD.bottom;
    const sx = (x) => +(CPAD.left + (x / xMax) * pw).toFixed(1);
    const sy = (y) => +(CPAD.top + ph - y * ph).toFixed(1);
    const at = effectAt(effect, t);
    const label =
      `False suggestions per normal image against recall of ${effect.labels} labelled defects on ${effect.images_used} reviewed images` +
      (at ? `; from ${+t.toFixed(3)}: ${perImage(at.false_per_good_image)} per image, ${Math.round(100 * at.recall)} % found` : "");
    const points = rows.map((r) => `${sx(r.false_per_good_image)},${sy(r.recall)}`).join(" ");
    const parts = [
      `<svg xmlns="http://www.w3.org/2000/svg" class="histogram effect-curve" viewBox="0 0 ${CW} ${CH}" width="${CW}" height="${CH}" role="img" aria-label="${label}">`,
      `<line class="axis" x1="${CPAD.left}" y1="${CPAD.top + ph}" x2="${CPAD.left + pw}" y2="${CPAD.top + ph}"/>`,
      `<line class="axis" x1="${CPAD.left}" y1="${CPAD.top}" x2="${CPAD.left}" y2="${CPAD.top + ph}"/>`,
      `<text class="tick" x="${CPAD.left - 4}" y="${CPAD.top + 4}" text-anchor="end">100 %</text>`,
      `<text class="tick" x="${CPAD.left - 4}" y="${CPAD.top + ph}" text-anchor="end">0</text>`,
      `<text class="tick" x="${CPAD.left}" y="${CPAD.top + ph + 12}" text-anchor="middle">0</text>`,
      `<text class="tick" x="${CPAD.left + pw}" y="${CPAD.top + ph + 12}" text-anchor="end">${+xMax.toFixed(2)}</text>`,
      `<text class="tick" x="${CPAD.left + pw / 2}" y="${CPAD.top + ph + 24}" text-anchor="middle">false suggestions per normal image</text>`,
      `<polyline class="curve" points="${points}" fill="none" stroke="#5b7db8" stroke-width="1.5"/>`,
    ];
    for (const r of rows) {
      parts.push(`<circle class="grid-point" data-threshold="${r.threshold}" cx="${sx(r.false_per_good_image)}" cy="${sy(r.recall)}" r="1.8" fill="#5b7db8"><title>${r.threshold}: ${perImage(r.false_per_good_image)} per image, ${Math.round(100 * r.recall)} %</title></circle>`);
    }
    if (at && at.false_per_good_image != null && at.recall != null) {
      parts.push(`<circle class="current-threshold" data-threshold="${t}" cx="${sx(at.false_per_good_image)}" cy="${sy(at.recall)}" r="4.5" fill="none" stroke="#d9480f" stroke-width="2"/>`);
    }
    parts.push("</svg>");
    return parts.join("");
  }

  /* What a threshold t does, in sentences (the reviewed part only where there are reviews). */
  function effectText(data, t, reviewed, effect) {
    const peaks = data.peaks || [];
    const reach = peaks.filter((p) => p >= t).length;
    const lines = [
      `From a score of ${+t.toFixed(3)}: about ${percent(shareAt(data.expected_share, t))} of normal images would get a suggestion ` +
        `(fitted to the peaks of ${peaks.length} held-out normal image${peaks.length === 1 ? "" : "s"}; ${reach} of them reach it).`,
    ];
    if (data.unlike_normals) {
      lines.push(`${data.unlike_normals} held-out image${data.unlike_normals === 1 ? " peaks" : "s peak"} far above the rest (another light or batch?): the thresholds follow the others, so images like those will get suggestions.`);
    }
    if (data.on_training_images) {
      lines.push("These are the training images themselves (too few to hold any out): unseen normal images peak higher, so expect more.");
    } else if (peaks.length < 10) {
      lines.push(`${peaks.length} held-out image${peaks.length === 1 ? " is" : "s are"} few for a fit: mark more images normal and retrain for a firmer estimate.`);
    }
    if (reviewed && reviewed.accepted.length + reviewed.rejected.length) {
      const a = reviewed.accepted.filter((s) => s >= t).length;
      const r = reviewed.rejected.filter((s) => s >= t).length;
      lines.push(
        `Reviewed suggestions of v${data.version}: ${a} of ${reviewed.accepted.length} accepted and ${r} of ${reviewed.rejected.length} rejected score at least this.`,
      );
    }
    const onReviewed = effectLine(effect, t);
    if (onReviewed) lines.push(onReviewed);
    if (data.verdict_share != null) {
      // the verdict has its own threshold, which the score from does not move
      const few = !data.on_training_images && data.flag_rate && data.verdict_share > 1.5 * data.flag_rate;
      lines.push(
        `The verdict (an image flagged anomalous; NG at a station from its unsure margin above) has its own threshold: about ${percent(data.verdict_share)} of normal images would reach it` +
          (data.flag_rate ? ` (flag rate asked: ${percent(data.flag_rate)}${few ? "; few held-out images make it higher" : ""}).` : "."),
      );
    }
    return lines;
  }

  async function scores(url) {
    const res = await fetch(url, { credentials: "same-origin" });
    if (!res.ok) throw new Error(res.status + " " + res.statusText);
    const body = await res.json();
    return (body.results || body).map((s) => s.score);
  }

  function init() {
    const card = document.getElementById("threshold-card");
    const source = document.getElementById("calibration-data");
    if (!card || !source) return;
    const data = JSON.parse(source.textContent);
    const chart = card.querySelector(".threshold-chart");
    const text = card.querySelector(".threshold-effect");
    const input = document.querySelector("#inspection-form input[name=threshold]");
    const curve = card.querySelector(".threshold-curve");
    let reviewed = null;
    let effect = null;
    function draw() {
      const typed = input ? Number(input.value) : NaN;
      const t = isFinite(typed) && typed > 0 ? typed : data.threshold;
      chart.innerHTML = histogramSvg({
        peaks: data.peaks,
        threshold: t,
        accepted: reviewed ? reviewed.accepted : [],
        rejected: reviewed ? reviewed.rejected : [],
      });
      text.innerHTML = "";
      if (curve) curve.innerHTML = effect && effect.images_used ? curveSvg(effect, t) : "";
      for (const line of effectText(data, t, reviewed, effect)) {
        const p = document.createElement("p");
        p.textContent = line;
        text.appendChild(p);
      }
      card.dataset.threshold = String(t);
    }
    draw();
    if (input) input.addEventListener("input", draw);
    const base = data.suggestions_url + "?model_version=" + data.model_version + "&limit=1000&status=";
    Promise.all([scores(base + "accepted"), scores(base + "rejected")])
      .then(([accepted, rejected]) => {
        reviewed = { accepted, rejected };
        draw();
        card.dataset.reviewed = String(accepted.length + rejected.length);
      })
      .catch(() => { card.dataset.reviewed = "unavailable"; });
    if (data.effect_url) {
      fetch(data.effect_url, { credentials: "same-origin" })
        .then((res) => {
          if (!res.ok) throw new Error(res.status + " " + res.statusText);
          return res.json();
        })
        .then((body) => {
          effect = body;
          draw();
          card.dataset.effect = String(body.images_used);
        })
        .catch(() => { card.dataset.effect = "unavailable"; });
    }
  }

  window.LoupeThresholds = { shareAt, bins, percent, histogramSvg, effectAt, effectLine, curveSvg, effectText, init };
})();
