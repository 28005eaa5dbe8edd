/* Loupe labeling workspace: OpenSeadragon deep zoom + Annotorious shapes, saved as they change.
 *
 * Shapes live in Annotorious (which owns drawing, editing and the undo stack). Every change it
 * reports (create / update / delete, including undo and redo) becomes an operation in the save
 * queue (save-queue.js), which talks to the REST API. Coordinates are full-resolution image
 * pixels throughout. This entry module wires the parts together; docs/workspace.md has the map.
 *
 * Loaded as <script type="module"> after the classic scripts it uses: app.js (window.Loupe),
 * overlay.js (window.LoupeOverlay), OpenSeadragon and Annotorious.
 */

import { bindHeatmap, bindSuggestions } from "./overlays.js";
import { bindReference } from "./reference.js";
import { bindRegions } from "./regions-layer.js";
import { bindKeys, bindPlainKeys, createTools } from "./keys.js";
import { createNotes } from "./notes.js";
import { createSaveQueue } from "./save-queue.js";
import { createPanes } from "./panes.js";
import { annotoriousShapes, bindShapeEvents, categoryOf, pollShapes, shapesIdle } from "./shapes.js";
import { renderShapeList } from "./shapes-panel.js";
import { nextDraw, whenLoaded } from "./viewer.js";

/* global OpenSeadragon */

const data = JSON.parse(document.getElementById("workspace-data").textContent);
const toastEl = document.getElementById("toast");
const statusEl = document.getElementById("save-status");

// What the modules share: the page's data, its elements, the current category for new shapes,
// and (with a viewer) the viewer, the annotator and the save queue.
const ctx = {
  data,
  me: data.user.username,
  categories: new Map(data.categories.map((c) => [String(c.id), c])),
  category: data.categories.length ? String(data.categories[0].id) : null,
  els: { viewer: document.getElementById("viewer"), status: statusEl },
  toast: (message) => window.Loupe.toast(toastEl, message, 6000),
  renderList: () => {},
};

const notes = createNotes(ctx);

if (!ctx.els.viewer) {
  // No zoomable view yet (pyramid pending or failed): the verdict, comments, history and
  // next/previous still work.
  notes.loadComments();
  notes.loadHistory();
  bindPlainKeys(ctx, notes);
} else {
  startWorkspace();
}

function startWorkspace() {
  const viewerEl = ctx.els.viewer;
  const styleFor = (a, state) => {
    const c = ctx.categories.get(categoryOf(a) || ctx.category);
    const color = c ? c.color : "#ff00ff";
    const m = ctx.queue && ctx.queue.records.get(a.id);
    const mine = !m || m.author === ctx.me;
    return {
      stroke: color,
      strokeWidth: state && state.selected ? 3 : 2,
      strokeOpacity: mine ? 1 : 0.75,
      fill: color,
      fillOpacity: state && state.selected ? 0.25 : (mine ? 0.12 : 0.05),
    };
  };

  ctx.queue = createSaveQueue({
    urls: { annotations: data.urls.annotations, annotation: data.urls.annotation },
    user: ctx.me,
    shapes: annotoriousShapes(ctx),
    // app.js' JSON request helper: {status, body} whatever the status, rejects when no answer came
    request: (method, url, body) => window.Loupe.request(method, url, body),
    setTimeout: (fn, ms) => window.setTimeout(fn, ms),
    // data-state (saved / saving / offline) and data-pending (changes not sent yet) say where
    // saving stands, for people's stylesheets and for browser tests
    onStatus: ({ state, text, pending }) => {
      statusEl.dataset.state = state;
      statusEl.dataset.pending = String(pending);
      statusEl.textContent = text;
    },
    onToast: ctx.toast,
    onChange: () => ctx.renderList(),
  });
  ctx.renderList = () => renderShapeList(ctx);
  pollShapes(ctx, data.pollSeconds || 10);
  window.addEventListener("beforeunload", (e) => {
    if (ctx.queue.pending()) { e.preventDefault(); e.returnValue = "Some changes are not saved yet."; }
  });

  // Annotorious merges store changes less than 250 ms apart into one undo step; the time of the
  // last one lets tests imitate a person's pause between two changes.
  let lastChange = -Infinity;
  const heatmap = bindHeatmap(ctx);
  const reference = bindReference(ctx);
  const suggestions = bindSuggestions(ctx);
  const regions = bindRegions(ctx);
  ctx.pairChanged = regions.refresh; // the Reference panel changed the pair: the regions follow
  let tools = null;
  // two viewers, one shown: N / P swap them (panes.js)
  const panes = createPanes(ctx, {
    style: styleFor,
    bind(anno) {
      bindShapeEvents(ctx, anno);
      anno.state.store.observe(() => { lastChange = performance.now(); }, { origin: "LOCAL" });
    },
    prepare: (pane) => { heatmap.prepare(pane); reference.prepare(pane); regions.prepare(pane); },
    leave: (pane) => suggestions.leave(pane),
    leaving: () => notes.leave(),
    shown() {
      if (tools) tools.setTool(tools.tool()); // the tool in hand goes on to the next image
      notes.show();
      notes.loadComments();
      notes.loadHistory();
      suggestions.load();
      heatmap.shown();
      reference.shown();
      regions.shown();
    },
    refreshed: () => { notes.show({ keepLists: true }); reference.shown(); regions.shown(); },
  });
  ctx.images = panes;
  tools = createTools(ctx);
  bindKeys(ctx, tools, notes);
  tools.setTool("select");
  if (ctx.category) tools.setCategory(ctx.category);
  panes.first();

  // For browser tests and benchmarks (tests/e2e, benchmarks/workspace.py): the viewer and
  // annotator on screen.
  window.loupeWorkspace = {
    get viewer() { return ctx.viewer; },
    get anno() { return ctx.anno; },
    queue: ctx.queue,
    meta: ctx.queue.records,
    setTool: tools.setTool,
    setCategory: tools.setCategory,
    imageToWindow: (x, y) => {
      const p = ctx.viewer.viewport.imageToWindowCoordinates(new OpenSeadragon.Point(x, y));
      return { x: p.x, y: p.y };
    },
    windowToImage: (x, y) => {
      const p = ctx.viewer.viewport.windowToImageCoordinates(new OpenSeadragon.Point(x, y));
      return { x: p.x, y: p.y };
    },
    // every change sent, and the shapes on screen are exactly the ones the server has
    idle: () => shapesIdle(ctx),
    // milliseconds since the last change a person made to the shapes (see above)
    sinceLastChange: () => performance.now() - lastChange,
    // resolves once the viewer has drawn its current view (after an immediate zoom or pan)
    drawn: () => nextDraw(ctx.viewer),
    // resolves once the current view is drawn with all its tiles
    loaded: () => whenLoaded(ctx.viewer),
  };
}
