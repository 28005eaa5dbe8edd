/* Stand-ins for what the workspace page gives its save queue: the annotation API (an in-memory
 * server behind a fake `Loupe.request` that can go offline, lose answers and hold requests), the
 * shapes on screen, and timers that run only when a test says so. */

export const URLS = { annotations: "/api/images/7/annotations/", annotation: "/api/annotations/{id}/" };

/** Resolves once every promise callback queued so far (and the ones they queue) has run. */
export function settle() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** setTimeout for the queue's back-off: nothing fires until the test calls fire(). */
export function manualTimers() {
  const waiting = [];
  return {
    delays: [], // every delay asked for, in order
    setTimeout(fn, ms) {
      this.delays.push(ms);
      waiting.push(fn);
      return waiting.length;
    },
    pending: () => waiting.length,
    /** Fire every timer set so far, then let the queue run until it waits again. */
    async fire() {
      const due = waiting.splice(0);
      due.forEach((fn) => fn());
      await settle();
    },
  };
}

const stamp = (n) => new Date(Date.UTC(2026, 0, 1, 0, 0, n)).toISOString();

/** The annotation API of one image, as the queue uses it, for user `user`. */
export function fakeServer({ user = "labeler" } = {}) {
  const rows = new Map(); // id -> stored annotation (the API's representation + client_id)
  let nextId = 1;
  let clock = 0;
  const server = {
    rows,
    started: 0, // requests the page started (including ones that are held or fail)
    requests: [], // "METHOD path" of every request that reached the server
    offline: false, // every request fails as a network error
    loseAnswers: 0, // the next N requests are handled, but their answers never arrive
    next: [], // canned answers for the next requests: {status, body} or (req) => {status, body}; no body: not JSON
    held: null, // a Promise: requests wait for it before they are answered
    delayed: null, // a Promise: the next request is handled at once, its answer waits for it

    /** Store an annotation as if made earlier (e.g. by someone else); returns it. */
    seed(fields = {}) {
      const id = nextId++;
      const row = Object.assign(
        { id, category: 1, geometry: { type: "box", x: 10, y: 10, w: 20, h: 20 }, author: user, source: "manual", version: 1, created_at: stamp(++clock), updated_at: stamp(clock), updated_by: user, client_id: "" },
        fields,
      );
      rows.set(id, row);
      return view(row);
    },

    /** Someone else changes annotation `id` on the server. */
    change(id, fields, by = "colleague") {
      const row = rows.get(id);
      Object.assign(row, fields, { version: row.version + 1, updated_by: by, updated_at: stamp(++clock) });
      return view(row);
    },

    /** Hold every request until the returned function is called. */
    hold() {
      let release;
      server.held = new Promise((resolve) => { release = resolve; });
      return () => { server.held = null; release(); };
    },

    /** Handle the next request at once but hold its answer until the returned function is
     * called (a slow answer: later requests overtake it). */
    late() {
      let deliver;
      server.delayed = new Promise((resolve) => { deliver = resolve; });
      return () => deliver();
    },

    sent: (method) => server.requests.filter((r) => r.startsWith(method + " ")),

    /** What the page's `Loupe.request` (app.js) does against this server: {status, body} whatever
     * the status (body null when the answer has none), rejecting only on a network failure. */
    request: async (method, url, body) => {
      server.started += 1;
      if (server.held) await server.held;
      if (server.offline) throw new TypeError("Failed to fetch");
      server.requests.push(method + " " + url);
      const sent = body === undefined ? undefined : JSON.parse(JSON.stringify(body));
      const canned = server.next.shift();
      const answer = canned ? (typeof canned === "function" ? canned({ method, url, body: sent }) : canned) : handle(method, url, sent);
      if (server.delayed) {
        const delayed = server.delayed;
        server.delayed = null;
        await delayed;
      }
      if (server.loseAnswers > 0) {
        server.loseAnswers -= 1;
        throw new TypeError("Failed to fetch"); // handled, but the answer was lost on the way back
      }
      return { status: answer.status, body: answer.body === undefined ? null : JSON.parse(JSON.stringify(answer.body)) };
    },
  };

  function view(row) {
    const { client_id: _, ...rest } = row;
    return JSON.parse(JSON.stringify(rest));
  }

  function handle(method, url, body) {
    const [path, query] = url.split("?");
    if (path === URLS.annotations) {
      if (method === "GET") return { status: 200, body: [...rows.values()].map(view) };
      if (method === "POST") {
        const existing = body.client_id && [...rows.values()].find((r) => r.client_id === body.client_id);
        if (existing) return { status: 201, body: view(existing) }; // idempotent
        const id = nextId++;
        const row = { id, category: body.category, geometry: body.geometry, author: user, source: "manual", version: 1, created_at: stamp(++clock), updated_at: stamp(clock), updated_by: user, client_id: body.client_id || "" };
        rows.set(id, row);
        return { status: 201, body: view(row) };
      }
    }
    const m = path.match(/^\/api\/annotations\/(\d+)\/$/);
    if (!m) return { status: 404, body: { error: "no such URL " + url } };
    const row = rows.get(Number(m[1]));
    if (!row) return { status: 404, body: { error: "Not found." } };
    const conflict = (version) => ({ status: 409, body: { error: `${row.updated_by} changed this annotation first (version ${row.version}, you edited ${version}).`, current: view(row) } });
    if (method === "GET") return { status: 200, body: view(row) };
    if (method === "PATCH") {
      if (body.version !== row.version) return conflict(body.version);
      if (body.category !== undefined) row.category = body.category;
      if (body.geometry !== undefined) row.geometry = body.geometry;
      Object.assign(row, { version: row.version + 1, updated_by: user, updated_at: stamp(++clock) });
      return { status: 200, body: view(row) };
    }
    if (method === "DELETE") {
      const version = Number(new URLSearchParams(query).get("version"));
      if (version !== row.version) return conflict(version);
      rows.delete(row.id);
      return { status: 204, body: undefined };
    }
    return { status: 405, body: { error: "method not allowed" } };
  }

  return server;
}

/** The shapes on screen, by local id, as the page's Annotorious adapter shows them. */
export function fakeShapes() {
  const onScreen = new Map(); // local id -> {category, geometry}
  return {
    onScreen,
    /** A person draws (or undo brings back) a shape. */
    draw(id, geometry = { type: "box", x: 100, y: 100, w: 50, h: 40 }, category = 1) {
      onScreen.set(id, { category, geometry });
    },
    payload: (id) => (onScreen.has(id) ? JSON.parse(JSON.stringify(onScreen.get(id))) : null),
    has: (id) => onScreen.has(id),
    put(id, s) { onScreen.set(id, { category: s.category, geometry: s.geometry }); },
    drop(id) { onScreen.delete(id); },
  };
}
