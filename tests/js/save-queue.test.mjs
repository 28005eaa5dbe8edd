/* The workspace's save queue (static/loupe/workspace/save-queue.js) against an in-memory
 * annotation API: order, retries and back-off, a lost session, idempotent creates, changes that
 * cancel out while they wait, conflicts and refusals (also answers without a JSON body), polling,
 * and the status the page shows. Run: node --test tests/js/ */

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { createSaveQueue, FIRST_RETRY_MS, MAX_RETRY_MS } from "../../static/loupe/workspace/save-queue.js";
import { fakeServer, fakeShapes, manualTimers, settle, URLS } from "./fakes.mjs";

/** A queue wired to fakes, and what a person does on the page (the events Annotorious reports). */
function workspace() {
  const server = fakeServer();
  const shapes = fakeShapes();
  const timers = manualTimers();
  const statuses = [];
  const toasts = [];
  let changes = 0;
  const queue = createSaveQueue({
    urls: URLS,
    user: "labeler",
    shapes,
    request: server.request,
    setTimeout: (fn, ms) => timers.setTimeout(fn, ms),
    onStatus: (s) => statuses.push(s),
    onToast: (m) => toasts.push(m),
    onChange: () => { changes += 1; },
  });
  const person = {
    draw(id, geometry, category) { shapes.draw(id, geometry, category); queue.created(id); },
    edit(id, fields) { Object.assign(shapes.onScreen.get(id), fields); queue.updated(id); },
    erase(id) {
      const was = shapes.onScreen.get(id);
      shapes.onScreen.delete(id);
      queue.deleted(id);
      return was;
    },
    /** Undo of an erase: the shape comes back as it was, under the same id. */
    bringBack(id, was) { shapes.onScreen.set(id, was); queue.created(id); },
  };
  /** A stored annotation, shown as the page loads it. */
  const loaded = (fields) => {
    const s = server.seed(fields);
    const id = queue.track(s);
    shapes.put(id, s);
    return { id, s };
  };
  return { server, shapes, timers, statuses, toasts, queue, person, loaded, changes: () => changes };
}

const status = (queue) => queue.status().state;

/** Saved, nothing waiting, nothing on its way, and every record matches a shape on screen. */
function assertSettled(w) {
  assert.equal(status(w.queue), "saved");
  assert.equal(w.queue.idle(), true);
  assert.deepEqual([...w.queue.records.keys()].sort(), [...w.shapes.onScreen.keys()].sort());
  for (const m of w.queue.records.values()) assert.ok(m.serverId, "every shape on screen is stored");
}

describe("saving as shapes change", () => {
  test("a new shape is stored once, with its local id as client_id, and the page says saved", async () => {
    const w = workspace();
    w.person.draw("new-a");
    assert.deepEqual(w.queue.status(), { state: "saving", text: "Saving 1 change(s)…", pending: 1 });
    await settle();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations]);
    const [row] = [...w.server.rows.values()];
    assert.equal(row.client_id, "new-a");
    assert.deepEqual(row.geometry, { type: "box", x: 100, y: 100, w: 50, h: 40 });
    assert.equal(w.queue.records.get("new-a").serverId, row.id);
    assert.equal(w.queue.records.get("new-a").version, 1);
    assert.deepEqual(w.statuses.at(-1), { state: "saved", text: "All changes saved", pending: 0 });
    assert.ok(w.changes() > 0, "the page is told to refresh its list");
    assertSettled(w);
  });

  test("changes go out one at a time, in order, and edits and deletes carry their version", async () => {
    const w = workspace();
    const release = w.server.hold();
    w.person.draw("new-a");
    w.person.edit("new-a", { category: 2 });
    w.person.edit("new-a", { geometry: { type: "box", x: 1, y: 2, w: 3, h: 4 } });
    await settle();
    assert.equal(w.server.started, 1, "only the first change is on its way");
    assert.equal(w.queue.pending(), 3);
    release();
    await settle();
    w.person.erase("new-a");
    await settle();
    // both edits were made before the first PATCH left: it carries both, and the second edit's
    // PATCH would send the same again, so it is not sent
    assert.deepEqual(w.server.requests, [
      "POST " + URLS.annotations,
      "PATCH /api/annotations/1/",
      "DELETE /api/annotations/1/?version=2",
    ]);
    assert.equal(w.server.rows.size, 0);
    assertSettled(w);
  });

  test("an update that changes nothing is not sent (a new shape went out as a POST and a same PATCH)", async () => {
    const w = workspace();
    w.person.draw("new-a");
    await settle();
    w.person.edit("new-a", {}); // Annotorious reports an update as the new shape is deselected
    await settle();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations]);
    w.person.edit("new-a", { category: 2 });
    w.person.edit("new-a", {});
    await settle();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations, "PATCH /api/annotations/1/"]);
    assertSettled(w);
  });

  test("edits of a shape deleted before they were sent are not sent", async () => {
    const w = workspace();
    const release = w.server.hold();
    w.person.draw("new-a");
    w.person.edit("new-a", { category: 2 });
    w.person.erase("new-a");
    release();
    await settle();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations, "DELETE /api/annotations/1/?version=1"]);
    assert.equal(w.server.rows.size, 0);
    assertSettled(w);
  });

  test("an edit sends the shape's category and geometry with the version it was made on", async () => {
    const w = workspace();
    const { id } = w.loaded({ version: 4 });
    const bodies = [];
    w.server.next.push((req) => { bodies.push(req.body); return { status: 200, body: Object.assign({}, req.body, { id: 1, version: 5, updated_at: "x", updated_by: "labeler" }) }; });
    w.person.edit(id, { category: 3 });
    await settle();
    assert.deepEqual(bodies, [{ version: 4, category: 3, geometry: { type: "box", x: 10, y: 10, w: 20, h: 20 } }]);
    assert.equal(w.queue.records.get(id).version, 5);
  });
});

describe("network trouble", () => {
  test("offline: changes wait, retried with back-off, sent once the network is back", async () => {
    const w = workspace();
    w.server.offline = true;
    w.person.draw("new-a");
    await settle();
    assert.deepEqual(w.queue.status(), { state: "offline", text: "Not saved: server unreachable, 1 change(s) waiting — retrying", pending: 1 });
    w.person.draw("new-b");
    for (let i = 0; i < 5; i++) await w.timers.fire();
    assert.deepEqual(w.timers.delays, [1000, 2000, 4000, 8000, 15000, 15000]);
    assert.equal(FIRST_RETRY_MS, 1000);
    assert.equal(MAX_RETRY_MS, 15000);
    assert.equal(status(w.queue), "offline");
    assert.equal(w.queue.pending(), 2);
    assert.equal(w.server.rows.size, 0);

    w.server.offline = false;
    await w.timers.fire();
    assert.equal(w.server.rows.size, 2);
    assertSettled(w);

    // the next outage starts again at 1 s
    w.server.offline = true;
    w.person.draw("new-c");
    await settle();
    assert.equal(w.timers.delays.at(-1), 1000);
  });

  test("server errors (5xx) are retried like a network failure", async () => {
    const w = workspace();
    w.server.next.push({ status: 503, body: { error: "restarting" } });
    w.person.draw("new-a");
    await settle();
    assert.equal(status(w.queue), "offline");
    assert.equal(w.server.rows.size, 0);
    await w.timers.fire();
    assert.equal(w.server.rows.size, 1);
    assertSettled(w);
  });

  test("a create whose answer was lost is retried without making a copy", async () => {
    const w = workspace();
    w.server.loseAnswers = 1;
    w.person.draw("new-a");
    await settle();
    assert.equal(w.server.rows.size, 1, "the server stored it");
    assert.equal(w.queue.records.get("new-a").serverId, null, "but the page does not know");
    await w.timers.fire();
    assert.deepEqual(w.server.sent("POST").length, 2);
    assert.equal(w.server.rows.size, 1);
    assert.equal(w.queue.records.get("new-a").serverId, [...w.server.rows.keys()][0]);
    assertSettled(w);
  });

  test("a lost session keeps every change and asks to log in again; they go through after", async () => {
    const w = workspace();
    w.server.next.push({ status: 403, body: { error: "Authentication credentials were not provided." } });
    w.person.draw("new-a");
    await settle();
    w.person.draw("new-b");
    assert.deepEqual(w.queue.status(), {
      state: "offline",
      text: "Not saved: Authentication credentials were not provided. — log in again (in another tab); 1 change(s) kept",
      pending: 2,
    });
    assert.equal(w.server.rows.size, 0);
    await w.timers.fire();
    assert.equal(w.server.rows.size, 2);
    assertSettled(w);
  });
  test("a lost session on an edit (401) keeps it queued and sends it after logging in again", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.next.push({ status: 401, body: { error: "Authentication credentials were not provided." } });
    w.person.edit(id, { category: 2 });
    await settle();
    assert.deepEqual(w.queue.status(), {
      state: "offline",
      text: "Not saved: Authentication credentials were not provided. — log in again (in another tab); 1 change(s) kept",
      pending: 1,
    });
    assert.deepEqual(w.toasts, []);
    assert.equal(w.shapes.onScreen.get(id).category, 2, "the edit stays on screen");
    assert.equal(w.server.rows.get(s.id).category, 1);
    await w.timers.fire();
    assert.deepEqual(w.server.sent("PATCH"), ["PATCH /api/annotations/" + s.id + "/", "PATCH /api/annotations/" + s.id + "/"]);
    assert.equal(w.server.rows.get(s.id).category, 2);
    assert.equal(w.queue.records.get(id).version, 2);
    assertSettled(w);
  });

  test("a lost session on a delete (401, no JSON body) keeps it queued and deletes after logging in again", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.next.push({ status: 401 });
    w.person.erase(id);
    await settle();
    assert.deepEqual(w.queue.status(), { state: "offline", text: "Not saved: not allowed — log in again (in another tab); 1 change(s) kept", pending: 1 });
    assert.ok(w.server.rows.has(s.id));
    await w.timers.fire();
    assert.deepEqual(w.server.sent("DELETE"), ["DELETE /api/annotations/" + s.id + "/?version=1", "DELETE /api/annotations/" + s.id + "/?version=1"]);
    assert.equal(w.server.rows.size, 0);
    assertSettled(w);
  });
});

describe("changes that cancel out while they wait", () => {
  test("a shape drawn and deleted before its save was tried is never sent", async () => {
    const w = workspace();
    w.server.offline = true;
    w.person.draw("new-a"); // tried, failed: waits
    await settle();
    w.person.draw("new-b"); // waits behind it, never tried
    w.person.erase("new-b");
    w.server.offline = false;
    await w.timers.fire();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations]);
    assert.equal(w.server.rows.size, 1);
    assert.equal(w.queue.records.has("new-b"), false);
    assertSettled(w);
  });

  test("a shape drawn offline and deleted before it was saved: nothing stays stored, and the page reports saved", async () => {
    // dbff69c: its record stayed behind and the page never reported 'saved'. Its create was
    // tried and may have reached the server (an answer lost looks the same as no network), so
    // it is sent once more and deleted (see the lost-answer case below).
    const w = workspace();
    w.server.offline = true;
    w.person.draw("new-a");
    await settle();
    w.person.erase("new-a");
    await w.timers.fire();
    assert.equal(status(w.queue), "offline");
    w.server.offline = false;
    await w.timers.fire();
    assert.equal(w.server.rows.size, 0);
    assert.equal(w.queue.records.has("new-a"), false);
    assertSettled(w);
  });

  test("a delete undone before it was sent is withdrawn: the stored shape keeps its id and version", async () => {
    // f4034ed: the shape was deleted on the server and stored again as a copy
    const w = workspace();
    const { id, s } = w.loaded({ version: 3 });
    w.server.offline = true;
    const was = w.person.erase(id);
    await settle();
    assert.equal(status(w.queue), "offline");
    w.person.bringBack(id, was);
    assert.equal(w.queue.pending(), 0);
    assert.equal(status(w.queue), "saved", "nothing is left to send, even offline");
    assert.deepEqual({ serverId: w.queue.records.get(id).serverId, version: w.queue.records.get(id).version }, { serverId: s.id, version: 3 });
    w.server.offline = false;
    await w.timers.fire();
    assert.deepEqual(w.server.requests, [], "neither a DELETE nor a new POST");
    assert.deepEqual([...w.server.rows.keys()], [s.id]);
    assertSettled(w);

    // and it can still be edited with its version
    w.person.edit(id, { category: 2 });
    await settle();
    assert.equal(w.server.rows.get(s.id).version, 4);
  });

  test("a delete waiting behind another change is withdrawn by its undo", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    const release = w.server.hold();
    w.person.draw("new-b"); // on its way
    const was = w.person.erase(id); // waits behind it
    w.person.bringBack(id, was);
    release();
    await settle();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations]);
    assert.ok(w.server.rows.has(s.id));
    assertSettled(w);
  });

  test("a delete already on its way cannot be withdrawn: its undo stores the shape again", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    const release = w.server.hold();
    const was = w.person.erase(id);
    await settle();
    w.person.bringBack(id, was);
    release();
    await settle();
    assert.deepEqual(w.server.requests, ["DELETE /api/annotations/" + s.id + "/?version=1", "POST " + URLS.annotations]);
    const rows = [...w.server.rows.values()];
    assert.equal(rows.length, 1);
    assert.notEqual(rows[0].id, s.id);
    assert.deepEqual(rows[0].geometry, s.geometry);
    assert.equal(w.queue.records.get(id).serverId, rows[0].id);
    assertSettled(w);
  });

  test("a delete that fails on its way after its undo is retried: one shape stays stored, not two", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    const release = w.server.hold();
    const was = w.person.erase(id);
    await settle();
    w.person.bringBack(id, was); // its delete is on its way: a new create is queued
    w.server.offline = true;
    release(); // ... and the delete fails
    await settle();
    w.server.offline = false;
    await w.timers.fire();
    assert.deepEqual(w.server.requests, ["DELETE /api/annotations/" + s.id + "/?version=1", "POST " + URLS.annotations]);
    assert.equal(w.server.rows.size, 1);
    assert.equal(w.queue.records.get(id).serverId, [...w.server.rows.keys()][0]);
    assertSettled(w);
  });

  test("a create whose answer was lost is resent before its delete, so nothing is left stored", async () => {
    // f4034ed: the delete did not know the stored id, and the shape stayed on the server
    const w = workspace();
    w.server.loseAnswers = 1;
    w.person.draw("new-a");
    await settle();
    assert.equal(w.server.rows.size, 1);
    w.person.erase("new-a");
    await w.timers.fire();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations, "POST " + URLS.annotations, "DELETE /api/annotations/1/?version=1"]);
    assert.equal(w.server.rows.size, 0);
    assertSettled(w);
  });

  test("drawn offline, deleted, and brought back by undo: stored once", async () => {
    const w = workspace();
    w.server.offline = true;
    w.person.draw("new-a");
    await settle();
    const was = w.person.erase("new-a");
    w.person.bringBack("new-a", was);
    assert.deepEqual(w.queue.operations().map((op) => op.kind), ["create"]);
    w.server.offline = false;
    await w.timers.fire();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations]);
    assert.equal(w.server.rows.size, 1);
    assertSettled(w);
  });
});

describe("someone else changed it first", () => {
  test("an edit made on an old version (409): their version is shown, and the person is told", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    const moved = { type: "box", x: 100, y: 120, w: 40, h: 30 };
    w.server.change(s.id, { geometry: moved });
    w.person.edit(id, { category: 2 });
    await settle();
    assert.equal(w.toasts.length, 1);
    assert.match(w.toasts[0], /^colleague changed this annotation first .* Showing their version\.$/);
    assert.deepEqual(w.shapes.onScreen.get(id), { category: 1, geometry: moved });
    assert.equal(w.queue.records.get(id).version, 2);
    assert.equal(w.queue.records.get(id).updatedBy, "colleague");
    assert.equal(w.server.rows.get(s.id).category, 1, "nothing overwritten");
    assertSettled(w);
  });

  test("a delete made on an old version (409): their version comes back", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.change(s.id, { category: 2 });
    w.person.erase(id);
    await settle();
    assert.match(w.toasts[0], /Their version is back on the image\.$/);
    assert.equal(w.shapes.onScreen.get(id).category, 2);
    assert.ok(w.server.rows.has(s.id));
    assertSettled(w);
  });

  test("deleting a shape someone else deleted already is quietly done", async () => {
    const w = workspace();
    const a = w.loaded();
    const b = w.loaded();
    w.server.rows.delete(a.s.id); // 404
    w.server.next.push(() => ({ status: 409, body: { error: "This annotation was deleted by someone else.", current: null } }));
    w.person.erase(b.id); // 409 without a current version (deleted meanwhile)
    w.person.erase(a.id);
    await settle();
    assert.deepEqual(w.toasts, []);
    assert.equal(w.queue.records.size, 0);
    assertSettled(w);
  });

  test("an edit of a shape someone deleted (404): the person is told and it leaves the screen", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.rows.delete(s.id);
    w.person.edit(id, { category: 2 });
    await settle();
    assert.deepEqual(w.toasts, ["This shape was deleted by someone else."]);
    assert.equal(w.shapes.has(id), false);
    assertSettled(w);
  });

  test("a create the server refuses (400) leaves the screen with the server's reason", async () => {
    const w = workspace();
    w.server.next.push({ status: 400, body: { error: "Shapes must lie inside the image." } });
    w.person.draw("new-a");
    await settle();
    assert.deepEqual(w.toasts, ["Not saved: Shapes must lie inside the image."]);
    assert.equal(w.shapes.has("new-a"), false);
    assertSettled(w);
  });
  test("an edit of a shape someone deleted meanwhile (409, current null): the person is told and it leaves the screen", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.next.push({ status: 409, body: { error: "This annotation was deleted by someone else.", current: null } });
    w.person.edit(id, { category: 2 });
    await settle();
    assert.deepEqual(w.toasts, ["This annotation was deleted by someone else."]);
    assert.equal(w.shapes.has(id), false);
    assert.equal(w.queue.records.has(id), false);
    assert.deepEqual(w.server.requests, ["PATCH /api/annotations/" + s.id + "/"], "sent once, not retried");
    assertSettled(w);
  });

  test("a 409 without a JSON body on an edit is not retried: the stored version is fetched and shown", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    const moved = { type: "box", x: 1, y: 2, w: 3, h: 4 };
    w.server.change(s.id, { geometry: moved });
    w.server.next.push({ status: 409 });
    w.person.edit(id, { category: 2 });
    await settle();
    assert.deepEqual(w.toasts, ["Someone else changed this shape first. Showing their version."]);
    assert.deepEqual(w.server.requests, ["PATCH /api/annotations/" + s.id + "/", "GET /api/annotations/" + s.id + "/"]);
    assert.deepEqual(w.shapes.onScreen.get(id), { category: 1, geometry: moved });
    assert.equal(w.queue.records.get(id).version, 2);
    assert.equal(w.timers.pending(), 0, "no retry waiting");
    assertSettled(w);
  });

  test("a 409 without a JSON body on an edit of a shape deleted there: it leaves the screen", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.rows.delete(s.id);
    w.server.next.push({ status: 409 });
    w.person.edit(id, { category: 2 });
    await settle();
    assert.deepEqual(w.toasts, ["This shape was deleted by someone else."]);
    assert.equal(w.shapes.has(id), false);
    assert.equal(w.timers.pending(), 0, "no retry waiting");
    assertSettled(w);
  });

  test("a 409 without a JSON body on a delete is not retried: their version comes back", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.change(s.id, { category: 2 });
    w.server.next.push({ status: 409 });
    w.person.erase(id);
    await settle();
    assert.deepEqual(w.toasts, ["Someone else changed this shape first. Their version is back on the image."]);
    assert.deepEqual(w.server.requests, ["DELETE /api/annotations/" + s.id + "/?version=1", "GET /api/annotations/" + s.id + "/"]);
    assert.equal(w.shapes.onScreen.get(id).category, 2);
    assert.equal(w.timers.pending(), 0, "no retry waiting");
    assertSettled(w);
  });

  test("an edit refused with another 4xx: the server's reason, then the stored version is shown again", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.next.push({ status: 400, body: { error: "Shapes must lie inside the image." } });
    w.person.edit(id, { geometry: { type: "box", x: -50, y: 10, w: 20, h: 20 } });
    await settle();
    assert.deepEqual(w.toasts, ["Not saved: Shapes must lie inside the image."]);
    assert.deepEqual(w.server.requests, ["PATCH /api/annotations/" + s.id + "/", "GET /api/annotations/" + s.id + "/"]);
    assert.deepEqual(w.shapes.onScreen.get(id), { category: 1, geometry: s.geometry });
    assert.equal(w.queue.records.get(id).version, 1);
    assertSettled(w);
  });

  test("an edit refused without a JSON body (403): a generic reason, then the stored version is shown again", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.next.push({ status: 403 });
    w.person.edit(id, { category: 2 });
    await settle();
    assert.deepEqual(w.toasts, ["Not saved: HTTP 403"]);
    assert.equal(w.shapes.onScreen.get(id).category, 1);
    assert.equal(w.timers.pending(), 0, "no retry waiting");
    assertSettled(w);
  });

  test("a delete refused (403): the server's reason, and the shape comes back as stored", async () => {
    const w = workspace();
    const { id, s } = w.loaded({ author: "colleague" });
    w.server.next.push({ status: 403, body: { error: "Only its author or a reviewer can delete this annotation." } });
    w.person.erase(id);
    await settle();
    assert.deepEqual(w.toasts, ["Only its author or a reviewer can delete this annotation."]);
    assert.deepEqual(w.server.requests, ["DELETE /api/annotations/" + s.id + "/?version=1", "GET /api/annotations/" + s.id + "/"]);
    assert.deepEqual(w.shapes.onScreen.get(id), { category: 1, geometry: s.geometry });
    assert.equal(w.queue.records.get(id).author, "colleague");
    assert.ok(w.server.rows.has(s.id));
    assertSettled(w);
  });

  test("a delete refused without a JSON body (403) is not retried: a generic reason, and the shape comes back", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.next.push({ status: 403 });
    w.person.erase(id);
    await settle();
    assert.deepEqual(w.toasts, ["Not deleted: not allowed."]);
    assert.ok(w.shapes.has(id));
    assert.ok(w.server.rows.has(s.id));
    assert.equal(w.timers.pending(), 0, "no retry waiting");
    assertSettled(w);
  });

  test("an edit of a shape whose create was refused is not sent", async () => {
    const w = workspace();
    const release = w.server.hold();
    w.server.next.push({ status: 400, body: { error: "Shapes must lie inside the image." } });
    w.person.draw("new-a");
    w.person.edit("new-a", { category: 2 }); // waits behind the create
    release();
    await settle();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations]);
    assert.deepEqual(w.toasts, ["Not saved: Shapes must lie inside the image."]);
    assert.equal(w.shapes.has("new-a"), false);
    assert.equal(w.server.rows.size, 0);
    assertSettled(w);
  });
});

describe("polling and leaving", () => {
  test("a poll shows colleagues' new and changed shapes, removes deleted ones, and keeps local ids", async () => {
    const w = workspace();
    w.person.draw("new-a");
    await settle();
    const mine = w.queue.records.get("new-a").serverId;
    const gone = w.loaded();
    const moved = { type: "box", x: 5, y: 6, w: 7, h: 8 };
    w.server.change(mine, { geometry: moved });
    w.server.rows.delete(gone.s.id);
    const theirs = w.server.seed({ author: "colleague", updated_by: "colleague" });
    await w.queue.poll();
    assert.deepEqual([...w.queue.records.keys()].sort(), ["new-a", "srv-" + theirs.id]);
    assert.deepEqual(w.shapes.onScreen.get("new-a").geometry, moved);
    assert.equal(w.queue.records.get("new-a").version, 2);
    assert.equal(w.queue.records.get("srv-" + theirs.id).author, "colleague");
    assert.equal(w.shapes.has(gone.id), false);
    assertSettled(w);
  });

  test("no poll while changes wait to be sent", async () => {
    const w = workspace();
    const release = w.server.hold();
    w.person.draw("new-a");
    await w.queue.poll();
    assert.equal(w.server.started, 1, "only the create");
    release();
    await settle();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations]);
  });

  test("a poll that fails (no network) changes nothing, and the next one catches up", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    w.server.change(s.id, { category: 2 });
    w.server.offline = true;
    await w.queue.poll();
    assert.equal(w.shapes.onScreen.get(id).category, 1);
    assert.equal(w.queue.records.get(id).version, 1);
    assert.equal(status(w.queue), "saved", "a failed poll is not a change waiting");
    w.server.offline = false;
    await w.queue.poll();
    assert.equal(w.shapes.onScreen.get(id).category, 2);
    assertSettled(w);
  });

  test("a poll answered with an error (non-200, or no JSON body) changes nothing", async () => {
    const w = workspace();
    const { id } = w.loaded();
    const changes = w.changes();
    w.server.next.push({ status: 500, body: { error: "Server error" } });
    await w.queue.poll();
    w.server.next.push({ status: 200 }); // e.g. a proxy's empty answer
    await w.queue.poll();
    w.server.next.push({ status: 403, body: { error: "Authentication credentials were not provided." } });
    await w.queue.poll();
    assert.deepEqual(w.server.sent("GET").length, 3);
    assert.ok(w.shapes.has(id), "an empty or refused list does not remove the shapes");
    assert.ok(w.queue.records.has(id));
    assert.equal(w.changes(), changes, "nothing to redraw");
    assertSettled(w);
  });

  test("a poll whose list was read before changes made meanwhile is not applied, even once they are stored", async () => {
    const w = workspace();
    const { id, s } = w.loaded();
    const deliver = w.server.late(); // the poll's GET is read now, its answer comes late
    const polled = w.queue.poll();
    await settle();
    w.person.draw("new-b"); // queued while the GET is out...
    w.person.erase(id);
    await settle(); // ... and stored before its answer arrives
    assert.deepEqual(w.server.requests, ["GET " + URLS.annotations, "POST " + URLS.annotations, "DELETE /api/annotations/" + s.id + "/?version=1"]);
    assert.equal(w.queue.pending(), 0);
    deliver(); // the list from before: the old shape, not the new one
    await polled;
    assert.ok(w.shapes.has("new-b"), "the new shape is not removed as 'gone on the server'");
    assert.ok(w.queue.records.has("new-b"));
    assert.equal(w.shapes.onScreen.size, 1, "the erased shape is not brought back");
    assertSettled(w);

    await w.queue.poll(); // the next poll applies
    assert.deepEqual([...w.queue.records.keys()], ["new-b"]);
  });

  test("a poll whose answer arrives while a change waits is not applied", async () => {
    const w = workspace();
    const { id } = w.loaded();
    const deliver = w.server.late();
    const polled = w.queue.poll();
    await settle();
    const release = w.server.hold();
    w.person.edit(id, { category: 2 }); // on its way when the list arrives
    deliver();
    await polled;
    assert.equal(w.changes(), 0, "the list is not applied (nor the page told to redraw)");
    release();
    await settle();
    assert.equal(w.queue.records.get(id).version, 2);
    assertSettled(w);
  });

  test("leaving waits until every change is sent, and says so", async () => {
    const w = workspace();
    w.server.offline = true;
    w.person.draw("new-a");
    await settle();
    let left = false;
    w.queue.leaving().then(() => { left = true; });
    assert.equal(w.queue.status().text, "Saving before leaving…");
    await w.timers.fire();
    assert.equal(left, false);
    w.server.offline = false;
    await w.timers.fire();
    assert.equal(left, true);
    assert.equal(w.server.rows.size, 1);
  });
});

describe("switching images inside the page (N / P)", () => {
  const OTHER = { annotations: "/api/images/8/annotations/", annotation: URLS.annotation };

  test("reset forgets the image's shapes and sends the next image's changes to its URL", async () => {
    const w = workspace();
    w.loaded();
    w.person.draw("new-a");
    await w.queue.leaving();
    w.queue.reset(OTHER);
    assert.equal(w.queue.records.size, 0);
    w.shapes.onScreen.clear(); // the page takes the old image's shapes off the screen
    w.person.draw("new-b");
    await settle();
    assert.deepEqual(w.server.requests, ["POST " + URLS.annotations, "POST " + OTHER.annotations]);
    await w.queue.poll();
    assert.equal(w.server.requests.at(-1), "GET " + OTHER.annotations);
    assertSettled(w);
  });

  test("reset is refused while changes wait to be sent (they would go to the wrong image)", async () => {
    const w = workspace();
    w.server.offline = true;
    w.person.draw("new-a");
    await settle();
    assert.throws(() => w.queue.reset(OTHER), /1 change\(s\) to send/);
    assert.equal(w.queue.pending(), 1);
  });

  test("a poll of the previous image that answers after the switch is not applied", async () => {
    const w = workspace();
    w.loaded();
    const deliver = w.server.late();
    const polled = w.queue.poll();
    await settle();
    w.queue.reset(OTHER);
    w.shapes.onScreen.clear();
    deliver();
    await polled;
    assert.equal(w.shapes.onScreen.size, 0, "the previous image's shape is not drawn on this one");
    assert.equal(w.queue.records.size, 0);
  });
});

test("needs request and setTimeout", () => {
  assert.throws(() => createSaveQueue({ urls: URLS, shapes: fakeShapes(), setTimeout }), /request/);
  assert.throws(() => createSaveQueue({ urls: URLS, shapes: fakeShapes(), request: fakeServer().request }), /setTimeout/);
});
