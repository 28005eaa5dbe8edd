/* Loupe's page scripts: uploads with per-file progress, the jobs list, the deep-zoom viewer. */
(function () {
  "use strict";

  function csrfToken() {
    const m = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  async function api(url, options) {
    const opts = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    if (opts.method && opts.method !== "GET") opts.headers["X-CSRFToken"] = csrfToken();
    const res = await fetch(url, opts);
    let body = null;
    try { body = await res.json(); } catch (e) { body = null; }
    if (!res.ok) {
      const msg = (body && body.error) || res.status + " " + res.statusText;
      throw new Error(msg);
    }
    return body;
  }

  /* fetch with the CSRF token and JSON in and out; {status, body} (body null when not JSON).
     Network failures reject: callers decide whether to retry. */
  async function request(method, url, body) {
    const opts = { method, credentials: "same-origin", headers: { "X-CSRFToken": csrfToken() } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(url, opts);
    let json = null;
    try { json = await res.json(); } catch (e) { json = null; }
    return { status: res.status, body: json };
  }

  const toastTimers = new WeakMap();
  /* Show `message` in the page's toast element for `ms` milliseconds. */
  function toast(node, message, ms) {
    node.textContent = message;
    node.hidden = false;
    clearTimeout(toastTimers.get(node));
    toastTimers.set(node, setTimeout(() => { node.hidden = true; }, ms || 5000));
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    });
    (children || []).forEach((c) => node.appendChild(c));
    return node;
  }

  /* Follow a job until it finishes; onUpdate(job) on every poll. */
  function watchJob(jobId, onUpdate) {
    return new Promise((resolve) => {
      const tick = async () => {
        try {
          const job = await api("/api/jobs/" + jobId + "/");
          onUpdate(job);
          if (["succeeded", "failed", "cancelled"].includes(job.status)) return resolve(job);
        } catch (e) { /* transient: try again */ }
        setTimeout(tick, 700);
      };
      tick();
    });
  }

  function uploadOne(url, file, isNormal, row) {
    return new Promise((resolve) => {
      const bar = row.querySelector("progress.upload");
      const status = row.querySelector(".status");
      const form = new FormData();
      form.append("files", file, file.name);
      form.append("is_normal", isNormal ? "true" : "false");
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRFToken", csrfToken());
      xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
      xhr.onerror = () => { row.dataset.state = "error"; status.textContent = "network error: not uploaded"; resolve(); };
      xhr.onload = () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        bar.value = 100;
        const files = body.files || [];
        const stored = files.filter((f) => f.status === "stored").length;
        const problems = files.filter((f) => f.status !== "stored");
        if (xhr.status >= 400 && !files.length) {
          row.dataset.state = "error";
          status.textContent = body.error || ("HTTP " + xhr.status);
          return resolve();
        }
        status.textContent = stored ? stored + " stored" : "";
        problems.forEach((f) => {
          row.appendChild(el("div", { class: "reason " + f.status, text: f.name + ": " + f.status + " — " + f.reason }));
        });
        row.dataset.state = stored ? "uploaded" : (problems.some((f) => f.status === "rejected") ? "error" : "duplicate");
        if (body.job) {
          // the next file uploads now; this row keeps following its pyramid job on its own
          const jobBar = el("progress", { class: "job", max: "100", value: "0", title: "building the zoomable view" });
          const jobText = el("span", { class: "job-status", text: "preparing zoomable view…" });
          row.appendChild(el("div", { class: "jobline" }, [jobBar, jobText]));
          watchJob(body.job, (job) => {
            jobBar.value = job.progress;
            jobText.textContent = job.status === "succeeded" ? "ready" : (job.status === "failed" ? "failed: " + job.error : job.message);
          }).then((job) => { row.dataset.state = job.status === "succeeded" ? "ready" : "error"; });
        }
        resolve();
      };
      xhr.send(form);
    });
  }

  function initRebuild() {
    const box = document.getElementById("rebuild");
    if (!box) return;
    const button = document.getElementById("rebuild-button");
    const out = document.getElementById("rebuild-status");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        const job = await api(box.dataset.url, { method: "POST" });
        if (!job.id) { out.textContent = job.message; return; }
        const bar = el("progress", { max: "100", value: "0" });
        const text = el("span", { text: " queued" });
        out.replaceChildren(bar, text);
        const done = await watchJob(job.id, (j) => { bar.value = j.progress; text.textContent = " " + (j.error || j.message); });
        text.textContent = " " + done.status + ": " + (done.error || done.message);
        if (done.status === "succeeded") out.appendChild(el("a", { href: window.location.href, text: " Show them ↻" }));
      } catch (err) {
        out.textContent = err.message;
        button.disabled = false;
      }
    });
  }

  function initUploads() {
    initRebuild();
    const box = document.getElementById("upload");
    if (!box) return;
    const url = box.dataset.url;
    const list = document.getElementById("uploads");
    const input = document.getElementById("file-input");
    const zone = document.getElementById("dropzone");
    const queue = [];
    let running = 0;
    const pump = () => {
      if (!running && !queue.length && list.children.length && !document.getElementById("show-new")) {
        list.after(el("a", { id: "show-new", href: window.location.href, text: "Show the new images in the grid ↻" }));
      }
      while (running < 2 && queue.length) {
        const [file, row] = queue.shift();
        running += 1;
        uploadOne(url, file, document.getElementById("upload-normal").checked, row).then(() => {
          running -= 1;
          pump();
        });
      }
    };
    const add = (files) => {
      Array.from(files).forEach((file) => {
        const row = el("li", { class: "upload-row", "data-name": file.name, "data-state": "queued" }, [
          el("span", { class: "name", text: file.name }),
          el("progress", { class: "upload", max: "100", value: "0" }),
          el("span", { class: "status", text: "waiting" }),
        ]);
        list.appendChild(row);
        queue.push([file, row]);
      });
      pump();
    };
    input.addEventListener("change", () => { add(input.files); input.value = ""; });
    const stale = () => { const a = document.getElementById("show-new"); if (a) a.remove(); };
    input.addEventListener("click", stale);
    zone.addEventListener("drop", stale);
    ["dragenter", "dragover"].forEach((ev) => zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); }));
    ["dragleave", "drop"].forEach((ev) => zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.remove("over"); }));
    zone.addEventListener("drop", (e) => add(e.dataTransfer.files));
  }

  function initMvtecImport() {
    const form = document.getElementById("mvtec-form");
    if (!form) return;
    const out = document.getElementById("mvtec-status");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const data = new FormData(form);
      if (!data.get("path")) data.delete("path");
      if (data.get("zip") && !data.get("zip").size) data.delete("zip");
      out.textContent = "Sending…";
      try {
        const job = await api(form.closest("[data-url]").dataset.url, { method: "POST", body: data });
        const bar = el("progress", { max: "100", value: "0" });
        const text = el("span", { text: "queued" });
        out.replaceChildren(bar, text);
        const done = await watchJob(job.id, (j) => { bar.value = j.progress; text.textContent = " " + (j.error || j.message); });
        text.textContent = " " + done.status + ": " + (done.error || done.message);
      } catch (err) {
        out.textContent = "Import refused: " + err.message;
      }
    });
  }

  function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : "—"; }

  function initJobs(userId, isSiteAdmin) {
    const body = document.getElementById("jobs-body");
    const filters = document.getElementById("job-filters");
    const render = (jobs) => {
      body.replaceChildren();
      if (!jobs.length) body.appendChild(el("tr", {}, [el("td", { colspan: "8", text: "No jobs." })]));
      jobs.forEach((job) => {
        const bar = el("progress", { max: "100", value: String(job.progress) });
        const link = el("a", { href: "/jobs/" + job.id + "/", text: job.kind_label });
        const msg = el("div", { class: "hint", text: job.error || job.message });
        const cancel = el("td");
        if (["queued", "running"].includes(job.status) && !job.cancel_requested) {
          const b = el("button", { class: "link danger", type: "button", text: "Cancel" });
          b.addEventListener("click", async () => {
            try { await api("/api/jobs/" + job.id + "/cancel/", { method: "POST" }); refresh(); }
            catch (err) { alert(err.message); }
          });
          cancel.appendChild(b);
        }
        body.appendChild(el("tr", { "data-job": job.id, "data-status": job.status }, [
          el("td", {}, [link, msg]),
          el("td", { text: job.project_name || "—" }),
          el("td", { class: "status-" + job.status, text: job.status }),
          el("td", {}, [bar, el("span", { text: " " + Math.round(job.progress) + "%" })]),
          el("td", { text: job.created_by || "—" }),
          el("td", { text: fmtTime(job.created_at) }),
          el("td", { text: job.duration_seconds == null ? "—" : job.duration_seconds + " s" }),
          cancel,
        ]));
      });
    };
    const refresh = async () => {
      const params = new URLSearchParams(new FormData(filters));
      for (const [k, v] of Array.from(params.entries())) if (!v) params.delete(k);
      params.set("limit", "100");
      try { render((await api("/api/jobs/?" + params.toString())).results); } catch (e) { /* retry */ }
    };
    filters.addEventListener("change", refresh);
    refresh();
    setInterval(refresh, 1500);
    // no broker or no worker answering: said above the list, and kept up to date
    const health = document.getElementById("queue-health");
    const checkHealth = async () => {
      try {
        const h = await api("/api/jobs/health/");
        health.replaceChildren(...h.problems.map((p) => el("p", { class: "flash error", text: p })));
      } catch (e) { /* the page keeps what it had */ }
    };
    setInterval(checkHealth, 10000);
  }

  /* A job's progress bar and message in `out`; resolves with the finished job, after done(job). */
  function follow(out, jobId, done) {
    const bar = el("progress", { max: "100", value: "0" });
    const text = el("span", { text: " queued" });
    out.replaceChildren(bar, text);
    return watchJob(jobId, (j) => { bar.value = j.progress; text.textContent = " " + (j.error || j.message || j.status); })
      .then((j) => {
        text.textContent = " " + j.status + ": " + (j.error || j.message);
        if (done) done(j);
        return j;
      });
  }

  const STEPPED_MODELS = ["efficientad", "stfpm", "fastflow", "cflow", "autoencoder"];

  function initModels() {
    const root = document.getElementById("models-page");
    if (!root) return;
    const train = document.getElementById("train-form");
    if (train) {
      train.addEventListener("submit", async (e) => {
        e.preventDefault();
        const f = new FormData(train);
        const params = {};
        if (f.get("input_size")) params.input_size = Number(f.get("input_size"));
        // models trained in steps; left empty, each takes its own (docs/anomaly.md)
        if (f.get("steps") && STEPPED_MODELS.includes(f.get("architecture"))) params.steps = Number(f.get("steps"));
        if (f.get("scale")) {
          params.scale = Number(f.get("scale"));
          params.coarse_pass = f.get("coarse_pass") === "on";
        } else if (f.get("coarse_pass") === "on") {
          document.getElementById("train-status").textContent = "The whole-image pass goes with tiles: choose a tile resolution, or untick it.";
          return;
        }
        if (f.get("multiscale") === "on") {
          // one model at the input size and one at half of it, their maps fused (docs/anomaly.md)
          const size = params.input_size || 256;
          if ((size / 2) % 32 !== 0) {
            document.getElementById("train-status").textContent = `Half of ${size} px is not a multiple of 32: choose an input size such as 256 or 384 for two scales.`;
            return;
          }
          params.multiscale = [size, size / 2];
        }
        // each image divided by its own blurred brightness first (docs/anomaly.md, Shading correction)
        if (f.get("shading") === "on") params.shading = 0.2;
        // a dark-line detector beside the model, its map added to the model's (docs/anomaly.md, Line detector)
        if (f.get("lines") === "on") {
          if (f.get("architecture") === "lines") {
            document.getElementById("train-status").textContent = "The line detector goes beside another model: choose one, or untick it.";
            return;
          }
          params.lines = true;
        }
        try {
          const v = await api(root.dataset.modelsUrl, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ architecture: f.get("architecture"), params }) });
          follow(document.getElementById("train-status"), v.job, (j) => { if (j.status === "succeeded") window.location.reload(); });
        } catch (err) { document.getElementById("train-status").textContent = "Not started: " + err.message; }
      });
    }
    const auto = document.getElementById("auto-inspect");
    if (auto) {
      auto.addEventListener("change", async () => {
        try {
          await api(root.dataset.projectUrl, { method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ auto_inspect: auto.checked }) });
        } catch (err) { alert(err.message); auto.checked = !auto.checked; }
      });
    }
    const settings = document.getElementById("inspection-form");
    if (settings) {
      settings.addEventListener("submit", async (e) => {
        e.preventDefault();
        const f = new FormData(settings);
        const inspection = { specular_mask: f.get("specular_mask") === "on" };
        for (const k of ["threshold", "min_area", "max_regions", "specular_v_min", "specular_s_max", "detector_views"]) {
          if (f.get(k) !== "") inspection[k] = Number(f.get(k));
        }
        const out = document.getElementById("inspection-status");
        try {
          await api(root.dataset.projectUrl, { method: "PATCH", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ inspection }) });
          out.textContent = "Saved: the next inspection runs use these settings.";
        } catch (err) { out.textContent = "Not saved: " + err.message; }
      });
    }
    const run = document.getElementById("run-form");
    if (run) {
      run.addEventListener("submit", async (e) => {
        e.preventDefault();
        try {
          const r = await api(root.dataset.runsUrl, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ scope: new FormData(run).get("scope") }) });
          follow(document.getElementById("run-status"), r.job, (j) => { if (j.status === "succeeded") window.location.href = "/runs/" + r.id + "/"; });
        } catch (err) { document.getElementById("run-status").textContent = "Not started: " + err.message; }
      });
    }
    // the change detector: calibrate (admins), run over the aligned pairs (reviewers)
    const calibrate = document.getElementById("change-calibrate-form");
    if (calibrate) {
      calibrate.addEventListener("submit", async (e) => {
        e.preventDefault();
        const out = document.getElementById("change-calibrate-status");
        try {
          const v = await api(root.dataset.modelsUrl, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ kind: "change" }) });
          follow(out, v.job, (j) => { if (j.status === "succeeded") window.location.reload(); });
        } catch (err) { out.textContent = "Not started: " + err.message; }
      });
    }
    const changeRun = document.getElementById("change-run-form");
    if (changeRun) {
      changeRun.addEventListener("submit", async (e) => {
        e.preventDefault();
        const out = document.getElementById("change-run-status");
        try {
          const r = await api(root.dataset.runsUrl, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ kind: "change", scope: new FormData(changeRun).get("scope") }) });
          follow(out, r.job, (j) => { if (j.status === "succeeded") window.location.href = "/runs/" + r.id + "/"; });
        } catch (err) { out.textContent = "Not started: " + err.message; }
      });
    }
    // the leaderboard: train the ticked models, score them on the reviewed images
    const compare = document.getElementById("compare-form");
    if (compare) {
      compare.addEventListener("submit", async (e) => {
        e.preventDefault();
        const out = document.getElementById("compare-status");
        const f = new FormData(compare);
        const architectures = f.getAll("architectures");
        if (!architectures.length) { out.textContent = "Tick at least one model."; return; }
        // the resolution the models are trained and scored at (tiles for large photos, as training proposes)
        const params = f.get("scale") ? { scale: Number(f.get("scale")) } : {};
        // settings to try every model in (one version per model and setting): without and with
        // the shading correction, at the resolution chosen and at half of it (a whole image at
        // 128 px instead of 256, tiles at half the scale); each toggle doubles them
        let variants = [{}];
        if (f.get("shading_variants") === "on") variants = variants.flatMap((v) => [v, { ...v, shading: 0.2 }]);
        const half = params.scale ? { scale: params.scale / 2 } : { input_size: 128 };
        if (f.get("size_variants") === "on") variants = variants.flatMap((v) => [v, { ...v, ...half }]);
        if (f.get("coarse_variants") === "on") {
          // a tiled model with and without a whole-image pass beside its tiles (docs/anomaly.md, Coarse pass)
          if (!params.scale) { out.textContent = "The whole-image pass goes with tiles: choose a tile resolution, or untick it."; return; }
          variants = variants.flatMap((v) => [v, { ...v, coarse_pass: true }]);
        }
        if (f.get("lines_variants") === "on") {
          // each model with and without the dark-line detector beside it (docs/anomaly.md, Line detector)
          if (architectures.includes("lines")) { out.textContent = "The line detector goes beside another model: untick lines, or untick this."; return; }
          variants = variants.flatMap((v) => [v, { ...v, lines: true }]);
        }
        try {
          const job = await api(root.dataset.comparisonsUrl, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ architectures, params, variants }) });
          follow(out, job.id, () => window.location.reload());
        } catch (err) { out.textContent = "Not started: " + err.message; }
      });
    }
    document.querySelectorAll("[data-activate]").forEach((b) => b.addEventListener("click", async () => {
      try { await api(b.dataset.activate, { method: "POST" }); window.location.reload(); } catch (err) { alert(err.message); }
    }));
  }

  /* The team form's user name field suggests existing accounts as one types (a <datalist>
     filled from /api/users/names/, which only project admins may read). */
  function initUserLookup(input) {
    if (!input) return;
    const list = document.createElement("datalist");
    list.id = input.name + "-options";
    input.setAttribute("list", list.id);
    input.setAttribute("autocomplete", "off");
    input.after(list);
    let timer = null;
    let asked = null;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(async () => {
        const q = input.value.trim();
        if (q === asked) return;
        asked = q;
        try {
          const body = await api("/api/users/names/?search=" + encodeURIComponent(q));
          if (asked !== q) return; // a later keystroke asked again
          list.replaceChildren(...body.usernames.map((name) => {
            const o = document.createElement("option");
            o.value = name;
            return o;
          }));
          list.dataset.loaded = q;
        } catch (e) { /* no suggestions: the field still takes a typed name */ }
      }, 150);
    });
  }

  /* The image grid's selection: a checkbox on each tile (reviewers and admins) and a bar of
     actions for the selected images (POST /api/projects/{id}/images/bulk/). The page reloads
     afterwards and says what was done and what was refused, and why. */
  function initBulk() {
    const bar = document.getElementById("bulkbar");
    if (!bar) return;
    const result = document.getElementById("bulk-result");
    const picks = () => Array.from(document.querySelectorAll("#image-grid .pick"));
    const chosen = () => picks().filter((p) => p.checked).map((p) => Number(p.value));
    const said = sessionStorage.getItem("loupe-bulk-result");
    if (said) {
      sessionStorage.removeItem("loupe-bulk-result");
      const r = JSON.parse(said);
      const p = document.createElement("p");
      p.className = "flash " + (r.refused.length ? "error" : "success");
      p.textContent = r.message;
      if (r.run) {
        const a = document.createElement("a");
        a.href = "/runs/" + r.run + "/";
        a.textContent = " Follow the run →";
        p.append(a);
      }
      if (r.job) {
        const a = document.createElement("a");
        a.href = "/jobs/" + r.job + "/";
        a.textContent = " Follow the job →";
        p.append(a);
      }
      result.append(p);
      if (r.refused.length > 1) {
        const ul = document.createElement("ul");
        ul.className = "hint";
        r.refused.forEach((x) => { const li = document.createElement("li"); li.textContent = x.name + ": " + x.reason; ul.append(li); });
        result.append(ul);
      }
    }
    function update() {
      const n = chosen().length;
      bar.hidden = n === 0;
      document.getElementById("bulk-count").textContent = n + " selected";
    }
    picks().forEach((p) => p.addEventListener("change", update));
    document.getElementById("bulk-all").addEventListener("click", () => { picks().forEach((p) => { p.checked = true; }); update(); });
    document.getElementById("bulk-none").addEventListener("click", () => { picks().forEach((p) => { p.checked = false; }); update(); });
    bar.querySelectorAll("[data-bulk]").forEach((b) => b.addEventListener("click", async () => {
      const ids = chosen();
      const action = b.dataset.bulk;
      if (action === "delete" && !window.confirm("Delete " + ids.length + " image" + (ids.length === 1 ? "" : "s") + " with their labels and suggestions? This cannot be undone.")) return;
      const body = { image_ids: ids, action };
      if (action === "split") body.split = document.getElementById("bulk-split").value;
      bar.querySelectorAll("button").forEach((x) => { x.disabled = true; });
      let res;
      try {
        res = await request("POST", bar.dataset.url, body);
      } catch (e) {
        res = { status: 0, body: { error: "No answer from the server: nothing was changed. Try again." } };
      }
      bar.querySelectorAll("button").forEach((x) => { x.disabled = false; });
      if (res.status === 200) {
        sessionStorage.setItem("loupe-bulk-result", JSON.stringify(res.body));
        window.location.reload();
      } else {
        result.replaceChildren();
        const p = document.createElement("p");
        p.className = "flash error";
        p.textContent = (res.body && res.body.error) || "The action failed (" + res.status + ").";
        result.append(p);
      }
    }));
    update();
  }

  /* "?" on a page with keys (the workspace, the review queue) shows them over the page; Esc or
     "?" again closes it. While it is open the page's own keys are held back, so a key pressed
     to read about it does nothing behind the list. The list is the page's own "Keys" section. */
  function initKeysHelp() {
    const source = document.querySelector("details.help dl");
    if (!source) return;
    const dialog = document.createElement("dialog");
    dialog.id = "keys-dialog";
    dialog.className = "keys-dialog";
    dialog.setAttribute("aria-label", "Keyboard keys");
    const title = document.createElement("h2");
    title.textContent = "Keys";
    const close = document.createElement("button");
    close.type = "button";
    close.className = "link";
    close.textContent = "Close (Esc)";
    close.addEventListener("click", () => dialog.close());
    dialog.append(title, source.cloneNode(true), close);
    document.body.append(dialog);
    document.addEventListener("keydown", (e) => {
      const typing = e.target.closest && e.target.closest("input, textarea, select");
      if (e.key === "?" && !typing) {
        e.preventDefault();
        e.stopImmediatePropagation();
        if (dialog.open) dialog.close(); else dialog.showModal();
      } else if (dialog.open) {
        // the page's own Esc handlers would cancel the dialog's closing (preventDefault)
        e.stopImmediatePropagation();
        if (e.key === "Escape") { e.preventDefault(); dialog.close(); }
      }
    }, true);
  }
  initKeysHelp();

  window.Loupe = { api, request, csrfToken, toast, watchJob, follow, initUploads, initMvtecImport, initJobs, initModels, initUserLookup, initBulk };
})();
