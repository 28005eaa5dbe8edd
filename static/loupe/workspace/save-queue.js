/* The workspace's save queue: every change to a shape (create, edit, delete, and their undo and
 * redo) becomes an operation sent to the REST API in order, one at a time.
 *
 * Network errors, server errors and a lost session leave the operation at the head of the queue
 * and retry with back-off (1 s, doubling, at most 15 s). A create carries the shape's local id as
 * `client_id`, so a retried create whose answer was lost does not make a copy. Changes that cancel
 * out while they wait are not sent. Version conflicts (409) show what is stored now.
 *
 * No DOM here: the page injects the request function (`Loupe.request` from app.js), the timers,
 * the shapes on screen (`shapes`) and what to do with the status, messages and changes, so that
 * Node's test runner imports this file as it is.
 */

import { urlFor } from "./format.js";

export const FIRST_RETRY_MS = 1000;
export const MAX_RETRY_MS = 15000;

/** What this page keeps about a stored annotation, from the API's representation of it. */
function recordOf(s) {
  return { serverId: s.id, version: s.version, author: s.author, source: s.source, created: s.created_at, updated: s.updated_at, updatedBy: s.updated_by, review: s.review_status };
}

/** The local id a stored annotation gets when this page first shows it. */
function serverLocalId(serverId) {
  return "srv-" + serverId;
}

/** The server's reason for refusing a request, or `otherwise` when the answer had no JSON body
 * (a proxy's error page, an empty answer). */
function reason(r, otherwise) {
  return (r.body && typeof r.body.error === "string" && r.body.error) || otherwise || "HTTP " + r.status;
}

/**
 * options:
 *   urls        {annotations: the image's list URL, annotation: one annotation's URL with "{id}"}
 *   user        the username new shapes are recorded under
 *   shapes      the shapes on screen, by local id:
 *                 payload(id) -> {category, geometry}, or null when the shape is not on screen
 *                 has(id)     -> whether it is on screen
 *                 put(id, s)  show stored annotation `s` under `id` (no change event, no undo step)
 *                 drop(id)    take it off the screen (no change event, no undo step)
 *   request(method, url, body)   sends JSON (body omitted: none) with the CSRF token and resolves
 *               to {status, body} whatever the status (body null when the answer is not JSON);
 *               rejects only when no answer came (network down). `Loupe.request` in app.js.
 *   setTimeout  the timer used for back-off
 *   onStatus({state: "saved" | "saving" | "offline", text, pending})   on every status change
 *   onToast(message)                                                    something to tell the person
 *   onChange()  the records changed outside an event the page handles itself (refresh the list)
 */
export function createSaveQueue(options) {
  const { user, shapes } = options;
  let urls = options.urls;
  if (typeof options.request !== "function") throw new TypeError("createSaveQueue needs request");
  if (typeof options.setTimeout !== "function") throw new TypeError("createSaveQueue needs setTimeout");
  const send = options.request;
  const setTimer = options.setTimeout;
  const onStatus = options.onStatus || (() => {});
  const onToast = options.onToast || (() => {});
  const onChange = options.onChange || (() => {});

  const records = new Map(); // local id -> recordOf(...) (serverId null until its create is stored)
  const ops = [];
  let busy = false;
  let inFlight = null; // the op whose request is on its way: it cannot be withdrawn
  let retryDelay = FIRST_RETRY_MS;
  let status = { state: "saved", text: "All changes saved" };
  let drainWaiters = [];
  let changesMade = 0; // changes queued or withdrawn so far: a poll's list read before one is stale

  const annotationUrl = (serverId) => urlFor(urls.annotation, serverId);
  const sleep = (ms) => new Promise((resolve) => setTimer(resolve, ms));

  function notify() {
    onStatus({ state: status.state, text: status.text, pending: ops.length });
    if (!ops.length && drainWaiters.length) {
      const waiters = drainWaiters;
      drainWaiters = [];
      waiters.forEach((resolve) => resolve());
    }
  }

  function setStatus(state, text) {
    status = { state, text };
    notify();
  }

  function refreshStatus() {
    if (!ops.length) setStatus("saved", "All changes saved");
    else if (status.state !== "offline") setStatus("saving", "Saving " + ops.length + " change(s)…");
    else notify();
  }

  function enqueue(op) {
    changesMade += 1;
    ops.push(op);
    refreshStatus();
    pump();
  }

  async function pump() {
    if (busy) return;
    busy = true;
    while (ops.length) {
      const op = ops[0];
      let outcome;
      inFlight = op;
      try {
        outcome = await op.run();
      } catch (e) {
        outcome = "retry"; // network down or server restarting
      } finally {
        inFlight = null;
      }
      if (outcome === "retry") {
        if (status.state !== "offline") {
          setStatus("offline", "Not saved: server unreachable, " + ops.length + " change(s) waiting — retrying");
        }
        await sleep(retryDelay);
        retryDelay = Math.min(retryDelay * 2, MAX_RETRY_MS);
        continue;
      }
      retryDelay = FIRST_RETRY_MS;
      const done = ops.indexOf(op); // ops waiting to be retried may have been withdrawn
      if (done >= 0) ops.splice(done, 1);
      refreshStatus();
    }
    busy = false;
    onChange();
  }

  // Logged out (session expired) or refused (CSRF, role removed): keep every change queued and
  // say so; after logging in again in another tab, the queue goes through.
  function signedOut(r) {
    const why = reason(r, "not allowed");
    setStatus("offline", "Not saved: " + why + " — log in again (in another tab); " + ops.length + " change(s) kept");
    return "retry";
  }

  /** Show what is stored now (from the server), without change events or undo steps. A shape
   * drawn here keeps its local id. */
  function applyRemote(s) {
    const shown = serverLocalId(s.id);
    const drawnHere = [...records].find(([id, m]) => m.serverId === s.id && id !== shown);
    const localId = drawnHere ? drawnHere[0] : shown;
    if (drawnHere) records.delete(shown);
    records.set(localId, recordOf(s));
    shapes.put(localId, s);
  }

  function removeRemote(localId) {
    records.delete(localId);
    if (shapes.has(localId)) shapes.drop(localId);
  }

  function createOp(localId) {
    let sent = null; // what an earlier attempt sent: it may have reached the server
    return {
      kind: "create",
      localId,
      run: async () => {
        // A shape removed since an attempt that may have been stored (its answer was lost) is
        // sent once more, so that its id is known and the queued delete removes it.
        const payload = shapes.payload(localId) || sent;
        if (!payload) {
          // removed before it was ever sent: nothing to send, and the later delete op has nothing to do
          if (!shapes.has(localId)) records.delete(localId);
          return "done";
        }
        sent = payload;
        // the local id makes a retried create idempotent on the server
        const r = await send("POST", urls.annotations, Object.assign({ client_id: localId }, payload));
        if (r.status >= 500) return "retry";
        if (r.status === 401 || r.status === 403) return signedOut(r);
        if (r.status === 201) {
          // what the server now stores for it: an "update" that changes nothing is not sent
          records.set(localId, Object.assign(recordOf(r.body), { saved: JSON.stringify(payload) }));
          return "done";
        }
        onToast("Not saved: " + reason(r));
        removeRemote(localId);
        return "done";
      },
    };
  }

  /** Show what the server stores now for a shape whose change it refused (no change events, no
   * undo steps). */
  async function showStored(serverId) {
    const fresh = await send("GET", annotationUrl(serverId));
    if (fresh.status === 200 && fresh.body) applyRemote(fresh.body);
  }

  /** What a 409 says is stored now: its `current` (null: deleted meanwhile). An answer without
   * that (no JSON body) is asked again with a GET; undefined when that does not tell either. */
  async function conflicting(r, serverId) {
    if (r.body && r.body.current !== undefined) return r.body.current;
    const fresh = await send("GET", annotationUrl(serverId));
    if (fresh.status === 200 && fresh.body) return fresh.body;
    return fresh.status === 404 ? null : undefined;
  }

  function updateOp(localId) {
    return {
      kind: "update",
      localId,
      run: async () => {
        const m = records.get(localId);
        const payload = shapes.payload(localId);
        if (!m || !m.serverId || !payload) return "done";
        // Annotorious reports an update as a new shape is deselected, with nothing changed:
        // that one is not sent again (every new shape went out as a POST and a same PATCH)
        const body = JSON.stringify(payload);
        if (m.saved === body) return "done";
        const r = await send("PATCH", annotationUrl(m.serverId), Object.assign({ version: m.version }, payload));
        if (r.status >= 500) return "retry";
        if (r.status === 401) return signedOut(r);
        if (r.status === 200) {
          Object.assign(m, { version: r.body.version, updated: r.body.updated_at, updatedBy: r.body.updated_by, review: r.body.review_status, saved: body });
        } else if (r.status === 409) {
          const current = await conflicting(r, m.serverId);
          if (current === null) {
            onToast(reason(r, "This shape was deleted by someone else."));
            removeRemote(localId);
          } else {
            onToast(reason(r, "Someone else changed this shape first.") + (current ? " Showing their version." : ""));
            if (current) applyRemote(current);
          }
        } else if (r.status === 404) {
          onToast("This shape was deleted by someone else.");
          removeRemote(localId);
        } else {
          onToast("Not saved: " + reason(r));
          await showStored(m.serverId);
        }
        return "done";
      },
    };
  }

  function deleteOp(localId, before) {
    return {
      kind: "delete",
      localId,
      before, // the shape's record when it was deleted: an undo before this runs cancels it
      run: async () => {
        // the record it had when deleted, or (created meanwhile) the one its create stored
        const m = before && before.serverId ? before : records.get(localId);
        if (!m || !m.serverId) {
          // never saved: forget it unless it is back on screen (undo) with its own create queued
          if (m && !shapes.has(localId)) records.delete(localId);
          return "done";
        }
        const r = await send("DELETE", annotationUrl(m.serverId) + "?version=" + m.version);
        if (r.status >= 500) return "retry";
        if (r.status === 401) return signedOut(r);
        if (r.status === 409) {
          const current = await conflicting(r, m.serverId);
          if (current) {
            onToast(reason(r, "Someone else changed this shape first.") + " Their version is back on the image.");
            applyRemote(current);
          } else if (records.get(localId) === m) records.delete(localId); // already deleted: as wished
          return "done";
        }
        if (r.status === 403) {
          onToast(reason(r, "Not deleted: not allowed."));
          await showStored(m.serverId);
          return "done";
        }
        if (records.get(localId) === m) records.delete(localId);
        return "done";
      },
    };
  }

  /** A shape appeared on screen (drawn, pasted, or brought back by undo or redo). */
  function created(localId) {
    // An undone delete that has not been sent yet cancels it: the shape keeps its record on the
    // server instead of being deleted there and stored again as a new one.
    const waiting = (kind, op) => op.kind === kind && op.localId === localId && op !== inFlight;
    const pending = ops.findIndex((op) => waiting("delete", op));
    if (pending >= 0) {
      const op = ops.splice(pending, 1)[0];
      changesMade += 1;
      const current = records.get(localId);
      if (!(current && current.serverId) && op.before && op.before.serverId) records.set(localId, op.before);
      const m = records.get(localId);
      if ((m && m.serverId) || ops.some((other) => waiting("create", other))) {
        refreshStatus();
        return;
      }
    }
    records.set(localId, Object.assign({ author: user, source: "manual" }, records.get(localId) || {}, { serverId: null, version: 0 }));
    enqueue(createOp(localId));
  }

  /** A shape on screen changed (geometry or category). */
  function updated(localId) {
    enqueue(updateOp(localId));
  }

  /** A shape left the screen (deleted, or taken away by undo or redo). */
  function deleted(localId) {
    enqueue(deleteOp(localId, records.get(localId)));
  }

  /** Remember a stored annotation shown as the page loads; returns its local id. */
  function track(s) {
    const id = serverLocalId(s.id);
    records.set(id, recordOf(s));
    return id;
  }

  /** Bring the screen up to the server's list: new and newer shapes shown, gone ones removed. */
  function reconcile(list) {
    const seen = new Set();
    for (const s of list) {
      seen.add(s.id);
      const entry = [...records.entries()].find(([, m]) => m.serverId === s.id);
      if (!entry || entry[1].version < s.version) applyRemote(s);
    }
    for (const [id, m] of [...records.entries()]) if (m.serverId && !seen.has(m.serverId)) removeRemote(id);
    onChange();
  }

  /** Fetch the image's shapes and reconcile, unless changes are waiting to be sent or were made
   * while the list was on its way (it may not have them, even once they are stored). A failed or
   * refused poll changes nothing: the next one catches up. */
  async function poll() {
    if (ops.length) return;
    const before = changesMade;
    let r;
    try { r = await send("GET", urls.annotations); } catch (e) { return; }
    if (r.status !== 200 || !Array.isArray(r.body) || changesMade !== before) return;
    reconcile(r.body);
  }

  /** Resolves once nothing waits to be sent. */
  function drained() {
    if (!ops.length) return Promise.resolve();
    return new Promise((resolve) => drainWaiters.push(resolve));
  }

  /** Before going to another page: say so, and resolve once everything is sent. */
  function leaving() {
    if (ops.length) setStatus("saving", "Saving before leaving…");
    return drained();
  }

  /** The page switched to another image without loading (N / P): forget this image's shapes and
   * send what comes next to `newUrls`. Only once nothing waits to be sent (after `leaving()`); a
   * poll of the old image still on its way is then ignored. */
  function reset(newUrls) {
    if (ops.length) throw new Error("the save queue still has " + ops.length + " change(s) to send");
    urls = newUrls;
    records.clear();
    changesMade += 1;
    retryDelay = FIRST_RETRY_MS;
    setStatus("saved", "All changes saved");
  }

  return {
    records,
    created,
    updated,
    deleted,
    track,
    applyRemote,
    reconcile,
    poll,
    drained,
    leaving,
    reset,
    /** Changes not sent yet. */
    pending: () => ops.length,
    /** Nothing waiting and nothing on its way. */
    idle: () => !ops.length && !busy,
    /** The queued operations, oldest first (a copy, for tests and debugging). */
    operations: () => ops.map((op) => ({ kind: op.kind, localId: op.localId, inFlight: op === inFlight })),
    status: () => Object.assign({ pending: ops.length }, status),
  };
}
