// The dashboard's live page: reads /events (a snapshot, then deltas) and
// draws the task stream (taskstream.js), progress, memory and occupancy.
"use strict";

(function () {
  const body = document.body;
  if (!body || !body.dataset.live) return;
  const WINDOW = 60, MIN_WINDOW = 5, MAX_RUNS = 20000, MAX_TRANSFERS = 5000, REDRAW_MS = 500, MAX_GROUPS = 30;
  // Pixels for the memory rows' text: "1.2 GiB / 4.0 GiB, 300.0 MiB on disk".
  const MEMORY_TEXT = 210;
  const state = {
    time: 0, receivedAt: 0, groups: {}, workers: [], runs: [], transfers: [], counters: {}
  };

  // The center's clock now: its latest time, plus the time since it came.
  function now() {
    if (!state.time) return Date.now() / 1000;
    return state.time + (performance.now() - state.receivedAt) / 1000;
  }

  function apply(message) {
    if (message.kind === "snapshot") {
      state.groups = {};
      state.runs = [];
      state.transfers = [];
    }
    if (message.time !== state.time) {
      state.time = message.time;
      state.receivedAt = performance.now();
    }
    Object.assign(state.groups, message.groups);
    state.workers = message.workers;
    state.counters = message.counters;
    Array.prototype.push.apply(state.runs, message.runs);
    Array.prototype.push.apply(state.transfers, message.transfers);
    const horizon = now() - WINDOW;
    state.runs = trim(state.runs, MAX_RUNS, function (r) { return r[4] >= horizon; });
    state.transfers = trim(state.transfers, MAX_TRANSFERS, function (t) { return t[5] >= horizon; });
  }

  function trim(list, most, keep) {
    let start = Math.max(0, list.length - most);
    while (start < list.length && !keep(list[start])) start++;
    return start > 0 ? list.slice(start) : list;
  }

  // ---------------------------------------------------------------- drawing

  function drawProgress() {
    const box = document.getElementById("progress");
    const names = Object.keys(state.groups).sort();
    const rows = [];
    const total = { done: 0, erred: 0, running: 0, waiting: 0, all: 0 };
    for (const name of names) {
      const g = state.groups[name];
      const row = {
        name: name,
        done: g.memory + g.released, erred: g.erred, running: g.processing,
        waiting: g.waiting + g.ready
      };
      row.all = row.done + row.erred + row.running + row.waiting;
      if (row.all === 0) continue;  // all forgotten
      for (const k of ["done", "erred", "running", "waiting", "all"]) total[k] += row[k];
      rows.push(row);
    }
    // Many groups (a long session): the busiest MAX_GROUPS, the total counts all.
    if (rows.length > MAX_GROUPS) {
      rows.sort(function (a, b) { return (b.all - b.done) - (a.all - a.done); });
      rows.length = MAX_GROUPS;
      rows.sort(function (a, b) { return a.name < b.name ? -1 : a.name > b.name ? 1 : 0; });
    }
    const children = [];
    if (rows.length === 0) {
      const p = document.createElement("p");
      p.className = "empty";
      p.textContent = "No tasks yet.";
      children.push(p);
    } else {
      for (const row of rows) children.push(progressRow(row.name, row, groupColour(row.name)));
      total.name = "total";
      children.push(progressRow("total", total, "#444", "total"));
    }
    box.replaceChildren.apply(box, children);
    document.getElementById("debug-counts").textContent = JSON.stringify(total);
  }

  function progressRow(name, row, colour, extraClass) {
    const div = document.createElement("div");
    div.className = "progress-row" + (extraClass ? " " + extraClass : "");
    div.dataset.group = name;
    const label = document.createElement("span");
    label.className = "progress-name";
    label.textContent = name;
    const bar = document.createElement("span");
    bar.className = "progress-bar";
    for (const [part, cls] of [["done", "done"], ["erred", "erred"], ["running", "running"],
                               ["waiting", "waiting"]]) {
      if (!row[part]) continue;
      const piece = document.createElement("span");
      piece.className = "part " + cls;
      piece.style.width = (100 * row[part] / row.all) + "%";
      if (cls === "done") piece.style.backgroundColor = colour;
      bar.appendChild(piece);
    }
    const text = document.createElement("span");
    text.className = "progress-text";
    text.textContent = row.done + " of " + row.all + (row.erred ? " (" + row.erred + " erred)" : "");
    div.append(label, bar, text);
    return div;
  }

  // A row per worker on ``canvas``: its address, then what ``drawRow(ctx, w,
  // y, x0, plot, scale, rowHeight)`` draws, against the largest of
  // ``measure(w)`` over the workers, with ``textWidth`` pixels (default 150)
  // left for its text at the right; data-workers says how many were drawn.
  function drawWorkerRows(canvas, measure, drawRow, textWidth) {
    const workers = state.workers, rowHeight = 18, label = 130;
    const c = fitCanvas(canvas, Math.max(24, workers.length * rowHeight + 4));
    const ctx = c.ctx, plot = c.width - label - (textWidth || 150);
    let scale = 1;
    for (const w of workers) scale = Math.max(scale, measure(w));
    ctx.font = "11px sans-serif";
    ctx.textBaseline = "middle";
    workers.forEach(function (w, i) {
      const y = i * rowHeight + 2;
      ctx.fillStyle = "#555";
      ctx.fillText(shortAddress(w.address), 2, y + rowHeight / 2, label - 6);
      drawRow(ctx, w, y, label, plot, scale, rowHeight);
    });
    canvas.dataset.workers = String(workers.length);
  }

  // Diagonal stripes: results spilled to disk (light grey would read as free room).
  let diskPattern = null;
  function diskFill(ctx) {
    if (!diskPattern) {
      const tile = document.createElement("canvas");
      tile.width = tile.height = 6;
      const t = tile.getContext("2d");
      t.fillStyle = "#d9d9d9";
      t.fillRect(0, 0, 6, 6);
      t.strokeStyle = "#525252";
      t.lineWidth = 1.5;
      t.beginPath();
      t.moveTo(-1, 7); t.lineTo(7, -1);
      t.moveTo(-1, 1); t.lineTo(1, -1);
      t.moveTo(5, 7); t.lineTo(7, 5);
      t.stroke();
      diskPattern = ctx.createPattern(tile, "repeat");
    }
    return diskPattern;
  }

  // Process memory against its limit (grey, up to a mark), managed within
  // it, and the results spilled to disk after it, striped (on disk: not in
  // the process's memory).
  // data-spilled on the canvas says how many workers have some drawn.
  function drawMemory() {
    const canvas = document.getElementById("memory");
    let spilling = 0;
    drawWorkerRows(canvas, function (w) {
      return Math.max(w.memory_limit || 0, w.memory + (w.spilled || 0), w.managed);
    }, function (ctx, w, y, x0, plot, scale, rowHeight) {
      const limit = w.memory_limit || scale;
      ctx.fillStyle = "#eee";
      ctx.fillRect(x0, y, plot * limit / scale, rowHeight - 4);
      const full = w.memory_limit && w.memory > 0.8 * w.memory_limit;
      ctx.fillStyle = full ? "#e8a33d" : "#9ecae1";
      ctx.fillRect(x0, y, plot * w.memory / scale, rowHeight - 4);
      ctx.fillStyle = full ? "#b35806" : "#3182bd";
      ctx.fillRect(x0, y + 3, plot * Math.min(w.managed, w.memory || w.managed) / scale,
                   rowHeight - 10);
      let text = formatBytes(w.memory) + (w.memory_limit ? " / " + formatBytes(w.memory_limit) : "");
      if (w.spilled > 0) {
        spilling++;
        ctx.fillStyle = diskFill(ctx);
        ctx.fillRect(x0 + plot * w.memory / scale, y, Math.max(1, plot * w.spilled / scale),
                     rowHeight - 4);
        text += ", " + formatBytes(w.spilled) + " on disk";
      }
      if (w.memory_limit) {  // (a mark: bars on disk may cover the limit's grey)
        ctx.fillStyle = "#555";
        ctx.fillRect(x0 + plot * limit / scale - 1, y - 1, 2, rowHeight - 2);
      }
      ctx.fillStyle = "#333";
      ctx.fillText(text, x0 + plot + 6, y + rowHeight / 2 - 2, MEMORY_TEXT - 8);
    }, MEMORY_TEXT);
    canvas.dataset.spilled = String(spilling);
  }

  // Executing (dark) and queued (light) tasks per worker, against its threads.
  function drawOccupancy() {
    drawWorkerRows(document.getElementById("occupancy"), function (w) {
      return Math.max(w.nthreads, w.executing + w.queued);
    }, function (ctx, w, y, x0, plot, scale, rowHeight) {
      ctx.fillStyle = "#eee";
      ctx.fillRect(x0, y, plot * w.nthreads / scale, rowHeight - 4);
      ctx.fillStyle = "#31a354";
      ctx.fillRect(x0, y, plot * w.executing / scale, rowHeight - 4);
      ctx.fillStyle = "#a1d99b";
      ctx.fillRect(x0 + plot * w.executing / scale, y, plot * w.queued / scale, rowHeight - 4);
      ctx.fillStyle = "#333";
      ctx.fillText(w.executing + " running, " + w.queued + " queued" + (w.paused ? ", paused" : ""),
                   x0 + plot + 6, y + rowHeight / 2 - 2);
    });
  }

  function drawCounters() {
    const k = state.counters;
    document.getElementById("counters").textContent =
      (k.tasks || 0) + " tasks submitted, " + formatBytes(k.transfer_bytes || 0) +
      " moved between workers, " + (k.messages || 0) + " messages handled by the center";
  }

  function draw() {
    lastDraw = performance.now();
    // The window grows with what there is to show, up to the last minute:
    // the first seconds of a run fill the width rather than its last tenth.
    let earliest = Infinity;
    for (const r of state.runs) earliest = Math.min(earliest, r[3]);
    for (const t of state.transfers) earliest = Math.min(earliest, t[4]);
    const span = Math.min(WINDOW, Math.max(MIN_WINDOW, Math.ceil((now() - earliest) * 1.1)));
    drawTaskStream(document.getElementById("task-stream"), state.runs, state.transfers, now(),
                   isFinite(span) ? span : MIN_WINDOW);
    drawProgress();
    drawMemory();
    drawOccupancy();
    drawCounters();
  }

  // At most one redraw per REDRAW_MS, in an animation frame (none while the
  // tab is hidden).
  let lastDraw = 0, pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    const wait = Math.max(0, REDRAW_MS - (performance.now() - lastDraw));
    setTimeout(function () {
      requestAnimationFrame(function () { pending = false; draw(); });
    }, wait);
  }

  const connection = document.getElementById("connection");
  // The page's own query string carries the token, if any (the cookie does too).
  const source = new EventSource(body.dataset.live + window.location.search);
  source.onopen = function () {
    connection.textContent = "live";
    connection.className = "connection live";
  };
  source.onerror = function () {
    connection.textContent = "reconnecting";
    connection.className = "connection lost";
  };
  source.onmessage = function (event) {
    apply(JSON.parse(event.data));
    schedule();
  };
  window.addEventListener("resize", schedule);
})();
