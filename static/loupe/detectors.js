/* The models page's detectors: train one from a frozen dataset version (the server's proposal,
 * its reasons and a time estimate, then the job's progress bar), run the active one over images,
 * and each detector version's training curves (loss per epoch, mAP50 per evaluated epoch) as
 * inline SVG, redrawn every few seconds while a version trains.
 *
 * A classic script like app.js: it sets window.LoupeDetectors. The helpers above init() use no
 * DOM; tests/js/detectors.test.mjs runs them in Node.
 */
(function () {
  "use strict";

  const POLL_MS = 4000;

  /* "about 12 min", "about 2 h 5 min", "under a minute"; "" when unknown. */
  function humanDuration(seconds) {
    if (seconds == null || !isFinite(seconds) || seconds < 0) return "";
    if (seconds < 60) return "under a minute";
    const minutes = Math.round(seconds / 60);
    if (minutes < 60) return "about " + minutes + " min";
    const hours = Math.floor(minutes / 60);
    if (hours < 48) return "about " + hours + " h" + (minutes % 60 ? " " + (minutes % 60) + " min" : "");
    const days = Math.floor(hours / 24);
    return "about " + days + " days" + (hours % 24 ? " " + (hours % 24) + " h" : "");
  }

  /* The smallest of 1, 2, 2.5, 5 x 10^k at or above v (an axis' top). */
  function niceCeil(v) {
    if (!(v > 0)) return 1;
    const scale = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * scale >= v * (1 - 1e-9)) return m * scale;
    return 10 * scale;
  }

  function label(v) {
    if (v === 0) return "0";
    if (Math.abs(v) >= 100) return String(Math.round(v));
    return String(Number(v.toPrecision(3)));
  }

  const W = 230;
  const H = 120;
  const PAD = { left: 36, right: 10, top: 20, bottom: 26 };

  /* One small chart: `points` are [x, y] with x in 0..xMax (epochs) and y >= 0; a polyline with
     a dot per point (a single point is a dot), the top and zero of each axis labelled; `marks`
     ([x, text], ...) draw a dashed vertical line at x, titled with the text. */
  function chartSvg(opts) {
    const points = (opts.points || []).filter(([x, y]) => isFinite(x) && isFinite(y) && y != null);
    const xMax = Math.max(1, opts.xMax || 1, ...points.map(([x]) => x));
    const yMax = opts.yMax || niceCeil(Math.max(0, ...points.map(([, y]) => y)));
    const pw = W - PAD.left - PAD.right;
    const ph = H - PAD.top - PAD.bottom;
    const sx = (x) => +(PAD.left + (x / xMax) * pw).toFixed(1);
    const sy = (y) => +(PAD.top + ph - (Math.min(y, yMax) / yMax) * ph).toFixed(1);
    const parts = [
      `<svg xmlns="http://www.w3.org/2000/svg" class="curve" data-series="${opts.series}" data-points="${points.length}" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${opts.title}">`,
      `<text class="title" x="${PAD.left}" y="13">${opts.title}</text>`,
      `<line class="axis" x1="${PAD.left}" y1="${PAD.top}" x2="${PAD.left}" y2="${PAD.top + ph}"/>`,
      `<line class="axis" x1="${PAD.left}" y1="${PAD.top + ph}" x2="${PAD.left + pw}" y2="${PAD.top + ph}"/>`,
      `<text class="tick" x="${PAD.left - 4}" y="${PAD.top + 4}" text-anchor="end">${label(yMax)}</text>`,
      `<text class="tick" x="${PAD.left - 4}" y="${PAD.top + ph + 3}" text-anchor="end">0</text>`,
      `<text class="tick" x="${PAD.left}" y="${H - 12}" text-anchor="middle">0</text>`,
      `<text class="tick" x="${PAD.left + pw}" y="${H - 12}" text-anchor="middle">${label(xMax)}</text>`,
      `<text class="tick" x="${PAD.left + pw / 2}" y="${H - 3}" text-anchor="middle">epoch</text>`,
    ];
    (opts.marks || []).filter(([x]) => isFinite(x) && x > 0 && x <= xMax).forEach(([x, text]) => {
      parts.push(`<line class="mark" x1="${sx(x)}" y1="${PAD.top}" x2="${sx(x)}" y2="${PAD.top + ph}" stroke-dasharray="3 2"><title>${text}</title></line>`);
    });
    if (!points.length) {
      parts.push(`<text class="empty" x="${PAD.left + pw / 2}" y="${PAD.top + ph / 2}" text-anchor="middle">${opts.empty || "no figures yet"}</text>`);
    } else {
      if (points.length > 1) {
        parts.push(`<polyline class="line" points="${points.map(([x, y]) => sx(x) + "," + sy(y)).join(" ")}"/>`);
      }
      const dots = points.length <= 40 ? points : points.slice(-1); // many epochs: mark the last
      dots.forEach(([x, y]) => {
        parts.push(`<circle class="dot" cx="${sx(x)}" cy="${sy(y)}" r="2.5"><title>epoch ${label(x)}: ${label(y)}</title></circle>`);
      });
    }
    parts.push("</svg>");
    return parts.join("");
  }

  /* Both curves of a detector's history (the per-epoch dicts of metrics.history): training loss
     per epoch, and mAP50 on val for the epochs that were evaluated. `epochs` is the planned
     total, so a version still training shows how far it is. */
  function curvesSvg(history, epochs) {
    const rows = (history || []).map((h, i) => ({ ...h, epoch: h.epoch != null ? Number(h.epoch) : i + 1 }));
    const num = (v) => (v == null || v === "" ? NaN : Number(v));
    const loss = rows.map((h) => [h.epoch, num(h.loss)]).filter(([, y]) => isFinite(y));
    const map50 = rows.map((h) => [h.epoch, num(h.map50)]).filter(([, y]) => isFinite(y) && y >= 0);
    const xMax = Math.max(epochs || 0, ...rows.map((h) => h.epoch), 1);
    const top = Math.max(0, ...map50.map(([, y]) => y));
    // networks trained one after the other (the two-stage detector): where each next one starts
    const marks = rows
      .filter((h, i) => h.network != null && i > 0 && rows[i - 1].network != null && h.network !== rows[i - 1].network)
      .map((h) => [h.epoch - 0.5, "network " + h.network + " starts"]);
    return chartSvg({ series: "loss", title: "training loss", points: loss, xMax, marks })
      + chartSvg({
        marks,
        series: "map50",
        title: "mAP50 on val",
        points: map50,
        xMax,
        yMax: Math.min(1, niceCeil(Math.max(top, 0.05))),
        empty: "not evaluated yet",
      });
  }

  /* One line about where a training version is: "epoch 3 of 10 · loss 1.23 · mAP50 0.412". */
  function progressLine(history, epochs) {
    const rows = history || [];
    if (!rows.length) return "waiting for the first epoch";
    const last = rows[rows.length - 1];
    const evaluated = rows.filter((h) => h.map50 != null).pop();
    let text = "epoch " + (last.epoch != null ? last.epoch : rows.length) + (epochs ? " of " + epochs : "");
    if (last.network != null) text += " (network " + last.network + ")";
    if (last.loss != null) text += " · loss " + label(Number(last.loss));
    if (evaluated) text += " · mAP50 " + Number(evaluated.map50).toFixed(3);
    return text;
  }

  // ---------------------------------------------------------------- the page (browser only)

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    });
    (children || []).forEach((c) => node.appendChild(typeof c === "string" ? document.createTextNode(c) : c));
    return node;
  }

  const json = (body) => ({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });

  const follow = (out, jobId, done) => window.Loupe.follow(out, jobId, done);

  function initTraining(box) {
    const api = window.Loupe.api;
    const select = document.getElementById("detector-dataset");
    const proposalBox = document.getElementById("detector-proposal");
    const form = document.getElementById("detector-form");
    const out = document.getElementById("detector-status");
    const estimate = document.getElementById("detector-estimate");
    const backbone = form.elements.backbone;
    let proposal = null;
    let asked = 0;  // the latest estimate asked for (answers may come back out of order)
    let busy = false;

    // the two-stage change detector takes epochs only (no backbone, size, slices or batch)
    const twoStage = () => form.elements.reference.value === "two-stage";
    let hasNegatives = false;  // the version's train split has images without a box
    let hasPairs = false;  // some labelled train images have an aligned reference
    const ppyoloeOnly = () => [
      ...["backbone", "input_size", "slice", "batch_size", "rotate"].map((n) => form.elements[n].closest("label")),
      ...(hasNegatives ? [form.elements.negatives.closest("label")] : []),
      ...(hasPairs ? [form.elements.transplant.closest("label")] : []),
      form.querySelector("details.advanced"),
    ];
    const twoStageOnly = () => [form.elements.networks.closest("label")];
    const showKind = () => {
      ppyoloeOnly().forEach((node) => { node.hidden = twoStage(); });
      twoStageOnly().forEach((node) => { node.hidden = !twoStage(); });
    };

    const params = () => {
      const f = form.elements;
      if (twoStage()) return { reference: "two-stage", epochs: Number(f.epochs.value), networks: Number(f.networks.value) };
      const p = {
        backbone: f.backbone.value,
        input_size: Number(f.input_size.value),
        slice: f.slice.checked,
        overlap: Number(f.overlap.value),
        epochs: Number(f.epochs.value),
        batch_size: Number(f.batch_size.value),
        reference: f.reference.value,
        rotate: f.rotate.checked,
        transplant: f.transplant.checked,
        // a percentage in the form, a share for the server; empty: every one of them
        negatives: f.negatives.value === "" ? null : Number(f.negatives.value) / 100,
      };
      if (f.iterations_per_epoch.value !== "") p.iterations_per_epoch = Number(f.iterations_per_epoch.value);
      return p;
    };

    // The server knows each backbone's speed here: ask it what the edited form would take
    // (the same checks as training: a refused value says why before anything is queued).
    const showEstimate = async () => {
      if (!proposal) return;
      const mine = ++asked;
      const query = new URLSearchParams(Object.entries(params()).map(([k, v]) => [k, v === null ? "all" : String(v)]));
      let answer;
      try {
        answer = await api(box.dataset.datasetsUrl + select.value + "/detector/?" + query.toString());
      } catch (err) {
        if (mine === asked) estimate.textContent = "Not possible: " + err.message;
        return;
      }
      if (mine !== asked) return;
      estimate.textContent = estimateLine(answer);
    };
    const estimateLine = (answer) => {
      const seconds = humanDuration(answer.estimate_seconds);
      return seconds
        ? "Training time: about " + seconds + ", " + answer.estimate_basis + "."
        : "Training time: no estimate for these settings.";
    };

    const facts = (f) => {
      const dl = el("dl", { class: "facts" });
      const add = (k, v) => { dl.appendChild(el("dt", { text: k })); dl.appendChild(el("dd", { text: v })); };
      add("Images", f.train_images + " train" + (f.train_negatives ? " (" + f.train_negatives + " without a box)" : "") + ", " + f.val_images + " val");
      add("Labelled boxes (train)", String(f.train_boxes));
      if (f.median_long_side != null) add("Image size", f.median_long_side + " px long side (median)");
      if (f.median_box_side != null) add("Defect size", f.median_box_side + " px short side (median)");
      if (f.train_paired) add("With a reference", f.train_labelled_paired + " of " + f.train_labelled + " labelled train images (aligned)");
      const rows = Object.entries(f.per_category || {}).map(([name, n]) => el("tr", {}, [
        el("td", { text: name }), el("td", { text: String(n.train) }), el("td", { text: String(n.val) }), el("td", { text: String(n.test) }),
      ]));
      const table = el("table", { class: "small-table" }, [
        el("thead", {}, [el("tr", {}, ["Category", "train", "val", "test"].map((t) => el("th", { text: t })))]),
        el("tbody", {}, rows),
      ]);
      return [dl, table];
    };

    const load = async () => {
      const number = select.value;
      proposal = null;
      form.hidden = true;
      proposalBox.hidden = false;
      proposalBox.replaceChildren(el("p", { class: "hint", text: "Reading dataset v" + number + "…" }));
      try {
        const p = await api(box.dataset.datasetsUrl + number + "/detector/");
        if (select.value !== number) return; // another version was chosen meanwhile
        proposal = p;
        if (!backbone.options.length) {
          Object.entries(p.backbones).forEach(([value, text]) => backbone.appendChild(el("option", { value, text: value + " — " + text })));
        }
        const reasons = el("ul", { class: "reasons-list" }, p.reasons.map((r) => el("li", { text: r })));
        const parts = [reasons, ...facts(p.facts)];
        if (!p.facts.val_images) {
          parts.push(el("p", { class: "hint warn", text: "This version has no val images: the detector trains, but no mAP can be measured. Freeze a version with a val split to compare detectors." }));
        }
        proposalBox.replaceChildren(...parts);
        if (!p.facts.train_boxes) {  // the server would refuse it: say why instead of a form
          proposalBox.appendChild(el("p", { class: "status-failed", text: "Dataset v" + number + " has no labels in its train split: a detector has nothing to learn. Freeze a version with approved labels first." }));
          return;
        }
        const f = form.elements;
        f.backbone.value = p.params.backbone;
        f.input_size.value = p.params.input_size;
        f.slice.checked = !!p.params.slice;
        f.overlap.value = p.params.overlap;
        f.epochs.value = p.params.epochs;
        if (p.params.networks) f.networks.value = p.params.networks;
        f.batch_size.value = p.params.batch_size;
        f.reference.value = p.params.reference || "none";
        f.rotate.checked = Boolean(p.params.rotate);
        f.transplant.checked = Boolean(p.params.transplant);
        f.negatives.value = p.params.negatives === null || p.params.negatives === undefined ? "" : Math.round(p.params.negatives * 100);
        // offered where the train split has images without a box (normal images, references)
        hasNegatives = p.facts.train_negatives > 0;
        f.negatives.closest("label").hidden = !hasNegatives;
        // comparing with references, and copying defects along them, are offered when some
        // labelled train images have an aligned one
        hasPairs = p.facts.train_labelled_paired > 0;
        f.reference.closest("label").hidden = !hasPairs;
        f.transplant.closest("label").hidden = !hasPairs;
        showKind();
        f.iterations_per_epoch.value = "";
        form.querySelector("button[type=submit]").textContent = "Train a detector on dataset v" + number;
        asked++;  // the proposal's own estimate: shown with the form, no second request
        estimate.textContent = estimateLine(p);
        form.hidden = false;
      } catch (err) {
        proposalBox.replaceChildren(el("p", { class: "status-failed", text: "No proposal for dataset v" + number + ": " + err.message }));
      }
    };

    (async () => {
      let versions;
      try {
        versions = (await api(box.dataset.datasetsUrl + "?limit=100")).results;
      } catch (err) {
        select.replaceChildren();
        out.textContent = "The dataset versions could not be read: " + err.message;
        return;
      }
      select.replaceChildren(...versions.map((v) => el("option", {
        value: String(v.number),
        text: "v" + v.number + (v.note ? " — " + v.note : "") + " (" + (v.counts.images || 0) + " images, " + (v.counts.shapes || 0) + " labels)",
      })));
      if (!versions.length) {
        select.closest("label").hidden = true;
        const link = el("a", { href: box.dataset.datasetsPage, text: "Datasets page" });
        proposalBox.hidden = false;
        proposalBox.replaceChildren(el("p", { id: "no-dataset", class: "hint" }, [
          "A detector learns from a frozen dataset version, and this project has none yet: freeze its approved labels on the ", link, " first.",
        ]));
        return;
      }
      select.addEventListener("change", load);
      load();
    })();

    let typing;
    form.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(showEstimate, 250); });
    // each kind of detector has its own proposed epochs (the server's): a kind chosen takes them
    form.elements.reference.addEventListener("change", async () => {
      if (!proposal) return;
      const kind = form.elements.reference.value;
      showKind();
      try {
        const p = await api(box.dataset.datasetsUrl + select.value + "/detector/?reference=" + encodeURIComponent(kind));
        if (form.elements.reference.value === kind) {
          form.elements.epochs.value = p.params.epochs;
          if (p.params.networks) form.elements.networks.value = p.params.networks;
          showEstimate();
        }
      } catch (err) {
        estimate.textContent = "Not possible: " + err.message;
      }
    });
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (busy) return;
      busy = true;
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const v = await api(box.dataset.datasetsUrl + select.value + "/detector/", json({ params: params(), activate: true }));
        const job = await follow(out, v.job);
        if (job.status === "succeeded") { window.location.reload(); return; }
        out.appendChild(el("a", { href: window.location.href, text: " show detector v" + v.number + " in the table ↻" }));
        busy = false;
        button.disabled = false;
      } catch (err) {
        out.textContent = "Not started: " + err.message;
        busy = false;
        button.disabled = false;
      }
    });
    return { busy: () => busy };
  }

  function initRun(runsUrl) {
    const form = document.getElementById("detect-form");
    if (!form) return;
    const out = document.getElementById("detect-status");
    const button = form.querySelector("button[type=submit]");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      if (button.disabled) return;  // one run per press
      button.disabled = true;
      try {
        const r = await window.Loupe.api(runsUrl, json({ kind: "detector", scope: new FormData(form).get("scope") }));
        follow(out, r.job, (j) => {
          if (j.status === "succeeded") window.location.href = "/runs/" + r.id + "/";
          else button.disabled = false;
        });
      } catch (err) {
        out.textContent = "Not started: " + err.message;
        button.disabled = false;
      }
    });
  }

  /* "12 of 50 new approved labels since detector v2's dataset v3": the retrain trigger's state. */
  function retrainLine(state) {
    if (!state) return "";
    if (state.detector == null) return "No active detector yet: the first one is trained by hand.";
    const since = "since detector v" + state.detector + (state.dataset != null ? "'s dataset v" + state.dataset : "");
    if (state.retrain_after_labels == null) return state.new_labels + " new approved label" + (state.new_labels === 1 ? "" : "s") + " " + since + "; automatic retraining is off.";
    return state.new_labels + " of " + state.retrain_after_labels + " new approved labels " + since + ".";
  }

  function initRetrain(projectUrl) {
    const form = document.getElementById("retrain-form");
    if (!form) return;
    const out = document.getElementById("retrain-status");
    const show = async () => {
      try { out.textContent = retrainLine(await window.Loupe.api(form.dataset.url)); } catch (err) { out.textContent = err.message; }
    };
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const raw = new FormData(form).get("retrain_after_labels");
      const value = raw === "" ? null : Number(raw);
      try {
        await window.Loupe.api(projectUrl, { method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ retrain_after_labels: value }) });
        await show();
        out.textContent = "Saved. " + out.textContent;
      } catch (err) { out.textContent = "Not saved: " + err.message; }
    });
    show();
  }

  /* Curves of every detector row; while one trains, poll and redraw; when it has finished,
     reload (the row's figures are rendered by the server), unless someone is filling a form. */
  function initCurves(modelsUrl, training) {
    const cells = () => document.querySelectorAll("[data-curves]");
    if (!cells().length) return;
    const refresh = async () => {
      let versions;
      try { versions = await window.Loupe.api(modelsUrl); } catch (e) { setTimeout(refresh, POLL_MS); return; }
      let stillTraining = false;
      let finished = false;
      versions.forEach((v) => {
        const cell = document.querySelector('[data-curves="' + v.id + '"]');
        if (!cell || v.kind !== "detector") return;
        const metrics = v.metrics || {};
        const history = metrics.history || [];
        // a two-stage detector of several networks trains each for its epochs, one after the other
        const planned = v.params && v.params.epochs * (v.params.networks || 1);
        // a finished version's axis ends at its last epoch; a training one's at the planned last
        cell.innerHTML = curvesSvg(history, v.status === "training" ? planned : (metrics.epochs || planned));
        cell.dataset.drawn = String(history.length);
        const line = document.querySelector('[data-epoch="' + v.id + '"]');
        if (line && v.status === "training") line.textContent = progressLine(history, planned);
        const row = cell.closest("tr");
        if (row && row.dataset.status === "training") {
          if (v.status === "training") stillTraining = true; else finished = true;
        }
      });
      if (finished) {
        const editing = document.activeElement && document.activeElement.closest("form");
        if (!editing && !(training && training.busy())) { window.location.reload(); return; }
        const status = document.getElementById("detector-status") || document.body;
        if (!document.getElementById("detector-reload")) status.appendChild(el("a", { id: "detector-reload", href: window.location.href, text: " A detector finished: show its figures ↻" }));
      }
      if (stillTraining) setTimeout(refresh, POLL_MS);
    };
    refresh();
  }

  function init() {
    const root = document.getElementById("models-page");
    if (!root) return;
    const box = document.getElementById("detector-train");
    const training = box ? initTraining(box) : null;
    initRun(root.dataset.runsUrl);
    initRetrain(root.dataset.projectUrl);
    initCurves(root.dataset.modelsUrl, training);
  }

  window.LoupeDetectors = { humanDuration, niceCeil, chartSvg, curvesSvg, progressLine, retrainLine, init };
})();
