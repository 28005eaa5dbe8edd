/* The image as a whole: its verdict (OK / needs review), comments, and the history of review
 * decisions on it. All of it works without a zoomable view too, and follows the image when N / P
 * switch images inside the page (`show()`). An answer about an image the page left is dropped. */

import { ago } from "./format.js";

export function createNotes(ctx) {
  const { data } = ctx;
  const request = (...args) => window.Loupe.request(...args);

  function showVerdict(v) {
    document.querySelectorAll("[data-verdict]").forEach((b) => b.setAttribute("aria-pressed", b.dataset.verdict === v ? "true" : "false"));
    document.getElementById("verdict-text").textContent = v === "ok" ? "Marked OK: no defect." : v === "needs_review" ? "Marked for review." : "";
  }

  /** Set the verdict, or clear it when it is already `v`. */
  async function setVerdict(v) {
    const image = data.image;
    const next = image.verdict === v ? "" : v;
    try {
      const r = await request("POST", data.urls.verdict, { verdict: next });
      if (r.status === 200) {
        image.verdict = next;
        if (image.id === data.image.id) {
          data.image.verdict = next; // the same image's data may have been read again meanwhile
          showVerdict(next);
        }
      } else ctx.toast((r.body && r.body.error) || "HTTP " + r.status);
    } catch (e) { ctx.toast("The verdict was not saved: the server is unreachable."); }
  }

  async function loadComments() {
    const forImage = data.image.id;
    const r = await request("GET", data.urls.comments);
    if (forImage !== data.image.id) return;
    const list = document.getElementById("comment-list");
    list.replaceChildren();
    (r.body || []).forEach((c) => {
      const li = document.createElement("li");
      const who = document.createElement("span");
      who.className = "hint";
      who.textContent = (c.author || "?") + " · " + ago(c.created_at);
      li.append(document.createTextNode(c.text + " "), who);
      list.appendChild(li);
    });
  }

  async function loadHistory() {
    const forImage = data.image.id;
    let r;
    try { r = await request("GET", data.urls.reviews); } catch (e) { return; }
    if (forImage !== data.image.id) return;
    const list = document.getElementById("history-list");
    list.replaceChildren();
    const words = { accept: "accepted a suggestion", edit_accept: "edited and accepted a suggestion", reject: "rejected a suggestion", approve: "approved a label", return: "sent a label back" };
    (r.body || []).forEach((h) => {
      const li = document.createElement("li");
      const what = (words[h.action] || h.action) + (h.category_name ? " as " + h.category_name : "") + (h.reason ? " (" + h.reason.replace("_", " ") + ")" : "") + (h.comment ? ": " + h.comment : "");
      li.textContent = (h.decided_by || "?") + " " + what + " ";
      const when = document.createElement("span");
      when.className = "hint";
      when.textContent = ago(h.decided_at);
      li.appendChild(when);
      list.appendChild(li);
    });
    if (!list.children.length) list.innerHTML = '<li class="hint">No decisions yet.</li>';
  }

  document.querySelectorAll("[data-verdict]").forEach((b) => b.addEventListener("click", () => setVerdict(b.dataset.verdict)));
  document.getElementById("comment-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = document.getElementById("comment-text");
    try {
      const r = await request("POST", data.urls.comments, { text: input.value });
      if (r.status === 201) { input.value = ""; loadComments(); } else ctx.toast((r.body && r.body.error) || "HTTP " + r.status);
    } catch (err) { ctx.toast("The comment was not saved: the server is unreachable."); }
  });
  showVerdict(data.image.verdict);

  /** Another image is shown (or its data was read again: `keepLists`): its verdict, and its
   * comments and history once loaded. */
  function show({ keepLists = false } = {}) {
    showVerdict(data.image.verdict);
    if (keepLists) return;
    document.getElementById("comment-list").replaceChildren();
    document.getElementById("history-list").replaceChildren();
  }

  /** The image is about to leave the screen: a comment typed and not added stays with it
   * (not posted on the next image), and the person is told. */
  function leave() {
    const input = document.getElementById("comment-text");
    if (input.value.trim()) ctx.toast("Your comment on " + data.image.name + " was not added (press Add before moving on).");
    input.value = "";
  }

  return { setVerdict, loadComments, loadHistory, show, leave };
}
