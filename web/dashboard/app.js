// The kvsync admin dashboard: one EventSource on /admin/live (the browser reconnects it on its
// own; every (re)connect starts with a full snapshot), a fleet table kept as one <tr> per stream
// (a render touches only changed cells and re-orders rows only when the order changed), and
// uPlot charts of the routing feed. Plain browser JavaScript: nothing to build.
/* global uPlot */

(() => {
  const $ = (id) => document.getElementById(id);
  // one formatter: toLocaleString builds a new one per call, too slow for thousands of cells
  const intFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const fmtInt = (n) => (n === null || n === undefined ? "—" : intFormat.format(Math.round(n)));
  const fmtNum = (n, d) => (n === null || n === undefined ? "—" : n.toFixed(d));
  const OTHER_STATES = new Set(["connecting", "resyncing", "none"]);

  /** the fleet table's columns: key, header, kind (text sorts as text), cell text */
  const COLUMNS = [
    { key: "pod", width: 150, label: "pod", text: true, show: (r) => r.pod },
    { key: "rank", width: 50, label: "rank", show: (r) => (r.rank === null ? "—" : String(r.rank)) },
    { key: "model", width: 160, label: "model", text: true, show: (r) => r.model },
    { key: "lora", width: 100, label: "adapter", text: true, show: (r) => r.lora || "—" },
    { key: "state", width: 90, label: "state", text: true, show: (r) => r.state },
    {
      key: "healthy",
      width: 110,
      label: "rotation",
      text: true,
      show: (r) =>
        r.healthy === null ? "—" : r.healthy ? "in" : `out${r.healthReason ? `: ${r.healthReason}` : ""}`,
    },
    { key: "lastSeq", width: 90, label: "last seq", show: (r) => fmtInt(r.lastSeq) },
    { key: "eps", width: 80, label: "events/s", show: (r) => fmtNum(r.eps, 1) },
    { key: "lag", width: 70, label: "lag ms", show: (r) => (r.lag === null ? "—" : fmtInt(r.lag * 1000)) },
    { key: "gaps", width: 60, label: "gaps", show: (r) => fmtInt(r.gaps) },
    { key: "replays", width: 70, label: "replays", show: (r) => fmtInt(r.replays) },
    { key: "resyncs", width: 70, label: "resyncs", show: (r) => fmtInt(r.resyncs) },
    { key: "gpu", width: 90, label: "GPU blocks", show: (r) => fmtInt(r.gpu) },
    { key: "cpu", width: 90, label: "CPU blocks", show: (r) => fmtInt(r.cpu) },
    { key: "storage", width: 110, label: "storage blocks", show: (r) => fmtInt(r.storage) },
    { key: "trust", width: 60, label: "trust", show: (r) => fmtNum(r.trust, 2) },
  ];
  const STATE_COL = COLUMNS.findIndex((c) => c.key === "state");
  const ROT_COL = COLUMNS.findIndex((c) => c.key === "healthy");
  const TRUST_COL = COLUMNS.findIndex((c) => c.key === "trust");
  /** below this trust a stream's claims count for less than half (the gateway's default --trust-suspect-below) */
  const LOW_TRUST = 0.5;

  // ------------------------------------------------------------------ fleet

  /** id → {row, tr, cells, dirty} */
  const streams = new Map();
  const fleet = { sortKey: "pod", sortDir: 1, filter: "", state: "", order: [], scheduled: false };
  const metrics = {
    snapshotAt: null,
    firstFullRenderAt: null,
    firstRenderMs: null,
    lastRenderMs: 0,
    maxRenderMs: 0,
    renders: 0,
    rows: 0,
  };
  window.__kvsyncDashboard = metrics;
  let snapshotSeen = false;

  const head = $("fleet-head");
  const cols = $("fleet-cols");
  for (const c of COLUMNS) {
    const col = document.createElement("col");
    col.style.width = `${c.width}px`;
    cols.appendChild(col);
    const th = document.createElement("th");
    th.textContent = c.label;
    th.dataset.key = c.key;
    th.scope = "col";
    if (c.text) th.className = "text";
    th.addEventListener("click", () => {
      fleet.sortDir = fleet.sortKey === c.key ? -fleet.sortDir : 1;
      fleet.sortKey = c.key;
      schedule();
    });
    head.appendChild(th);
  }

  function upsert(row) {
    const s = streams.get(row.id);
    if (s) {
      s.row = row;
      s.dirty = true;
    } else streams.set(row.id, { row, tr: null, cells: null, dirty: true });
  }

  /** a stream's <tr>, made the first time it scrolls into view */
  function trOf(s) {
    if (s.tr === null) {
      const tr = document.createElement("tr");
      tr.dataset.id = s.row.id;
      s.cells = COLUMNS.map((c) => {
        const td = document.createElement("td");
        if (c.text) td.className = "text";
        tr.appendChild(td);
        return td;
      });
      s.tr = tr;
      s.dirty = true;
    }
    if (s.dirty) paint(s);
    return s.tr;
  }

  function paint(s) {
    const r = s.row;
    for (let i = 0; i < COLUMNS.length; i++) {
      const t = COLUMNS[i].show(r);
      if (s.cells[i].textContent !== t) s.cells[i].textContent = t;
    }
    s.tr.dataset.state = r.state;
    s.cells[STATE_COL].className = `text state state-${r.state}`;
    s.cells[ROT_COL].className = r.healthy === false ? "text unhealthy" : "text";
    s.cells[TRUST_COL].className = r.trust !== null && r.trust < LOW_TRUST ? "low-trust" : "";
    s.dirty = false;
  }

  function visible(r) {
    if (fleet.state !== "") {
      if (fleet.state === "other" ? !OTHER_STATES.has(r.state) : r.state !== fleet.state) return false;
    }
    if (fleet.filter === "") return true;
    const f = fleet.filter;
    return (
      r.pod.toLowerCase().includes(f) ||
      r.model.toLowerCase().includes(f) ||
      r.lora.toLowerCase().includes(f) ||
      r.state.includes(f)
    );
  }

  function compare(a, b) {
    const k = fleet.sortKey;
    const x = a.row[k];
    const y = b.row[k];
    let c;
    if (x === y) c = 0;
    else if (x === null || x === undefined) c = 1;
    else if (y === null || y === undefined) c = -1;
    else if (typeof x === "number" && typeof y === "number") c = x - y;
    else c = String(x) < String(y) ? -1 : 1;
    if (c === 0) c = a.row.id < b.row.id ? -1 : a.row.id > b.row.id ? 1 : 0;
    return c * fleet.sortDir;
  }

  function schedule() {
    if (fleet.scheduled) return;
    fleet.scheduled = true;
    requestAnimationFrame(render);
  }

  // Only the rows in view (and a margin) are in the DOM: a table of thousands of rows costs the
  // browser seconds of layout, a window of ~60 rows next to nothing. Rows have a fixed height, so
  // spacers above and below keep the scrollbar true to the whole list.
  const ROW_H = 22;
  const MARGIN = 10;
  const wrap = $("fleet-wrap");
  const body = $("fleet-body");
  const topPad = document.createElement("tr");
  const bottomPad = document.createElement("tr");
  for (const pad of [topPad, bottomPad]) {
    pad.className = "pad";
    const td = document.createElement("td");
    td.colSpan = COLUMNS.length;
    pad.appendChild(td);
  }
  let shown = [];
  wrap.addEventListener("scroll", () => schedule(), { passive: true });
  window.addEventListener("resize", () => schedule());

  function render() {
    const t0 = performance.now();
    fleet.scheduled = false;
    const list = [];
    for (const s of streams.values()) if (visible(s.row)) list.push(s);
    list.sort(compare);
    fleet.order = list;
    const first = Math.max(0, Math.floor(wrap.scrollTop / ROW_H) - MARGIN);
    // the wrap grows with its rows up to 60vh: size the window for the full height
    const count = Math.ceil(Math.max(wrap.clientHeight, window.innerHeight * 0.6) / ROW_H) + 2 * MARGIN;
    const end = Math.min(list.length, first + count);
    const win = [];
    for (let i = first; i < end; i++) win.push(trOf(list[i]));
    topPad.style.height = `${first * ROW_H}px`;
    bottomPad.style.height = `${(list.length - end) * ROW_H}px`;
    if (win.length !== shown.length || win.some((tr, i) => tr !== shown[i]))
      body.replaceChildren(topPad, ...win, bottomPad);
    shown = win;
    for (const th of head.children) {
      if (th.dataset.key === fleet.sortKey)
        th.setAttribute("aria-sort", fleet.sortDir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    summarize(list.length);
    const ms = performance.now() - t0;
    metrics.lastRenderMs = ms;
    metrics.maxRenderMs = Math.max(metrics.maxRenderMs, ms);
    metrics.renders++;
    metrics.rows = list.length;
    if (metrics.firstFullRenderAt === null && snapshotSeen && streams.size > 0) {
      metrics.firstRenderMs = ms;
      // painted: the frame after this one shows the rows
      requestAnimationFrame(() => {
        metrics.firstFullRenderAt ??= performance.now();
      });
    }
  }

  function summarize(shown) {
    const counts = {};
    for (const s of streams.values()) counts[s.row.state] = (counts[s.row.state] ?? 0) + 1;
    const parts = Object.keys(counts)
      .sort()
      .map((k) => `${counts[k]} ${k}`);
    $("summary").textContent = `${streams.size} streams: ${parts.join(", ")}`;
    $("shown").textContent = shown === streams.size ? "" : `${shown} shown`;
  }

  $("filter").addEventListener("input", (e) => {
    fleet.filter = e.target.value.trim().toLowerCase();
    schedule();
  });
  $("state-filter").addEventListener("change", (e) => {
    fleet.state = e.target.value;
    schedule();
  });

  // ------------------------------------------------------------------ routing

  const HISTORY = 300;
  const PALETTE = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
  const routing = { points: [], decisions: [], pods: [], charts: {} };

  function chartWidth(el) {
    return Math.max(300, el.clientWidth || el.parentElement.clientWidth || 360);
  }

  function makeChart(el, series, yLabel) {
    const opts = {
      width: chartWidth(el),
      height: 180,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [{}, { label: yLabel, size: 50 }],
      series: [{}, ...series],
    };
    el.replaceChildren();
    return new uPlot(opts, [[], ...series.map(() => [])], el);
  }

  function podsOf(points) {
    const seen = new Set();
    for (const p of points) for (const k of Object.keys(p.pods)) seen.add(k);
    return [...seen].sort();
  }

  function drawRouting() {
    const pts = routing.points;
    const xs = pts.map((p) => p.t);
    const pods = podsOf(pts);
    if (!routing.charts.requests || pods.join("\n") !== routing.pods.join("\n")) {
      routing.charts.requests?.destroy();
      routing.pods = pods;
      routing.charts.requests = makeChart(
        $("chart-requests"),
        pods.map((p, i) => ({ label: p, stroke: PALETTE[i % PALETTE.length], width: 1.5 })),
        "req/s",
      );
    }
    routing.charts.requests.setData([xs, ...pods.map((pod) => pts.map((p) => p.pods[pod] ?? 0))]);
    const rate = (n, p) => (p.promptTokens > 0 ? (n / p.promptTokens) * 100 : null);
    routing.charts.hits.setData([
      xs,
      pts.map((p) => rate(p.predictedTokens, p)),
      pts.map((p) => rate(p.cachedTokens, p)),
    ]);
    const ms = (v) => (v === null ? null : v * 1000);
    routing.charts.ttft.setData([xs, pts.map((p) => ms(p.ttftP50)), pts.map((p) => ms(p.ttftP90))]);
  }

  function initRouting() {
    $("routing").hidden = false;
    if (routing.charts.hits) return;
    routing.charts.hits = makeChart(
      $("chart-hits"),
      [
        { label: "predicted", stroke: "#2563eb", width: 1.5, spanGaps: true },
        { label: "engine-reported", stroke: "#059669", width: 1.5, spanGaps: true },
      ],
      "%",
    );
    routing.charts.ttft = makeChart(
      $("chart-ttft"),
      [
        { label: "p50", stroke: "#2563eb", width: 1.5, spanGaps: true },
        { label: "p90", stroke: "#dc2626", width: 1.5, spanGaps: true },
      ],
      "ms",
    );
    window.addEventListener("resize", () => {
      for (const k of Object.keys(routing.charts)) {
        const c = routing.charts[k];
        c.setSize({ width: chartWidth(c.root.parentElement), height: 180 });
      }
    });
  }

  const time = (ms) => new Date(ms).toTimeString().slice(0, 8);
  const cell = (tag, text, cls) => {
    const e = document.createElement(tag);
    e.textContent = text;
    if (cls) e.className = cls;
    return e;
  };

  function decisionEl(d) {
    const el = document.createElement("details");
    el.className = "decision";
    el.dataset.id = String(d.id);
    const name = (c) => `${c.pod}${c.rank === null ? "" : `#${c.rank}`}`;
    const choice = d.choice ? name(d.choice) : "none";
    // the policy's pick is the first ranked; after a retry the request went to `choice`
    const best = d.retry
      ? d.ranked.find((c) => c.pod === d.choice.pod && c.rank === d.choice.rank)
      : d.ranked[0];
    const retry = d.retry ? `  (retried: ${name(d.retry.from)} failed, ${d.retry.reason})` : "";
    el.appendChild(
      cell(
        "summary",
        `${time(d.t)}  ${d.model}  ${fmtInt(d.promptTokens)} prompt tokens → ${choice}${retry}` +
          (best ? `  (matched ${fmtInt(best.matchedTokens)} tokens, score ${best.score.toFixed(3)})` : "") +
          `  ${d.policy}, ${d.candidates} candidates`,
      ),
    );
    if (d.retry) el.classList.add("retried");
    const t = document.createElement("table");
    const h = document.createElement("tr");
    for (const x of [
      "pod",
      "rank",
      "live",
      "matched tokens",
      "trust",
      "saved tokens",
      "in flight",
      "prefill tokens",
      "score",
    ])
      h.appendChild(cell("th", x));
    t.appendChild(h);
    d.ranked.forEach((c) => {
      const tr = document.createElement("tr");
      if (d.choice && c.pod === d.choice.pod && c.rank === d.choice.rank) tr.className = "chosen";
      for (const x of [
        c.pod,
        c.rank === null ? "—" : String(c.rank),
        c.live ? "yes" : "no",
        fmtInt(c.matchedTokens),
        fmtNum(c.trust ?? 1, 2),
        fmtInt(c.savedTokens),
        fmtInt(c.inflight),
        fmtInt(c.prefillTokens),
        c.score.toFixed(4),
      ])
        tr.appendChild(cell("td", x));
      t.appendChild(tr);
    });
    el.appendChild(t);
    return el;
  }

  const MAX_DECISIONS = 50;
  function addDecisions(list) {
    const box = $("decisions");
    for (const d of list) {
      // a decision comes again under its id when a retry sent the request elsewhere
      const at = routing.decisions.findIndex((x) => x.id === d.id);
      if (at >= 0) {
        routing.decisions[at] = d;
        box.querySelector(`details.decision[data-id="${d.id}"]`)?.replaceWith(decisionEl(d));
        continue;
      }
      routing.decisions.push(d);
      box.prepend(decisionEl(d));
    }
    while (routing.decisions.length > MAX_DECISIONS) {
      routing.decisions.shift();
      box.lastElementChild?.remove();
    }
  }

  // ------------------------------------------------------------------ feed

  const conn = $("conn");
  const setConn = (cls, text) => {
    conn.className = `conn ${cls}`;
    conn.textContent = text;
  };

  const es = new EventSource("/admin/live");
  es.addEventListener("open", () => setConn("conn-live", "live"));
  es.addEventListener("error", () =>
    setConn(es.readyState === EventSource.CLOSED ? "conn-down" : "conn-connecting", "reconnecting…"),
  );
  es.addEventListener("hello", (e) => {
    const h = JSON.parse(e.data);
    if (h.routing) initRouting();
  });
  es.addEventListener("fleet", (e) => {
    const m = JSON.parse(e.data);
    const ids = new Set();
    for (const r of m.rows) {
      ids.add(r.id);
      upsert(r);
    }
    for (const id of [...streams.keys()]) if (!ids.has(id)) streams.delete(id);
    snapshotSeen = true;
    metrics.snapshotAt ??= performance.now();
    schedule();
  });
  es.addEventListener("fleet-delta", (e) => {
    const m = JSON.parse(e.data);
    for (const r of m.upsert) upsert(r);
    for (const id of m.remove) streams.delete(id);
    if (m.upsert.length > 0 || m.remove.length > 0) schedule();
  });
  es.addEventListener("routing", (e) => {
    const m = JSON.parse(e.data);
    routing.points = m.series.slice(-HISTORY);
    routing.decisions = [];
    $("decisions").replaceChildren();
    addDecisions(m.decisions);
    drawRouting();
  });
  es.addEventListener("routing-tick", (e) => {
    const m = JSON.parse(e.data);
    routing.points.push(...m.points);
    if (routing.points.length > HISTORY) routing.points.splice(0, routing.points.length - HISTORY);
    drawRouting();
  });
  es.addEventListener("decisions", (e) => addDecisions(JSON.parse(e.data)));
})();
