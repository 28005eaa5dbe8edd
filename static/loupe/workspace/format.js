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
