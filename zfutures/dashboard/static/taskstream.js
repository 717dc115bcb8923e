// The task stream and what it needs, drawn on a canvas with no library (a
// cluster is often offline): the live page (status.js) draws it from the
// dashboard's events, a performance report from the data inlined in it.
"use strict";

// A task group is its key up to the last "-" (as the center counts them).
function taskGroup(key) {
  const i = key.lastIndexOf("-");
  return i > 0 ? key.slice(0, i) : key;
}

// A stable colour per group name: the same group is the same colour on
// every page and every reload.
const groupColours = new Map();
function groupColour(name) {
  let colour = groupColours.get(name);
  if (colour === undefined) {
    let h = 2166136261;
    for (let i = 0; i < name.length; i++) {
      h = Math.imul(h ^ name.charCodeAt(i), 16777619);
    }
    h >>>= 0;
    colour = "hsl(" + (h % 360) + "," + (55 + (h >>> 9) % 30) + "%," + (45 + (h >>> 17) % 15) + "%)";
    groupColours.set(name, colour);
  }
  return colour;
}

// Size a canvas's drawing buffer to its box (and the screen's pixel ratio);
// returns the context, scaled so that drawing is in CSS pixels.
function fitCanvas(canvas, height) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(100, canvas.clientWidth || 600);
  canvas.style.height = height + "px";
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx: ctx, width: width, height: height };
}

// A size for people: 1.5 MiB (as the dashboard's server-made pages write it).
function formatBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function shortAddress(address) {
  return address.replace(/^tcp:\/\//, "");
}

// The task stream: one bar per run, a row per worker thread, over the last
// windowSeconds before now (seconds, the workers' wall clock); transfers as
// thin red bars on the receiving worker's first row. runs: rows of [key,
// worker, thread, start, stop, ok]; transfers: [key, source, target, nbytes,
// start, stop]. Sets data-bars on the canvas to the bars drawn; returns it.
function drawTaskStream(canvas, runs, transfers, now, windowSeconds, sinceStart) {
  const rowKeys = new Set();
  for (const r of runs) rowKeys.add(r[1] + "\u0000" + r[2]);
  for (const t of transfers) rowKeys.add(t[2] + "\u0000" + 0);
  const rows = Array.from(rowKeys, function (k) {
    const parts = k.split("\u0000");
    return [parts[0], Number(parts[1])];
  });
  rows.sort(function (a, b) { return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] - b[1]; });
  const rowOf = new Map();
  rows.forEach(function (row, i) { rowOf.set(row[0] + "\u0000" + row[1], i); });

  const rowHeight = rows.length > 40 ? 6 : 14;
  const label = 130, axis = 16;
  const c = fitCanvas(canvas, Math.max(60, rows.length * rowHeight + axis + 4));
  const ctx = c.ctx, plot = c.width - label;
  const begin = now - windowSeconds;
  const x = function (t) { return label + (t - begin) / windowSeconds * plot; };

  // Rows' labels: each worker's name at its first row.
  ctx.font = "11px sans-serif";
  ctx.textBaseline = "middle";
  ctx.fillStyle = "#555";
  let previous = null;
  rows.forEach(function (row, i) {
    if (i % 2 === 1) {
      ctx.fillStyle = "#f4f4f4";
      ctx.fillRect(label, i * rowHeight, plot, rowHeight);
      ctx.fillStyle = "#555";
    }
    if (row[0] !== previous && rowHeight >= 10) {
      ctx.fillText(shortAddress(row[0]), 2, i * rowHeight + rowHeight / 2, label - 6);
    }
    previous = row[0];
  });

  // Bars batched by colour: one fillStyle change per group, not per bar.
  const byColour = new Map();
  let bars = 0;
  for (const r of runs) {
    if (r[4] < begin || r[3] > now) continue;
    const colour = r[5] ? groupColour(taskGroup(r[0])) : "#000";
    let list = byColour.get(colour);
    if (list === undefined) byColour.set(colour, list = []);
    list.push(r);
    bars++;
  }
  for (const [colour, list] of byColour) {
    ctx.fillStyle = colour;
    for (const r of list) {
      const row = rowOf.get(r[1] + "\u0000" + r[2]);
      const left = Math.max(label, x(r[3]));
      ctx.fillRect(left, row * rowHeight + 1, Math.max(1, x(r[4]) - left), rowHeight - 2);
    }
  }
  ctx.fillStyle = "#d62728";
  for (const t of transfers) {
    if (t[5] < begin || t[4] > now) continue;
    const row = rowOf.get(t[2] + "\u0000" + 0);
    const left = Math.max(label, x(t[4]));
    ctx.fillRect(left, row * rowHeight, Math.max(1, x(t[5]) - left), 2);
  }

  // The time axis: seconds before now (live), or since the window's start
  // (sinceStart: a report of a finished run), about eight ticks.
  const y = rows.length * rowHeight + 2;
  ctx.fillStyle = "#555";
  ctx.textBaseline = "top";
  const step = tickStep(windowSeconds / 8);
  for (let s = 0; s <= windowSeconds + 1e-9; s += step) {
    const seconds = Number(s.toPrecision(6));
    if (sinceStart) {
      ctx.fillText(seconds + " s", x(begin + s) - (s === 0 ? 0 : 12), y);
    } else {
      ctx.fillText(s === 0 ? "now" : "-" + seconds + " s", x(now - s) - (s === 0 ? 22 : 12), y);
    }
  }
  canvas.dataset.bars = String(bars);
  return bars;
}

// A round step (1, 2 or 5 times a power of ten) of at least ``rough`` seconds.
function tickStep(rough) {
  const power = Math.pow(10, Math.floor(Math.log10(Math.max(rough, 1e-6))));
  for (const m of [1, 2, 5, 10]) {
    if (m * power >= rough) return m * power;
  }
  return 10 * power;
}
