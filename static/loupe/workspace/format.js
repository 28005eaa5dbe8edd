/* Small formatting helpers shared by the workspace's modules. */

/** `template` with "{id}" replaced by `id` (the page gets its API URLs as templates). */
export function urlFor(template, id) {
  return template.replace("{id}", id);
}

/** The workspace page of image `id`, keeping the grid's filters for next / previous. */
export function pageUrl(data, id) {
  return urlFor(data.urls.page, id) + (data.query ? "?" + data.query : "");
}

/** "just now", "5 min ago", "3 h ago", or the date. */
export function ago(iso, now = Date.now()) {
  if (!iso) return "";
  const s = Math.round((now - new Date(iso).getTime()) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return new Date(iso).toLocaleDateString();
}

// keys a slider uses itself; letters mean nothing to a slider or a checkbox, so they stay the
// workspace's (F after dragging the reference swipe slider flickers, it does not get lost)
const SLIDER_KEYS = new Set(["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End", "PageUp", "PageDown"]);

/** Whether key event `e` belongs to a form field (typing, a menu) rather than the workspace. */
export function typingIn(e) {
  const field = e.target.closest && e.target.closest("input, textarea, select");
  if (!field) return false;
  if (field.type === "checkbox") return false;
  if (field.type === "range") return SLIDER_KEYS.has(e.key);
  return true;
}
