/* The datasets page: freeze, export with a progress bar, compare, import with its report. */
(function () {
  "use strict";
  const box = document.getElementById("datasets");
  if (!box) return;
  const base = "/api/projects/" + box.dataset.project + "/datasets/";
  const api = window.Loupe.api;

  function follow(job, out, done) {
    const bar = document.createElement("progress");
    bar.max = 100;
    const text = document.createElement("span");
    out.replaceChildren(bar, text);
    return window.Loupe.watchJob(job.id, (j) => {
      bar.value = j.progress;
      text.textContent = " " + (j.error || j.message);
    }).then((j) => { text.textContent = " " + j.status + ": " + (j.error || j.message); if (done) done(j); });
  }

  const freeze = document.getElementById("freeze-form");
  if (freeze) freeze.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(freeze);
    const body = { note: f.get("note"), include_pending: f.has("include_pending"),
      include_ground_truth: f.has("include_ground_truth"), seed: Number(f.get("seed") || 0) };
    const out = document.getElementById("freeze-status");
    out.textContent = "Freezing…";
    try {
      const v = await api(base, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      out.textContent = "Frozen v" + v.number + "; reloading…";
      window.location.reload();
    } catch (err) { out.textContent = "Not frozen: " + err.message; }
  });

  box.querySelectorAll(".export-buttons button").forEach((btn) => btn.addEventListener("click", async () => {
    const row = btn.closest("tr");
    const out = row.querySelector(".export-status");
    const body = { format: btn.dataset.format, options: {} };
    if (body.format === "sliced_coco") {
      new FormData(document.getElementById("slice-form")).forEach((v, k) => { body.options[k] = Number(v); });
    }
    try {
      const job = await api(base + row.dataset.version + "/exports/", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      follow(job, out, (j) => {
        if (j.status !== "succeeded") return;
        const a = document.createElement("a");
        a.href = "/api/dataset-exports/" + j.id + "/download/";
        a.textContent = " download " + body.format + ".zip";
        out.appendChild(a);
      });
    } catch (err) { out.textContent = "Export refused: " + err.message; }
  }));

  const compare = document.getElementById("compare-form");
  if (compare) compare.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(compare);
    const out = document.getElementById("compare-out");
    try {
      const d = await api(base + "compare/?old=" + f.get("old") + "&new=" + f.get("new"));
      out.textContent = d.unchanged ? "No difference." : JSON.stringify({
        added_images: d.added_images.length, removed_images: d.removed_images.length,
        moved_images: d.moved_images.length, relabelled_images: d.relabelled_images.length,
        shapes_added: d.shapes_added, shapes_removed: d.shapes_removed }, null, 1);
    } catch (err) { out.textContent = err.message; }
  });

  const imp = document.getElementById("import-form");
  if (imp) imp.addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = document.getElementById("import-status");
    const list = document.getElementById("import-report");
    list.replaceChildren();
    out.textContent = "Uploading…";
    try {
      const job = await api(base + "import/", { method: "POST", body: new FormData(imp) });
      follow(job, out, (j) => {
        (j.result.skipped || []).forEach((s) => {
          const li = document.createElement("li");
          li.textContent = (s.item || s.name) + ": " + s.reason;
          list.appendChild(li);
        });
      });
    } catch (err) { out.textContent = "Import refused: " + err.message; }
  });
})();
