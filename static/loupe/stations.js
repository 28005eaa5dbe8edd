/* The stations pages: add a station; one station live (polled every second, no reload). */
(function () {
  "use strict";
  const { api, request } = window.Loupe;

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    });
    (children || []).forEach((c) => node.appendChild(c));
    return node;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
    return node;
  }

  /* --- the list: add a station ---------------------------------------------------------- */
  const form = document.getElementById("station-new");
  if (form) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const status = document.getElementById("station-new-status");
      const f = new FormData(form);
      const body = {
        project: Number(form.dataset.project),
        name: f.get("name"),
        source: f.get("source"),
        ok_sample_rate: Number(f.get("ok_sample_rate")),
        unsure_margin: Number(f.get("unsure_margin")),
        sample_quota: Number(f.get("sample_quota")),
        start_with_loupe: f.get("start_with_loupe") === "on",
      };
      const res = await request("POST", form.dataset.url, body);
      if (res.status === 201) {
        window.location.href = "/stations/" + res.body.id + "/";
        return;
      }
      const b = res.body || {};
      status.textContent = b.error || Object.entries(b).map(([k, v]) => k + ": " + v).join("; ") || "Not added (" + res.status + ")";
    });
  }

  /* --- one station, live ---------------------------------------------------------------- */
  const live = document.getElementById("station-live");
  if (!live) return;
  const $ = (id) => document.getElementById(id);
  const STATUS = { running: "Running", waiting: "Waiting for the source", paused: "Paused", failed: "Failed", stopped: "Not running" };
  let shownKey = null;
  let enabled = null;

  function pct(x) { return x === null || x === undefined ? "—" : (x * 100).toFixed(1) + " %"; }

  function drawFrame(d) {
    const latest = d.latest || {};
    if (!latest.key || latest.key === shownKey) return;
    shownKey = latest.key;
    const img = $("st-frame");
    img.src = live.dataset.frame + "?k=" + encodeURIComponent(latest.key);
    const verdict = $("st-verdict");
    verdict.textContent = (latest.verdict || "").toUpperCase() + (latest.score === null || latest.score === undefined ? "" : ": " + latest.score.toFixed(2));
    verdict.className = "verdict " + (latest.verdict || "");
    const boxes = $("st-regions");
    boxes.innerHTML = "";
    if (latest.width && latest.height) {
      boxes.setAttribute("viewBox", "0 0 " + latest.width + " " + latest.height);
      (latest.regions || []).forEach((r) => {
        const [x, y, w, h] = r.box;
        boxes.appendChild(svg("rect", { x, y, width: w, height: h, class: "region" }));
      });
    }
    $("st-frame-caption").textContent = latest.key + " · " + latest.latency_ms + " ms";
  }

  function drawPlot(rows) {
    const plot = $("st-plot");
    plot.innerHTML = "";
    if (!rows.length) return;
    const max = Math.max(1, ...rows.map((r) => r.ok + r.ng + r.unsure));
    const w = 600 / Math.max(rows.length, 60);
    rows.forEach((r, i) => {
      let y = 120;
      [["ok", r.ok], ["unsure", r.unsure], ["ng", r.ng]].forEach(([kind, n]) => {
        const h = (n / max) * 116;
        y -= h;
        if (n) plot.appendChild(svg("rect", { x: i * w, y, width: Math.max(w - 1, 1), height: h, class: "bar " + kind }));
      });
    });
  }

  let ngShown = null;
  function drawNg(items) {
    const key = JSON.stringify(items);
    if (key === ngShown) return; // unchanged: keep the thumbnails as they are
    ngShown = key;
    const list = $("st-ng");
    list.innerHTML = "";
    items.forEach((n) => {
      const label = n.key + " · " + (n.score === null ? "" : n.score.toFixed(2)) + " · " + n.regions + " region" + (n.regions === 1 ? "" : "s");
      const link = el("a", n.image ? { href: "/images/" + n.image + "/" } : {}, [el("span", { text: label })]);
      if (n.image) {
        // the frame's thumbnail (made by a worker) with the station's heatmap over it, coloured
        // as in the workspace; without a thumbnail yet, the heatmap alone says where
        const box = el("span", { class: "ng-thumb" });
        const thumb = el("img", { src: "/api/images/" + n.image + "/thumbnail/", alt: "", class: "thumb", loading: "lazy" });
        thumb.addEventListener("error", () => thumb.remove());
        box.appendChild(thumb);
        const grey = new Image();
        grey.addEventListener("load", () => {
          box.appendChild(el("img", { src: window.LoupeOverlay.colormap(grey), alt: "heatmap of " + n.key, class: "heat" }));
        });
        grey.src = "/api/images/" + n.image + "/heatmap.png";
        link.prepend(box);
      }
      list.appendChild(el("li", { class: "ng-frame" }, [link]));
    });
    if (!items.length) list.appendChild(el("li", { class: "hint", text: "None yet." }));
  }

  function draw(d, plot) {
    $("st-status").textContent = STATUS[d.status] || d.status;
    $("st-status").className = "badge status-" + d.status;
    const c = d.counts;
    $("st-total").textContent = c.total;
    $("st-counts").textContent = c.ok + " / " + c.ng + " / " + c.unsure + " / " + c.failed;
    $("st-yield").textContent = pct(d.yield);
    $("st-fps").textContent = d.frames_per_s === null ? "—" : d.frames_per_s + " frames/s";
    $("st-latency").textContent = d.latency_ms.p50 === null ? "—" : d.latency_ms.p50 + " / " + d.latency_ms.p95 + " ms";
    $("st-skipped").textContent = d.skipped;
    $("st-sampled").textContent = c.sampled;
    $("st-message").textContent = d.message || "";
    enabled = d.enabled;
    const toggle = $("st-toggle");
    if (toggle) toggle.textContent = enabled ? "Pause" : "Resume";
    drawFrame(d);
    if (plot) drawPlot(d.per_minute);
    drawNg(d.last_ng);
    const events = $("st-events");
    events.innerHTML = "";
    d.events.forEach((e) => {
      const gap = e.gap_s ? " (no frames for " + e.gap_s.toFixed(1) + " s)" : "";
      events.appendChild(el("li", { text: e.at.replace("T", " ").slice(0, 19) + " · " + e.kind + " · " + e.message + gap }));
    });
  }

  /* every second the state and the counts; every tenth time the per-minute plot too (the
     database counts an hour of rows for it) */
  let polls = 0;
  async function poll() {
    const plot = polls % 10 === 0;
    polls += 1;
    try {
      draw(await api(live.dataset.live + "?minutes=" + (plot ? 60 : 0)), plot);
    } catch (err) {
      $("st-message").textContent = "Cannot reach Loupe: " + err.message;
    }
    window.setTimeout(poll, 1000);
  }

  /* the CSV link follows the time range (local times in the inputs, UTC in the link) */
  const exportForm = $("st-export");
  function exportLink() {
    const query = new URLSearchParams();
    ["start", "end"].forEach((name) => {
      const value = exportForm.elements[name].value;
      if (value) query.set(name, new Date(value).toISOString());
    });
    const q = query.toString();
    $("st-csv").href = exportForm.dataset.url + (q ? "?" + q : "");
  }
  exportForm.addEventListener("input", exportLink);
  exportForm.addEventListener("submit", (e) => e.preventDefault());

  const toggle = $("st-toggle");
  if (toggle) {
    toggle.addEventListener("click", async () => {
      const res = await request("PATCH", live.dataset.api, { enabled: !enabled });
      if (res.status === 200) enabled = res.body.enabled;
      toggle.textContent = enabled ? "Pause" : "Resume";
    });
  }
  poll();
})();
