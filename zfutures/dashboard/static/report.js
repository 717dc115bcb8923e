// A performance report (zfutures.performance_report): the file brings its
// data as zfReport.add(...) calls written while the run went, and draws once
// the browser has read it all (the "load" event comes even for a file cut
// short by a client that was killed).
"use strict";

const zfReport = (function () {
  const runs = [], transfers = [];
  let started = null, stopped = null, leftOut = 0;

  function begin(info) { started = info.started; }
  function add(part) {
    Array.prototype.push.apply(runs, part.runs);
    Array.prototype.push.apply(transfers, part.transfers);
  }
  function finish(info) { stopped = info.stopped; leftOut = info.left_out || 0; }

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }

  function drawGroups() {
    const groups = new Map();
    for (const r of runs) {
      const name = taskGroup(r[0]);
      let g = groups.get(name);
      if (g === undefined) groups.set(name, g = { runs: 0, failed: 0, seconds: 0, longest: 0 });
      const seconds = Math.max(0, r[4] - r[3]);
      if (r[5]) { g.runs++; g.seconds += seconds; } else { g.failed++; }
      g.longest = Math.max(g.longest, seconds);
    }
    const body = document.querySelector("#groups tbody");
    const names = Array.from(groups.keys()).sort(function (a, b) {
      return groups.get(b).seconds - groups.get(a).seconds;
    });
    for (const name of names) {
      const g = groups.get(name), row = document.createElement("tr");
      const swatch = document.createElement("td");
      swatch.textContent = name;
      swatch.style.borderLeft = "6px solid " + groupColour(name);
      row.appendChild(swatch);
      cell(row, String(g.runs));
      cell(row, String(g.failed));
      cell(row, g.seconds.toFixed(3));
      cell(row, g.runs ? (g.seconds / g.runs * 1000).toFixed(2) + " ms" : "-");
      cell(row, (g.longest * 1000).toFixed(2) + " ms");
      body.appendChild(row);
    }
  }

  function draw() {
    let first = Infinity, last = -Infinity;
    for (const r of runs) { first = Math.min(first, r[3]); last = Math.max(last, r[4]); }
    for (const t of transfers) { first = Math.min(first, t[4]); last = Math.max(last, t[5]); }
    if (runs.length + transfers.length === 0) { first = last = started || 0; }
    const span = Math.max(last - first, 1e-3);
    drawTaskStream(document.getElementById("task-stream"), runs, transfers, last, span, true);
    drawGroups();
    let bytes = 0;
    for (const t of transfers) bytes += t[3];
    if (transfers.length) {
      document.getElementById("transfers").textContent =
        transfers.length + " transfers, " + formatBytes(bytes) + " in all.";
    }
    document.getElementById("summary").textContent =
      runs.length + " task runs on " + new Set(runs.map(function (r) { return r[1]; })).size +
      " workers over " + span.toFixed(3) + " s" +
      (stopped === null ? " (the report ends early: its client stopped in the middle)." : ".") +
      (leftOut ? " " + leftOut + " more runs are not drawn (a report keeps 1,000,000)." : "");
  }

  window.addEventListener("load", draw);
  return { begin: begin, add: add, finish: finish };
})();
