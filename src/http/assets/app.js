// Squall dashboard: live queue counts (server-sent events), sortable tables, small
// charts, lease countdowns, queue actions and task waits. No framework, no build
// step. Text from the broker is only ever put into the page with textContent, never
// as HTML, so a payload such as <script> stays text.
"use strict";

(function () {
  const page = document.body.dataset.page;

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    }).then(async (r) => {
      const data = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error((data.code || r.status) + ": " + (data.message || r.statusText));
      return data;
    });
  }

  function fmtAge(ms) {
    if (ms === null || ms === undefined) return "";
    const s = Math.floor(ms / 1000);
    if (s === 0) return ms + " ms";
    if (s < 120) return s + " s";
    if (s < 7200) return Math.floor(s / 60) + " min";
    return Math.floor(s / 3600) + " h";
  }

  // A small line chart of the last 120 values.
  function Chart(id) {
    this.canvas = document.getElementById(id);
    this.now = document.getElementById(id + "-now");
    this.values = [];
  }
  Chart.prototype.push = function (v, label) {
    if (!this.canvas) return;
    this.values.push(v);
    if (this.values.length > 120) this.values.shift();
    if (this.now) this.now.textContent = label;
    const c = this.canvas, g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    const max = Math.max(1, ...this.values);
    const step = c.width / (Math.max(30, this.values.length) - 1);
    g.beginPath();
    this.values.forEach((y, i) => {
      const x = i * step, py = c.height - 2 - (y / max) * (c.height - 6);
      if (i === 0) g.moveTo(x, py); else g.lineTo(x, py);
    });
    g.strokeStyle = "#2f6fed";
    g.lineWidth = 1.5;
    g.stroke();
  };

  const charts = { depth: new Chart("chart-depth"), pub: new Chart("chart-pub"), ack: new Chart("chart-ack") };

  function rowClass(q) {
    if (q.dead > 0) return "warn-dead";
    if ((q.oldest_ready_age_ms || 0) > 60000) return "warn-old";
    return "";
  }

  function cells(q) {
    return {
      name: q.name, ready: q.ready, delayed: q.delayed, leased: q.leased, dead: q.dead,
      consumers: q.consumers, oldest: q.oldest_ready_age_ms || 0,
      publish: q.publish_rate.toFixed(1), ack: q.ack_rate.toFixed(1),
      state: q.paused ? "paused" : "active",
    };
  }

  function newRow(q) {
    const tr = document.createElement("tr");
    tr.dataset.queue = q.name;
    for (const f of ["name", "ready", "delayed", "leased", "dead", "consumers", "oldest", "publish", "ack", "state"]) {
      const td = document.createElement("td");
      td.dataset.field = f;
      if (f === "name") {
        const a = document.createElement("a");
        a.href = "/queues/" + encodeURIComponent(q.name);
        a.textContent = q.name;
        td.appendChild(a);
      }
      tr.appendChild(td);
    }
    return tr;
  }

  function updateRow(tr, q) {
    const c = cells(q);
    tr.className = rowClass(q);
    for (const td of tr.children) {
      const f = td.dataset.field;
      td.dataset.value = c[f];
      if (f === "name") continue;
      td.textContent = f === "oldest" ? fmtAge(q.oldest_ready_age_ms) : String(c[f]);
    }
  }

  // Sortable tables: click a header; the choice is kept across live updates.
  let sortKey = null, sortDir = 1;
  function sortTable(table) {
    if (!sortKey) return;
    const th = table.querySelector('th[data-sort="' + sortKey + '"]');
    const text = th && th.dataset.type === "text";
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const val = (tr) => {
      const td = tr.querySelector('[data-field="' + sortKey + '"]');
      const v = td ? td.dataset.value : "";
      return text ? v : parseFloat(v) || 0;
    };
    rows.sort((a, b) => {
      const x = val(a), y = val(b);
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
    rows.forEach((r) => body.appendChild(r));
  }
  document.querySelectorAll("table.sortable").forEach((table) => {
    table.querySelectorAll("th[data-sort]").forEach((th) => {
      th.addEventListener("click", () => {
        sortDir = sortKey === th.dataset.sort ? -sortDir : (th.dataset.type === "text" ? 1 : -1);
        sortKey = th.dataset.sort;
        table.querySelectorAll("th").forEach((h) => h.classList.remove("sorted-asc", "sorted-desc"));
        th.classList.add(sortDir > 0 ? "sorted-asc" : "sorted-desc");
        sortTable(table);
      });
    });
  });

  function totals(queues) {
    let depth = 0, pub = 0, ack = 0;
    for (const q of queues) {
      depth += q.ready + q.delayed + q.leased;
      pub += q.publish_rate;
      ack += q.ack_rate;
    }
    return { depth, pub, ack };
  }

  function onQueues(ev) {
    const table = document.getElementById("queues");
    if (table) {
      const body = table.tBodies[0];
      const seen = new Set();
      for (const q of ev.queues) {
        seen.add(q.name);
        let tr = Array.from(body.rows).find((r) => r.dataset.queue === q.name);
        if (!tr) { tr = newRow(q); body.appendChild(tr); }
        updateRow(tr, q);
      }
      if (!ev.more) {
        Array.from(body.rows).forEach((r) => { if (!seen.has(r.dataset.queue)) r.remove(); });
      }
      const empty = document.getElementById("no-queues");
      if (empty) empty.hidden = ev.queues.length > 0;
      sortTable(table);
      const t = totals(ev.queues);
      const set = (id, v) => { const e = document.getElementById(id); if (e) e.textContent = String(v); };
      set("ov-queues", ev.queues.length + (ev.more ? "+" : ""));
      set("ov-ready", ev.queues.reduce((s, q) => s + q.ready, 0));
      set("ov-leased", ev.queues.reduce((s, q) => s + q.leased, 0));
      set("ov-dead", ev.queues.reduce((s, q) => s + q.dead, 0));
      charts.depth.push(t.depth, String(t.depth));
      charts.pub.push(t.pub, t.pub.toFixed(1));
      charts.ack.push(t.ack, t.ack.toFixed(1));
    }
    const section = document.getElementById("queue");
    if (section) {
      const q = ev.queues.find((x) => x.name === section.dataset.queue);
      if (!q) return;
      for (const f of ["ready", "delayed", "leased", "dead", "consumers"]) {
        const e = document.getElementById("q-" + f);
        if (e) e.textContent = String(q[f]);
      }
      const old = document.getElementById("q-oldest");
      if (old) old.textContent = fmtAge(q.oldest_ready_age_ms);
      const st = document.getElementById("q-state");
      if (st) st.textContent = q.paused ? "paused" : "active";
      const t = totals([q]);
      charts.depth.push(t.depth, String(t.depth));
      charts.pub.push(t.pub, t.pub.toFixed(1));
      charts.ack.push(t.ack, t.ack.toFixed(1));
    }
  }

  if ((page === "index" || page === "queue") && window.EventSource) {
    const live = document.getElementById("live");
    const es = new EventSource("/api/v1/events");
    es.addEventListener("queues", (m) => {
      if (live) live.classList.add("on");
      try { onQueues(JSON.parse(m.data)); } catch (e) { console.error(e); }
    });
    es.onerror = () => { if (live) live.classList.remove("on"); };
  }

  // Queue actions, each behind a confirmation when it destroys or moves tasks.
  const section = document.getElementById("queue");
  if (section) {
    const name = section.dataset.queue;
    const base = "/api/v1/queues/" + encodeURIComponent(name) + "/";
    const result = document.getElementById("action-result");
    document.querySelectorAll("button[data-action]").forEach((b) => {
      b.addEventListener("click", () => {
        const action = b.dataset.action;
        if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;
        b.disabled = true;
        post(base + action, {}).then((data) => {
          if (action === "delete") { window.location.href = "/"; return; }
          result.textContent = data.count !== undefined ? action + ": " + data.count + " tasks" : action + ": done";
          window.location.reload();
        }).catch((e) => { result.textContent = e.message; result.className = "error"; b.disabled = false; });
      });
    });
    const form = document.getElementById("config");
    if (form) {
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const body = {};
        for (const input of form.querySelectorAll("input")) {
          if (input.type === "checkbox") body[input.name] = input.checked;
          else if (input.value !== "") body[input.name] = Number(input.value);
        }
        post(base + "config", body).then(() => {
          result.textContent = "configuration saved";
          result.className = "small";
        }).catch((e) => { result.textContent = e.message; result.className = "error"; });
      });
    }
  }

  // Lease countdowns.
  function tick() {
    document.querySelectorAll("[data-deadline]").forEach((e) => {
      const d = parseInt(e.dataset.deadline, 10);
      if (!d) { e.textContent = ""; return; }
      const left = d - Date.now();
      e.textContent = left > 0 ? fmtAge(left) + " left" : "expiring";
    });
  }
  tick();
  setInterval(tick, 1000);

  // A task page follows the task until it finishes.
  const task = document.getElementById("task");
  if (task && task.dataset.finished !== "true") {
    const id = task.dataset.task;
    const timer = setInterval(() => {
      fetch("/api/v1/tasks/" + id, { credentials: "same-origin" }).then((r) => r.json()).then((t) => {
        if (!t || t.id === undefined) return;
        const set = (eid, v) => { const e = document.getElementById(eid); if (e) e.textContent = v; };
        set("t-state", t.state);
        set("t-attempts", t.attempts + " of " + t.max_attempts);
        set("t-holder", t.lease_holder || "");
        set("t-error", t.last_error || "");
        set("t-result", t.result || "");
        const lease = document.getElementById("t-lease");
        if (lease) lease.dataset.deadline = t.lease_deadline_ms || 0;
        if (t.finished) {
          clearInterval(timer);
          const w = document.getElementById("t-waiting");
          if (w) w.hidden = true;
        }
      }).catch(() => {});
    }, 1000);
  }
})();
