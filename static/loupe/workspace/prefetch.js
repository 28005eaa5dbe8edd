/* Fetch the next image's first tiles in advance (best effort), so that N shows it at once. */

import { urlFor } from "./format.js";

export async function prefetchNext(ctx) {
  const id = ctx.data.neighbors.next;
  if (!id) return;
  const viewerEl = ctx.els.viewer;
  try {
    const url = urlFor(ctx.data.urls.dzi, id);
    const res = await fetch(url, { credentials: "same-origin" });
    if (!res.ok) return;
    const xml = new DOMParser().parseFromString(await res.text(), "application/xml");
    const size = xml.getElementsByTagName("Size")[0];
    const tile = Number(xml.documentElement.getAttribute("TileSize"));
    const w = Number(size.getAttribute("Width"));
    const h = Number(size.getAttribute("Height"));
    const maxLevel = Math.ceil(Math.log2(Math.max(w, h)));
    const fit = Math.max(viewerEl.clientWidth, viewerEl.clientHeight) * (window.devicePixelRatio || 1);
    const base = url.replace(/\.dzi$/, "_files/");
    for (let level = 8; level <= maxLevel; level++) {
      const scale = Math.pow(2, maxLevel - level);
      const lw = Math.ceil(w / scale);
      const lh = Math.ceil(h / scale);
      if (Math.max(lw, lh) > fit * 2) break;
      for (let col = 0; col * tile < lw; col++) {
        for (let row = 0; row * tile < lh; row++) fetch(base + level + "/" + col + "_" + row + ".jpg", { credentials: "same-origin" });
      }
    }
  } catch (e) { /* prefetch is best effort */ }
}
