/* The side panel's list of shapes: category, its review state (approved, sent back), kind, who
 * made it and when, who edited it last, and whether it is still being saved; a click selects the
 * shape and zooms to it. */

const REVIEW = { approved: "approved", returned: "sent back" };

import { ago } from "./format.js";
import { categoryOf } from "./shapes.js";

export function renderShapeList(ctx) {
  const { anno, me, categories } = ctx;
  const records = ctx.queue.records;
  const list = document.getElementById("shape-list");
  const selected = new Set(anno.getSelected().map((a) => a.id));
  const items = anno.getAnnotations();
  document.getElementById("shape-count").textContent = "(" + items.length + ")";
  list.replaceChildren();
  items.forEach((a) => {
    const c = categories.get(categoryOf(a)) || { name: "?", color: "#999" };
    const m = records.get(a.id) || {};
    const li = document.createElement("li");
    li.dataset.id = a.id;
    li.setAttribute("aria-selected", selected.has(a.id) ? "true" : "false");
    if (m.author && m.author !== me) li.classList.add("other");
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = c.color;
    const name = document.createElement("strong");
    name.textContent = c.name;
    const info = document.createElement("span");
    info.className = "hint";
    const kind = a.target.selector.type === "RECTANGLE" ? "box" : "polygon";
    const who = m.author || me;
    const edited = m.updatedBy && m.updatedBy !== who ? ", edited by " + m.updatedBy : "";
    info.textContent = kind + " · " + (m.source && m.source !== "manual" ? m.source.replace("_", " ") + " · " : "") + "by " + who + " " + ago(m.created) + edited + (m.serverId ? "" : " · saving");
    li.append(sw, name);
    if (REVIEW[m.review]) {
      li.dataset.review = m.review;
      const badge = document.createElement("span");
      badge.className = "badge review-" + m.review;
      badge.textContent = REVIEW[m.review];
      li.append(badge);
    }
    li.append(info);
    li.addEventListener("click", () => { anno.setSelected(a.id); anno.fitBoundsWithConstraints(a.id, { padding: 80 }); });
    list.appendChild(li);
  });
}
