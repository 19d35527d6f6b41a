// ZoneScaler dashboard: polls GET api/cluster every second and draws the cell map, the shards,
// and what changed between two polls. Plain ES2020, no dependencies, works offline.
//
// Every field of the API answer is optional (older masters lack `world`, `cells`, `events`,
// `metrics_addr`); readers below turn anything unexpected into "unknown" and nothing throws.
//
// Test hooks: after every successful poll `document.body.dataset` holds shards, alive, cells,
// epoch, clients, entities, updates, events, selected (+ selectedKind, state, error, overlay).
// `clients` is the shards' client connections; the `clients` overlay ("Player density") draws
// each cell's players, the API's per-cell `clients`.
'use strict';

(() => {
  const POLL_MS = 1000;
  const FETCH_TIMEOUT_MS = 2500;
  const STALE_MS = 3500; // no successful poll for this long: the status says "stale"
  const FLASH_MS = 4000; // how long a changed cell stays outlined
  const MAX_EVENTS = 300;
  const DEFAULT_TICK_HZ = 30; // the server's default; its tick budget colours "tick p99"
  // Above this many removed × added cells, a change is reported as a rebuild rather than matched
  // cell by cell (keeps one poll's work bounded on maps of thousands of cells).
  const MAX_MATCH_WORK = 250000;

  // Tableau 10: distinct on a dark background and for the common colour-vision deficiencies.
  const PALETTE = ['#4e79a7', '#f28e2b', '#59a14f', '#e15759', '#b07aa1',
    '#edc948', '#76b7b2', '#ff9da7', '#9c755f', '#bab0ac'];
  const UNOWNED = '#3a4350';

  function shardColour(id) {
    if (id === null || id === undefined) return UNOWNED;
    if (id >= 0 && id < PALETTE.length) return PALETTE[id];
    // Beyond the palette: golden-angle hues stay distinct from their neighbours.
    const hue = (id * 137.508 + 20) % 360;
    return `hsl(${hue.toFixed(1)}, 55%, 58%)`;
  }

  // ---------------------------------------------------------------- safe readers
  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
  const str = (v) => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : null);
  const arr = (v) => (Array.isArray(v) ? v : []);
  const obj = (v) => (v !== null && typeof v === 'object' && !Array.isArray(v) ? v : null);
  const bool = (v) => (typeof v === 'boolean' ? v : null);

  const NF = new Intl.NumberFormat('en-US');
  const fmtInt = (v) => (v === null || v === undefined ? '—' : NF.format(Math.round(v)));
  const fmtMs = (v) => (v === null || v === undefined ? '—' : `${v < 10 ? v.toFixed(1) : Math.round(v)} ms`);
  // A share of one core (0..1, or more for a whole process) as a percentage.
  const fmtPct = (v) => (v === null || v === undefined ? '—' : `${Math.round(v * 100)} %`);
  const fmtBytes = (v) => {
    if (v === null || v === undefined) return '—';
    if (v >= 1 << 30) return `${(v / (1 << 30)).toFixed(1)} GiB`;
    if (v >= 1 << 20) return `${Math.round(v / (1 << 20))} MiB`;
    if (v >= 1 << 10) return `${Math.round(v / (1 << 10))} KiB`;
    return `${Math.round(v)} B`;
  };
  const fmtM = (v) => {
    if (v === null) return '—';
    const r = Math.round(v * 100) / 100;
    return String(r);
  };
  function fmtAxis(v) {
    const a = Math.abs(v);
    if (a >= 10000) return `${+(v / 1000).toFixed(1)}k`;
    return String(+v.toFixed(2));
  }
  const pad2 = (n) => String(n).padStart(2, '0');
  function isoTime(ms) {
    const d = new Date(ms);
    return Number.isNaN(d.getTime()) ? '' : d.toISOString();
  }
  function fmtTime(ms) {
    const d = new Date(ms);
    if (Number.isNaN(d.getTime())) return '—';
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  // ---------------------------------------------------------------- model from the API answer
  function readRect(v) {
    const r = arr(v).map(num);
    if (r.length !== 4 || r.some((x) => x === null)) return null;
    const [x0, z0, x1, z1] = r;
    if (!(x1 > x0 && z1 > z0)) return null;
    return r;
  }

  function readShard(s) {
    s = obj(s);
    if (!s) return null;
    const id = num(s.id);
    if (id === null) return null;
    return {
      id,
      addr: str(s.addr),
      linkAddr: str(s.link_addr),
      alive: bool(s.alive),
      weight: num(s.weight),
      cells: num(s.cells),
      ownedEntities: num(s.owned_entities),
      inTransit: num(s.in_transit),
      proxies: num(s.proxies),
      clients: num(s.clients),
      tick: num(s.tick),
      // Over the shard's last heartbeat window (~200 ms), as is tick_ms_p99.
      tickP50: num(s.tick_ms_p50),
      tickP99: num(s.tick_ms_p99),
      tickCpu: num(s.tick_cpu_share),
      tickOverruns: num(s.tick_overruns),
      handoffsOut: num(s.handoffs_out),
      handoffsIn: num(s.handoffs_in),
      transitP99: num(s.handoff_transit_ms_p99),
      clientBytesOut: num(s.client_bytes_out_per_s),
      linkBytesOut: num(s.link_bytes_out_per_s),
      rss: num(s.rss_bytes),
      processCpu: num(s.process_cpu_share),
      metricsAddr: str(s.metrics_addr),
    };
  }

  function readCell(c, i) {
    c = obj(c);
    if (!c) return null;
    const rect = readRect(c.rect);
    if (!rect) return null;
    return {
      id: str(c.id) ?? `#${i}`,
      level: num(c.level),
      rect,
      shard: num(c.shard),
      entities: num(c.entities),
      clients: num(c.clients), // players' avatars in the cell, connected or following a redirect
      tickShare: num(c.tick_share), // estimated share of its owner's tick
      tickCpu: num(c.tick_cpu_share), // estimated share of one core
    };
  }

  function readModel(raw) {
    const shardList = [];
    const shards = new Map();
    for (const s of arr(raw.shards).map(readShard)) {
      if (s && !shards.has(s.id)) { shards.set(s.id, s); shardList.push(s); }
    }
    shardList.sort((a, b) => a.id - b.id);
    const cells = [];
    const cellById = new Map();
    arr(raw.cells).forEach((c, i) => {
      const cell = readCell(c, i);
      if (cell && !cellById.has(cell.id)) { cells.push(cell); cellById.set(cell.id, cell); }
    });
    let world = null;
    const w = obj(raw.world);
    if (w) world = readRect([w.min_x, w.min_z, w.max_x, w.max_z]);
    if (!world && cells.length) {
      world = [Infinity, Infinity, -Infinity, -Infinity];
      for (const c of cells) {
        world[0] = Math.min(world[0], c.rect[0]); world[1] = Math.min(world[1], c.rect[1]);
        world[2] = Math.max(world[2], c.rect[2]); world[3] = Math.max(world[3], c.rect[3]);
      }
    }
    const sum = (f) => shardList.reduce((acc, s) => (f(s) === null ? acc : acc + f(s)), 0);
    const anyHas = (f) => shardList.some((s) => f(s) !== null);
    const totalEntities = num(raw.total_entities)
      ?? (anyHas((s) => s.ownedEntities) ? sum((s) => s.ownedEntities) + sum((s) => s.inTransit) : null);
    const apiEvents = [];
    for (const e of arr(raw.events)) {
      const o = obj(e);
      if (!o) continue;
      const text = str(o.text);
      if (text === null) continue;
      apiEvents.push({ at: num(o.at_ms) ?? Date.now(), kind: str(o.kind) ?? 'master', text });
    }
    return {
      epoch: num(raw.epoch),
      placed: bool(raw.placed),
      expected: num(raw.expected_shards),
      totalEntities,
      handoffsTotal: num(raw.handoffs_total) ?? (anyHas((s) => s.handoffsOut) ? sum((s) => s.handoffsOut) : null),
      players: num(raw.players),
      tickHz: num(raw.tick_hz),
      hasCells: Array.isArray(raw.cells),
      world,
      shardList,
      shards,
      cells,
      cellById,
      clients: anyHas((s) => s.clients) ? sum((s) => s.clients) : null,
      alive: shardList.filter((s) => s.alive !== false).length,
      apiEvents,
    };
  }

  // ---------------------------------------------------------------- what changed between polls
  const contains = (outer, inner) => inner[0] >= outer[0] && inner[1] >= outer[1]
    && inner[2] <= outer[2] && inner[3] <= outer[3];
  const shardName = (id) => (id === null ? 'no shard' : `shard ${id}`);
  function listIds(ids, max = 4) {
    const head = ids.slice(0, max).join(', ');
    return ids.length > max ? `${head}, … (+${ids.length - max})` : head;
  }

  /** Events and cell flashes for the change prev → next (both models). */
  function diff(prev, next) {
    const events = [];
    const flashes = []; // [cellId, kind]
    const now = Date.now();
    const ev = (kind, text, ref) => events.push({ at: now, kind, text, ref, source: 'observed' });

    if (prev.epoch !== null && next.epoch !== null && prev.epoch !== next.epoch) {
      ev('epoch', `epoch ${prev.epoch} → ${next.epoch}`);
    }
    for (const s of next.shardList) {
      const p = prev.shards.get(s.id);
      if (!p) ev('joined', `shard ${s.id} joined${s.addr ? ` (${s.addr})` : ''}`, { shard: s.id });
      else if (p.alive !== false && s.alive === false) ev('died', `shard ${s.id} died`, { shard: s.id });
      else if (p.alive === false && s.alive !== false) ev('back', `shard ${s.id} is alive again`, { shard: s.id });
    }
    for (const p of prev.shardList) {
      if (!next.shards.has(p.id)) ev('left', `shard ${p.id} left the cluster`);
    }

    // An older master reports no cells at all: nothing to compare (not "every cell removed").
    if (!prev.hasCells || !next.hasCells) return { events, flashes };

    // Owner changes, grouped by (from, to) so a dead shard's cells read as one line.
    const moves = new Map();
    const removed = [];
    const added = [];
    for (const c of next.cells) {
      const p = prev.cellById.get(c.id);
      if (!p) { added.push(c); continue; }
      if (p.shard !== c.shard) {
        const key = `${p.shard}>${c.shard}`;
        if (!moves.has(key)) moves.set(key, { from: p.shard, to: c.shard, ids: [] });
        moves.get(key).ids.push(c.id);
        flashes.push([c.id, 'move']);
      }
    }
    for (const p of prev.cells) if (!next.cellById.has(p.id)) removed.push(p);
    for (const m of moves.values()) {
      const text = m.ids.length === 1
        ? `cell ${m.ids[0]} moved ${shardName(m.from)} → ${m.to === null ? 'no shard' : m.to}`
        : `${m.ids.length} cells moved ${shardName(m.from)} → ${m.to === null ? 'no shard' : m.to}: ${listIds(m.ids)}`;
      ev('move', text, { cell: m.ids[0] });
    }

    // Splits (a removed leaf now covered by new leaves) and merges (a new leaf covering removed ones).
    if (removed.length && added.length && removed.length * added.length <= MAX_MATCH_WORK) {
      const usedAdded = new Set();
      const usedRemoved = new Set();
      for (const r of removed) {
        const kids = added.filter((a) => contains(r.rect, a.rect));
        if (kids.length < 2) continue;
        usedRemoved.add(r.id);
        kids.forEach((k) => { usedAdded.add(k.id); flashes.push([k.id, 'split']); });
        const owners = [...new Set(kids.map((k) => k.shard))];
        const ownerText = owners.length === 1 && owners[0] === r.shard ? ''
          : ` (now on ${owners.map(shardName).join(', ')})`;
        ev('split', `cell ${r.id} split into ${kids.length}${ownerText}`, { cell: kids[0].id });
      }
      for (const a of added) {
        if (usedAdded.has(a.id)) continue;
        const parts = removed.filter((r) => !usedRemoved.has(r.id) && contains(a.rect, r.rect));
        if (parts.length < 2) continue;
        usedAdded.add(a.id);
        parts.forEach((p) => usedRemoved.add(p.id));
        flashes.push([a.id, 'merge']);
        ev('merge', `cells ${listIds(parts.map((p) => p.id))} merged into ${a.id} (${shardName(a.shard)})`, { cell: a.id });
      }
      const restAdded = added.filter((a) => !usedAdded.has(a.id));
      const restRemoved = removed.filter((r) => !usedRemoved.has(r.id));
      if (restAdded.length || restRemoved.length) {
        restAdded.forEach((a) => flashes.push([a.id, 'change']));
        ev('change', `cell map changed: ${restAdded.length} cells added, ${restRemoved.length} removed`);
      }
    } else if (removed.length || added.length) {
      added.forEach((a) => flashes.push([a.id, 'change']));
      ev('change', `cell map changed: ${added.length} cells added, ${removed.length} removed`);
    }
    return { events, flashes };
  }

  // ---------------------------------------------------------------- state
  const st = {
    model: null, // last applied model
    updates: 0,
    lastOk: 0,
    error: null, // { title, text, kind }
    events: [], // newest first: { at, kind, text, ref?, source, fresh? }
    apiSeen: new Set(),
    flashes: new Map(), // cellId -> { kind, until }
    selected: null, // { kind: 'shard', id } | { kind: 'cell', id, rect }
    hover: null, // cell
    overlay: 'entities',
    view: null, // map transform of the last draw
    borderCache: null, // { cells, segs }
  };
  try {
    const saved = window.localStorage.getItem('zonescaler.overlay');
    if (saved === 'owners' || saved === 'entities' || saved === 'clients') st.overlay = saved;
  } catch { /* storage may be disabled */ }

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  };
  const swatch = (id) => {
    const s = el('span', 'sw');
    s.style.background = shardColour(id);
    return s;
  };

  function addEvents(list) {
    if (!list.length) return;
    for (const e of list) e.fresh = true;
    st.events = list.concat(st.events).sort((a, b) => b.at - a.at).slice(0, MAX_EVENTS);
  }

  // ---------------------------------------------------------------- polling
  async function poll() {
    const started = performance.now();
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    try {
      const res = await fetch('api/cluster', { cache: 'no-store', signal: ctrl.signal, headers: { Accept: 'application/json' } });
      const text = await res.text();
      let body = null;
      try { body = JSON.parse(text); } catch { /* reported below */ }
      if (!res.ok) {
        const msg = str(obj(body)?.error) ?? (text.trim().slice(0, 300) || res.statusText);
        if (res.status === 503) fail('not-formed', 'Cluster not formed yet', msg);
        else fail('http', `API error (HTTP ${res.status})`, msg);
      } else if (!obj(body)) {
        fail('bad', 'API answered something that is not a JSON object', text.trim().slice(0, 200));
      } else {
        apply(body);
      }
    } catch (e) {
      const msg = e && e.name === 'AbortError' ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s` : String((e && e.message) || e);
      fail('unreachable', 'API unreachable', msg);
    } finally {
      clearTimeout(timer);
      setTimeout(poll, Math.max(0, POLL_MS - (performance.now() - started)));
    }
  }

  function fail(kind, title, text) {
    const was = st.error;
    st.error = { kind, title, text };
    if (!was && st.model) {
      addEvents([{ at: Date.now(), kind: 'api-down', text: `${title}: ${text}`, source: 'observed' }]);
      renderEvents();
    }
    document.body.dataset.state = 'error';
    document.body.dataset.error = `${title}: ${text}`;
    renderStatus();
    if (!st.model) drawMap();
  }

  function apply(raw) {
    let next;
    try {
      next = readModel(raw);
    } catch (e) { // readModel is defensive; this only guards against a bug in it
      fail('bad', 'Could not read the API answer', String(e && e.message));
      return;
    }
    const prev = st.model;
    const newEvents = [];
    if (st.error && prev) newEvents.push({ at: Date.now(), kind: 'api-up', text: 'API answering again', source: 'observed' });
    if (prev) {
      const d = diff(prev, next);
      newEvents.push(...d.events);
      const until = Date.now() + FLASH_MS;
      for (const [id, kind] of d.flashes) st.flashes.set(id, { kind, until });
    } else {
      newEvents.push({
        at: Date.now(), kind: 'info', source: 'observed',
        text: `connected: epoch ${next.epoch ?? '?'}, ${next.shardList.length} shards, ${next.cells.length} cells`,
      });
    }
    for (const e of next.apiEvents) {
      const key = `${e.at}|${e.kind}|${e.text}`;
      if (st.apiSeen.has(key)) continue;
      st.apiSeen.add(key);
      newEvents.push({ ...e, source: 'master' });
    }
    if (st.apiSeen.size > 4 * MAX_EVENTS) { // keep the dedup set bounded: what the API sends now
      st.apiSeen = new Set(next.apiEvents.map((e) => `${e.at}|${e.kind}|${e.text}`));
    }
    st.model = next;
    st.error = null;
    st.updates += 1;
    st.lastOk = Date.now();
    if (next.cells !== (st.borderCache && st.borderCache.cells)) st.borderCache = null;
    addEvents(newEvents);
    if (st.selected && st.selected.kind === 'cell') {
      const c = next.cellById.get(st.selected.id);
      if (c) st.selected.rect = c.rect;
    }
    try {
      render();
    } catch (e) { // a bug in this page, not in the answer: say so, keep polling
      console.error(e);
      $('banner').hidden = false;
      $('banner-title').textContent = 'Dashboard error';
      $('banner-text').textContent = String((e && e.message) || e);
    }
    publish();
  }

  /** The test hooks: plain strings on <body data-…>. */
  function publish() {
    const m = st.model;
    const ds = document.body.dataset;
    ds.state = 'ok';
    ds.error = '';
    if (m) {
      ds.shards = String(m.shardList.length);
      ds.alive = String(m.alive);
      ds.cells = String(m.cells.length);
      ds.epoch = m.epoch === null ? '' : String(m.epoch);
      ds.clients = m.clients === null ? '' : String(m.clients);
      ds.entities = m.totalEntities === null ? '' : String(m.totalEntities);
    }
    ds.updates = String(st.updates);
    ds.events = String(st.events.length);
    publishSelection();
  }
  function publishSelection() {
    const ds = document.body.dataset;
    ds.selected = st.selected ? String(st.selected.id) : '';
    ds.selectedKind = st.selected ? st.selected.kind : '';
    ds.overlay = st.overlay;
  }

  // ---------------------------------------------------------------- rendering: header, banner
  function render() {
    renderTotals();
    renderStatus();
    renderShards();
    renderDetails();
    renderEvents();
    renderLegend();
    fitLayout();
    drawMap();
  }

  function renderTotals() {
    const m = st.model;
    if (!m) return;
    $('t-epoch').textContent = m.epoch === null ? '—' : String(m.epoch);
    const expected = m.expected !== null ? ` / ${m.expected}` : '';
    $('t-shards').textContent = `${m.alive}${expected}`;
    $('t-shards').title = `${m.alive} alive of ${m.shardList.length} known${m.expected !== null ? `, ${m.expected} expected` : ''}`;
    $('t-cells').textContent = m.hasCells ? fmtInt(m.cells.length) : '—';
    $('t-entities').textContent = fmtInt(m.totalEntities);
    $('t-players').textContent = fmtInt(m.players);
    $('t-clients').textContent = fmtInt(m.clients);
    $('t-handoffs').textContent = fmtInt(m.handoffsTotal);
  }

  function renderStatus() {
    const banner = $('banner');
    const m = st.model;
    let title = null;
    let text = '';
    let waiting = false;
    if (st.error) {
      ({ title, text } = st.error);
      waiting = st.error.kind === 'not-formed';
    } else if (m && m.placed === false) {
      title = 'Cells not placed yet';
      text = `${m.shardList.length}${m.expected !== null ? ` of ${m.expected}` : ''} shards joined; the master places cells once every expected shard has joined.`;
      waiting = true;
    }
    banner.hidden = title === null;
    banner.classList.toggle('waiting', waiting);
    $('banner-title').textContent = title ?? '';
    $('banner-text').textContent = text;
    document.body.classList.toggle('stale-data', Boolean(st.error && m));
    const age = st.lastOk ? (Date.now() - st.lastOk) / 1000 : null;
    let s;
    if (st.error) s = st.lastOk ? `${st.error.title.toLowerCase()} · last data ${age.toFixed(0)} s ago` : st.error.title.toLowerCase();
    else if (!st.lastOk) s = 'connecting…';
    else if (age * 1000 > STALE_MS) { s = `stale · updated ${age.toFixed(0)} s ago`; document.body.dataset.state = 'stale'; }
    else s = `live · updated ${age.toFixed(1)} s ago`;
    $('status-text').textContent = s;
  }
  setInterval(() => { if (st.lastOk || st.error) renderStatus(); }, 500);

  // ---------------------------------------------------------------- shards table
  const rowEls = new Map(); // shard id -> { tr, cells: [] }
  const COLS = 13;
  function setText(td, text, cls) {
    if (td.textContent !== text) td.textContent = text;
    if (cls !== undefined && td.className !== cls) td.className = cls;
  }
  function tickBudgetMs() { return 1000 / (st.model && st.model.tickHz ? st.model.tickHz : DEFAULT_TICK_HZ); }

  function metricsHref(addr) {
    if (!addr) return null;
    if (/^https?:\/\/[^\s"'<>]+$/.test(addr)) return addr;
    const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(addr);
    if (!m) return null;
    // A wildcard bind address is not somewhere to browse to: use the host this page came from.
    const host = ['0.0.0.0', '[::]', '[::0]'].includes(m[1]) ? (window.location.hostname || '127.0.0.1') : m[1];
    const h = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
    return `http://${h}:${m[2]}/metrics`;
  }

  function renderShards() {
    const m = st.model;
    const body = $('shard-rows');
    const live = new Set();
    const budget = tickBudgetMs();
    let prevRow = null;
    for (const s of m.shardList) {
      live.add(s.id);
      let row = rowEls.get(s.id);
      if (!row) {
        const tr = el('tr');
        tr.tabIndex = 0;
        tr.dataset.shard = String(s.id);
        const tds = [];
        for (let i = 0; i < COLS; i++) tds.push(tr.appendChild(el('td')));
        const idTd = tds[0];
        idTd.className = 'l';
        idTd.append(swatch(s.id), el('b', null, String(s.id)));
        row = { tr, tds, metrics: null };
        rowEls.set(s.id, row);
      }
      // keep rows in id order
      const want = prevRow ? prevRow.nextSibling : body.firstChild;
      if (want !== row.tr) body.insertBefore(row.tr, want);
      prevRow = row.tr;
      const t = row.tds;
      const alive = s.alive;
      t[1].className = 'l';
      const badgeText = alive === false ? 'dead' : alive === true ? 'alive' : '?';
      if (!t[1].firstChild || t[1].firstChild.textContent !== badgeText) {
        t[1].replaceChildren(el('span', `badge ${alive === false ? 'dead' : 'alive'}`, badgeText));
      }
      setText(t[2], s.addr ?? '—', 'l addr');
      const drawnCells = m.hasCells ? m.cells.reduce((n, c) => n + (c.shard === s.id ? 1 : 0), 0) : null;
      setText(t[3], fmtInt(s.cells ?? drawnCells));
      setText(t[4], fmtInt(s.ownedEntities) + (s.inTransit ? ` +${s.inTransit}` : ''));
      t[4].title = s.inTransit ? `${s.inTransit} in transit` : '';
      setText(t[5], fmtInt(s.proxies));
      setText(t[6], fmtInt(s.clients));
      const tickCls = s.tickP99 === null ? '' : s.tickP99 > budget ? 'bad' : s.tickP99 > 0.75 * budget ? 'warn' : '';
      setText(t[7], fmtMs(s.tickP99), tickCls);
      t[7].title = `tick budget ${budget.toFixed(1)} ms`;
      const cpuCls = s.tickCpu === null ? '' : s.tickCpu > 0.8 ? 'bad' : s.tickCpu > 0.6 ? 'warn' : '';
      setText(t[8], fmtPct(s.tickCpu), cpuCls);
      setText(t[9], `${fmtInt(s.handoffsOut)} / ${fmtInt(s.handoffsIn)}`);
      setText(t[10], fmtMs(s.transitP99));
      setText(t[11], fmtBytes(s.rss));
      const href = metricsHref(s.metricsAddr);
      if (row.metrics !== href) {
        row.metrics = href;
        t[12].className = 'l addr';
        if (href) {
          const a = el('a', null, s.metricsAddr);
          a.href = href;
          a.target = '_blank';
          a.rel = 'noopener';
          a.addEventListener('click', (e) => e.stopPropagation());
          t[12].replaceChildren(a);
        } else {
          t[12].replaceChildren(document.createTextNode(s.metricsAddr ?? '—'));
        }
      }
      row.tr.classList.toggle('dead', alive === false);
      row.tr.classList.toggle('selected', isShardHighlighted(s.id));
    }
    for (const [id, row] of rowEls) {
      if (!live.has(id)) { row.tr.remove(); rowEls.delete(id); }
    }
    // totals row
    const sum = (f) => m.shardList.reduce((a, s) => a + (f(s) ?? 0), 0);
    const foot = $('shard-foot');
    const transit = sum((s) => s.inTransit);
    const cells = [
      ['l', 'total'], ['l', `${m.alive} alive`], ['l', ''],
      ['', fmtInt(m.hasCells ? m.cells.length : sum((s) => s.cells))],
      // owned + in transit, as in each row, so it adds up to the Entities total at the top
      ['', fmtInt(sum((s) => s.ownedEntities)) + (transit ? ` +${fmtInt(transit)}` : '')],
      ['', fmtInt(sum((s) => s.proxies))],
      ['', fmtInt(sum((s) => s.clients))], ['', ''], ['', ''],
      ['', `${fmtInt(sum((s) => s.handoffsOut))} / ${fmtInt(sum((s) => s.handoffsIn))}`], ['', ''],
      ['', fmtBytes(sum((s) => s.rss))], ['l', ''],
    ];
    const tr = el('tr');
    for (const [cls, text] of cells) tr.appendChild(el('td', cls, text));
    foot.replaceChildren(m.shardList.length ? tr : emptyRow());
  }
  function emptyRow() {
    const tr = el('tr');
    const td = tr.appendChild(el('td', 'l', 'no shards reported'));
    td.colSpan = COLS;
    return tr;
  }

  function isShardHighlighted(id) {
    const sel = st.selected;
    if (!sel) return false;
    if (sel.kind === 'shard') return sel.id === id;
    const c = st.model && st.model.cellById.get(sel.id);
    return Boolean(c && c.shard === id);
  }

  // ---------------------------------------------------------------- details panel
  function kv(dl, key, value, mono) {
    dl.appendChild(el('dt', null, key));
    const dd = el('dd', mono ? 'mono' : null);
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
    dl.appendChild(dd);
  }
  function shardLink(id) {
    if (id === null) return document.createTextNode('none');
    const b = el('button', 'link-btn');
    b.style.marginLeft = '0';
    b.append(swatch(id), `shard ${id}`);
    b.addEventListener('click', () => select({ kind: 'shard', id }));
    return b;
  }

  function renderDetails() {
    const m = st.model;
    const box = $('details');
    const sel = st.selected;
    $('clear-selection').hidden = !sel;
    if (!m) return;
    if (!sel) {
      $('details-title').textContent = 'Details';
      const p = el('p', 'hint', 'Click a shard row or a cell for its numbers; double-click a cell for its shard. Esc clears.');
      const dl = el('dl', 'kv');
      if (m.world) {
        const [x0, z0, x1, z1] = m.world;
        kv(dl, 'World', `${fmtM(x1 - x0)} × ${fmtM(z1 - z0)} m`);
        kv(dl, 'Bounds', `x ${fmtM(x0)} … ${fmtM(x1)}, z ${fmtM(z0)} … ${fmtM(z1)}`, true);
      }
      if (m.hasCells) {
        const levels = new Map();
        for (const c of m.cells) levels.set(c.level, (levels.get(c.level) ?? 0) + 1);
        const lv = [...levels.entries()].sort((a, b) => (a[0] ?? 0) - (b[0] ?? 0))
          .map(([l, n]) => `${n} at level ${l ?? '?'}`).join(', ');
        kv(dl, 'Cells', `${fmtInt(m.cells.length)}${lv ? ` (${lv})` : ''}`);
      } else {
        kv(dl, 'Cells', 'not reported by this master');
      }
      kv(dl, 'Placed', m.placed === null ? '—' : m.placed ? 'yes' : 'no');
      box.replaceChildren(p, dl);
      return;
    }
    if (sel.kind === 'shard') {
      const s = m.shards.get(sel.id);
      $('details-title').textContent = 'Shard';
      const h = el('h3');
      h.append(swatch(sel.id), `Shard ${sel.id}`);
      if (!s) {
        box.replaceChildren(h, el('p', 'hint', 'No longer reported by the master.'));
        return;
      }
      h.append(el('span', `badge ${s.alive === false ? 'dead' : 'alive'}`, s.alive === false ? 'dead' : 'alive'));
      const dl = el('dl', 'kv');
      kv(dl, 'Client address', s.addr ?? '—', true);
      kv(dl, 'Link address', s.linkAddr ?? '—', true);
      const href = metricsHref(s.metricsAddr);
      if (href) {
        const a = el('a', null, href);
        a.href = href; a.target = '_blank'; a.rel = 'noopener';
        kv(dl, 'Metrics', a, true);
      } else kv(dl, 'Metrics', s.metricsAddr ?? '—', true);
      kv(dl, 'Weight', fmtInt(s.weight));
      const mine = m.cells.filter((c) => c.shard === s.id);
      const area = mine.reduce((a, c) => a + (c.rect[2] - c.rect[0]) * (c.rect[3] - c.rect[1]), 0);
      const worldArea = m.world ? (m.world[2] - m.world[0]) * (m.world[3] - m.world[1]) : 0;
      const pct = worldArea ? ` · ${(100 * area / worldArea).toFixed(1)} % of the world` : '';
      kv(dl, 'Cells', `${fmtInt(s.cells ?? mine.length)}${m.hasCells ? pct : ''}`);
      kv(dl, 'Owned entities', fmtInt(s.ownedEntities));
      kv(dl, 'In transit', fmtInt(s.inTransit));
      kv(dl, 'Proxies', fmtInt(s.proxies));
      kv(dl, 'Clients', fmtInt(s.clients));
      kv(dl, 'Tick', fmtInt(s.tick));
      kv(dl, 'Tick p50 / p99', `${fmtMs(s.tickP50)} / ${fmtMs(s.tickP99)} (budget ${tickBudgetMs().toFixed(1)} ms)`);
      kv(dl, 'Tick CPU', `${fmtPct(s.tickCpu)} of a core · ${fmtInt(s.tickOverruns)} ticks over budget`);
      kv(dl, 'Process CPU', `${fmtPct(s.processCpu)} of a core`);
      kv(dl, 'Sent', `${fmtBytes(s.clientBytesOut)}/s to clients · ${fmtBytes(s.linkBytesOut)}/s to shards`);
      kv(dl, 'Memory (RSS)', fmtBytes(s.rss));
      kv(dl, 'Handoffs out / in', `${fmtInt(s.handoffsOut)} / ${fmtInt(s.handoffsIn)}`);
      kv(dl, 'Transit p99', fmtMs(s.transitP99));
      box.replaceChildren(h, dl);
      return;
    }
    // a cell
    const c = m.cellById.get(sel.id);
    $('details-title').textContent = 'Cell';
    const h = el('h3', null, `Cell ${sel.id}`);
    if (!c) {
      box.replaceChildren(h, el('p', 'hint', 'No longer in the cell map (split or merged); its old outline is dashed on the map.'));
      return;
    }
    const [x0, z0, x1, z1] = c.rect;
    const dl = el('dl', 'kv');
    kv(dl, 'Owner', shardLink(c.shard));
    const owner = c.shard === null ? null : m.shards.get(c.shard);
    if (owner && owner.alive === false) kv(dl, 'Owner state', 'dead: waiting to be moved');
    kv(dl, 'Level', c.level === null ? '—' : String(c.level));
    kv(dl, 'Rect', `[${fmtM(x0)}, ${fmtM(z0)}, ${fmtM(x1)}, ${fmtM(z1)}]`, true);
    kv(dl, 'Size', `${fmtM(x1 - x0)} × ${fmtM(z1 - z0)} m`);
    kv(dl, 'Entities', fmtInt(c.entities));
    kv(dl, 'Players', fmtInt(c.clients));
    kv(dl, 'Tick share', `${fmtPct(c.tickShare)} of its owner's tick (${fmtPct(c.tickCpu)} of a core; estimated)`);
    const km2 = ((x1 - x0) * (z1 - z0)) / 1e6;
    if (c.entities !== null) kv(dl, 'Entity density', `${fmtInt(c.entities / km2)} / km²`);
    box.replaceChildren(h, dl);
  }

  // ---------------------------------------------------------------- events list
  let renderedEvents = null;
  function renderEvents() {
    if (renderedEvents === st.events) return;
    renderedEvents = st.events;
    const list = $('events');
    const frag = document.createDocumentFragment();
    for (const e of st.events) {
      const li = el('li', e.ref ? 'ref' : null);
      if (e.fresh) { li.classList.add('fresh'); e.fresh = false; }
      const t = el('time', null, fmtTime(e.at));
      t.dateTime = isoTime(e.at);
      t.title = new Date(e.at).toLocaleString();
      const text = el('span', null, e.text);
      if (e.source === 'master') text.appendChild(el('span', 'src', 'master'));
      const label = e.kind.startsWith('api-') ? 'api' : e.kind;
      li.append(t, el('span', `kind ${e.kind.replace(/[^a-z-]/gi, '')}`, label), text);
      if (e.ref) {
        li.title = 'click to select';
        li.addEventListener('click', () => {
          if (e.ref.shard !== undefined) select({ kind: 'shard', id: e.ref.shard });
          else if (e.ref.cell !== undefined) selectCellById(e.ref.cell);
        });
      }
      frag.appendChild(li);
    }
    if (!st.events.length) frag.appendChild(el('li', 'empty', 'No events yet.'));
    list.replaceChildren(frag);
    $('events-count').textContent = st.events.length ? `${st.events.length}${st.events.length >= MAX_EVENTS ? ' (latest)' : ''}` : '';
  }

  // ---------------------------------------------------------------- selection
  function select(sel) {
    const same = st.selected && sel && st.selected.kind === sel.kind && st.selected.id === sel.id;
    st.selected = same ? null : sel;
    publishSelection();
    if (!st.model) return;
    for (const [id, row] of rowEls) row.tr.classList.toggle('selected', isShardHighlighted(id));
    renderDetails();
    drawMap();
  }
  function selectCellById(id) {
    const c = st.model && st.model.cellById.get(id);
    if (c) select({ kind: 'cell', id: c.id, rect: c.rect });
  }

  $('shard-rows').addEventListener('click', (e) => {
    const tr = e.target.closest('tr[data-shard]');
    if (tr) select({ kind: 'shard', id: Number(tr.dataset.shard) });
  });
  $('shard-rows').addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' && e.key !== ' ') return;
    const tr = e.target.closest('tr[data-shard]');
    if (tr) { e.preventDefault(); select({ kind: 'shard', id: Number(tr.dataset.shard) }); }
  });
  $('clear-selection').addEventListener('click', () => select(null));
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && st.selected) select(null); });

  // ---------------------------------------------------------------- overlay toggle and legend
  function renderOverlayButtons() {
    for (const b of document.querySelectorAll('#overlay button')) {
      b.setAttribute('aria-checked', String(b.dataset.mode === st.overlay));
    }
  }
  $('overlay').addEventListener('click', (e) => {
    const b = e.target.closest('button[data-mode]');
    if (!b) return;
    st.overlay = b.dataset.mode;
    try { window.localStorage.setItem('zonescaler.overlay', st.overlay); } catch { /* ignore */ }
    renderOverlayButtons();
    publishSelection();
    renderLegend();
    drawMap();
  });
  renderOverlayButtons();

  function densityOf(c) {
    const v = st.overlay === 'clients' ? c.clients : c.entities;
    if (v === null) return null;
    return v / (((c.rect[2] - c.rect[0]) * (c.rect[3] - c.rect[1])) / 1e6);
  }
  function maxDensity(m) {
    let max = 0;
    for (const c of m.cells) { const d = densityOf(c); if (d !== null && d > max) max = d; }
    return max;
  }

  function renderLegend() {
    const m = st.model;
    const box = $('legend');
    if (!m) return;
    const parts = [];
    if (st.overlay !== 'owners' && m.cells.length) {
      const what = st.overlay === 'clients' ? 'players' : 'entities';
      const max = maxDensity(m);
      parts.push(el('span', null, `${what} / km²  0`), el('span', 'ramp'), el('span', null, fmtInt(max)));
    }
    box.replaceChildren(...parts);
  }

  // ---------------------------------------------------------------- the map
  const canvas = $('map');
  const wrap = $('map-wrap');
  const ctx = canvas.getContext('2d');
  let cssW = 0;
  let cssH = 0;
  let dpr = 1;
  let animating = false;

  function resize() {
    const r = wrap.getBoundingClientRect();
    dpr = window.devicePixelRatio || 1;
    cssW = Math.max(1, Math.floor(r.width));
    cssH = Math.max(1, Math.floor(r.height));
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
    drawMap();
  }
  if (typeof ResizeObserver === 'function') new ResizeObserver(resize).observe(wrap);
  else window.addEventListener('resize', resize);

  const MARGIN = { left: 56, right: 16, top: 22, bottom: 40 };

  /**
   * Sizes the map for the world's aspect: as tall as the window allows while the shards table
   * (up to 30 % of the window) stays in view, as wide as that height needs, the sidebar taking
   * the rest (300 px to 42 % of the width). Sets --map-h and --side-w on the layout; the ResizeObserver then redraws.
   */
  const layoutEl = document.querySelector('.layout');
  function fitLayout() {
    const world = st.model && st.model.world;
    const aspect = world ? (world[2] - world[0]) / (world[3] - world[1]) : 1;
    const cs = getComputedStyle(layoutEl);
    const gap = parseFloat(cs.columnGap) || 12;
    const total = layoutEl.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    const tableH = $('shards').closest('.panel').offsetHeight;
    const fixed = layoutEl.offsetTop + $('map-wrap').offsetTop - $('map-wrap').closest('.panel').offsetTop + 2 * gap + 18;
    // Keep the table in view if the map can still be 560 px tall; else let the map fill the window.
    const withTable = window.innerHeight - fixed - Math.min(tableH, 0.3 * window.innerHeight);
    const maxH = Math.min(1100, Math.max(380, withTable >= 560 ? withTable : window.innerHeight - fixed));
    const wantW = (maxH - MARGIN.top - MARGIN.bottom) * aspect + MARGIN.left + MARGIN.right + 2;
    const side = Math.round(Math.min(600, 0.42 * total, Math.max(300, total - gap - wantW)));
    const mapW = total - gap - side - 2;
    const fitH = (mapW - MARGIN.left - MARGIN.right) / aspect + MARGIN.top + MARGIN.bottom;
    const h = Math.round(Math.max(300, Math.min(maxH, fitH)));
    const sideVar = `${side}px`;
    const hVar = `${h}px`;
    if (layoutEl.style.getPropertyValue('--side-w') !== sideVar) layoutEl.style.setProperty('--side-w', sideVar);
    if (layoutEl.style.getPropertyValue('--map-h') !== hVar) layoutEl.style.setProperty('--map-h', hVar);
  }
  window.addEventListener('resize', fitLayout);

  function computeView(world) {
    const [x0, z0, x1, z1] = world;
    const aw = Math.max(10, cssW - MARGIN.left - MARGIN.right);
    const ah = Math.max(10, cssH - MARGIN.top - MARGIN.bottom);
    const s = Math.min(aw / (x1 - x0), ah / (z1 - z0));
    const w = (x1 - x0) * s;
    const h = (z1 - z0) * s;
    const ox = MARGIN.left + (aw - w) / 2;
    const oy = MARGIN.top + (ah - h) / 2;
    // z grows downwards on screen (the top-down view of a y-up, right-handed world).
    return { world, s, ox, oy, w, h, px: (x) => ox + (x - x0) * s, py: (z) => oy + (z - z0) * s };
  }

  /** Axis step in metres: a power of two that lands on the world's edges (cell boundaries), else 1-2-5. */
  function tickStep(lo, hi, px) {
    const span = hi - lo;
    const maxTicks = Math.max(2, Math.floor(px / 60));
    for (let p = 2 ** Math.ceil(Math.log2(span / maxTicks)); p <= span; p *= 2) {
      const n = span / p;
      if (n >= 3 && n <= maxTicks && Number.isInteger(lo / p) && Number.isInteger(hi / p)) return p;
      if (n < 3) break;
    }
    const raw = span / maxTicks;
    const mag = 10 ** Math.floor(Math.log10(raw));
    for (const k of [1, 2, 2.5, 5, 10]) if (k * mag >= raw) return k * mag;
    return 10 * mag;
  }

  /**
   * Segments where two cells of different owners (or a cell and the world's edge) meet,
   * computed once per cell map: edges on the same line are matched by a sweep.
   */
  function ownerBorders(cells) {
    if (st.borderCache && st.borderCache.cells === cells) return st.borderCache.segs;
    const key = (v) => Math.round(v * 1000);
    const vert = new Map(); // x -> { lo: [...cells ending here], hi: [...cells starting here] }
    const horz = new Map();
    const put = (map, k, side, item) => {
      let e = map.get(k);
      if (!e) { e = { a: [], b: [] }; map.set(k, e); }
      e[side].push(item);
    };
    for (const c of cells) {
      const [x0, z0, x1, z1] = c.rect;
      put(vert, key(x1), 'a', [z0, z1, c.shard, x1]);
      put(vert, key(x0), 'b', [z0, z1, c.shard, x0]);
      put(horz, key(z1), 'a', [x0, x1, c.shard, z1]);
      put(horz, key(z0), 'b', [x0, x1, c.shard, z0]);
    }
    const segs = []; // [x0, z0, x1, z1, shardA, shardB]
    const sweep = (map, vertical) => {
      for (const { a, b } of map.values()) {
        a.sort((p, q) => p[0] - q[0]);
        b.sort((p, q) => p[0] - q[0]);
        let j = 0;
        for (const p of a) {
          while (j < b.length && b[j][1] <= p[0]) j++;
          for (let k = j; k < b.length && b[k][0] < p[1]; k++) {
            const q = b[k];
            if (q[2] === p[2]) continue;
            const lo = Math.max(p[0], q[0]);
            const hi = Math.min(p[1], q[1]);
            if (hi <= lo) continue;
            const at = p[3];
            segs.push(vertical ? [at, lo, at, hi, p[2], q[2]] : [lo, at, hi, at, p[2], q[2]]);
          }
        }
      }
    };
    sweep(vert, true);
    sweep(horz, false);
    st.borderCache = { cells, segs };
    return segs;
  }

  function hexToRgb(c) {
    if (c.startsWith('#')) {
      const n = parseInt(c.slice(1), 16);
      return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
    }
    // hsl(...) from shardColour: let the canvas parse it once
    ctx.fillStyle = c;
    const v = ctx.fillStyle;
    return v.startsWith('#') ? hexToRgb(v) : [128, 128, 128];
  }
  const rgbCache = new Map();
  function rgba(colour, a) {
    let rgb = rgbCache.get(colour);
    if (!rgb) { rgb = hexToRgb(colour); rgbCache.set(colour, rgb); }
    return `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${a.toFixed(3)})`;
  }

  let hatch = null;
  function hatchPattern() {
    if (hatch) return hatch;
    const p = document.createElement('canvas');
    p.width = p.height = 8;
    const g = p.getContext('2d');
    g.strokeStyle = 'rgba(10,12,16,0.75)';
    g.lineWidth = 2;
    g.beginPath(); g.moveTo(0, 8); g.lineTo(8, 0); g.moveTo(-2, 2); g.lineTo(2, -2); g.moveTo(6, 10); g.lineTo(10, 6); g.stroke();
    hatch = ctx.createPattern(p, 'repeat');
    return hatch;
  }

  // The map is two layers: everything that changes only with a poll, the overlay toggle, the
  // selection or the size is drawn once into `layer`; each animation frame (flashes) and hover
  // only copies it and draws outlines on top, so maps of thousands of cells stay cheap.
  const layer = document.createElement('canvas');
  const lctx = layer.getContext('2d');
  let layerFresh = false;

  /** Redraws the map; `full` also redraws the static layer (new data, overlay, selection, size). */
  function drawMap(full = true) {
    if (!cssW) return;
    const m = st.model;
    if (full) {
      const note = $('map-note');
      let noteText = null;
      if (!m) noteText = st.error ? `${st.error.title}` : 'waiting for the first answer from api/cluster…';
      else if (!m.hasCells) noteText = 'This master does not report its cells (an older server): the table below still works.';
      else if (!m.cells.length) noteText = m.placed === false ? 'Cells not placed yet.' : 'No cells in the map.';
      note.hidden = noteText === null;
      note.textContent = noteText ?? '';
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!m || !m.world) { st.view = null; return; }
    const v = computeView(m.world);
    st.view = v;
    if (full || !layerFresh || layer.width !== canvas.width || layer.height !== canvas.height) {
      layer.width = canvas.width;
      layer.height = canvas.height;
      lctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      drawLayer(lctx, v, m);
      layerFresh = true;
    }
    ctx.drawImage(layer, 0, 0);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    drawOutlines(ctx, v, m);
  }

  function drawLayer(g, v, m) {
    const [x0, z0, x1, z1] = m.world;
    g.clearRect(0, 0, cssW, cssH);
    g.fillStyle = '#10151c';
    g.fillRect(v.ox, v.oy, v.w, v.h);
    drawAxes(g, v);

    const mode = st.overlay;
    const maxD = mode === 'owners' ? 0 : maxDensity(m);
    const selShard = st.selected && st.selected.kind === 'shard' ? st.selected.id : null;
    const selCell = st.selected && st.selected.kind === 'cell' ? m.cellById.get(st.selected.id) : null;
    const focusShard = selShard ?? (selCell ? selCell.shard : null);

    // cells: shard colour; in a density mode its strength follows the density
    for (const c of m.cells) {
      let a = 0.78;
      if (mode !== 'owners') {
        const d = densityOf(c);
        a = d === null || maxD === 0 ? 0.3 : 0.3 + 0.68 * Math.sqrt(d / maxD);
      }
      if (selShard !== null && c.shard !== selShard) a *= 0.25;
      const px = v.px(c.rect[0]);
      const py = v.py(c.rect[1]);
      const w = v.px(c.rect[2]) - px;
      const h = v.py(c.rect[3]) - py;
      g.fillStyle = rgba(shardColour(c.shard), a);
      g.fillRect(px, py, w, h);
      const owner = c.shard === null ? null : m.shards.get(c.shard);
      if (c.shard === null || (owner && owner.alive === false)) { // orphaned: hatched
        g.fillStyle = hatchPattern();
        g.fillRect(px, py, w, h);
      }
    }

    // thin lines between all cells, fading out where cells get too small for them
    g.lineWidth = 1;
    const strokes = new Map(); // alpha step -> cells
    for (const c of m.cells) {
      const side = Math.min(c.rect[2] - c.rect[0], c.rect[3] - c.rect[1]) * v.s;
      if (side < 5) continue;
      const step = Math.min(4, Math.floor((side - 5) / 5)); // 0..4
      if (!strokes.has(step)) strokes.set(step, []);
      strokes.get(step).push(c);
    }
    for (const [step, cells] of strokes) {
      g.strokeStyle = `rgba(8,10,14,${(0.2 + 0.09 * step).toFixed(2)})`;
      g.beginPath();
      for (const c of cells) {
        const px = Math.round(v.px(c.rect[0])) + 0.5;
        const py = Math.round(v.py(c.rect[1])) + 0.5;
        g.rect(px, py, Math.round(v.px(c.rect[2])) - Math.round(v.px(c.rect[0])), Math.round(v.py(c.rect[3])) - Math.round(v.py(c.rect[1])));
      }
      g.stroke();
    }

    // labels: counts in density modes, where the cell is big enough to hold them
    if (mode !== 'owners') {
      g.font = '600 11px system-ui, "Liberation Sans", "DejaVu Sans", sans-serif';
      g.textAlign = 'center';
      g.textBaseline = 'middle';
      for (const c of m.cells) {
        const val = mode === 'clients' ? c.clients : c.entities;
        if (val === null) continue;
        const w = (c.rect[2] - c.rect[0]) * v.s;
        const h = (c.rect[3] - c.rect[1]) * v.s;
        const text = fmtInt(val);
        if (w < text.length * 7 + 6 || h < 16) continue;
        const dim = selShard !== null && c.shard !== selShard;
        g.fillStyle = dim ? 'rgba(215,222,231,0.35)' : 'rgba(245,247,250,0.92)';
        g.fillText(text, v.px((c.rect[0] + c.rect[2]) / 2), v.py((c.rect[1] + c.rect[3]) / 2));
      }
    }

    // borders between shards: a dark core with a light line, so they read on every colour
    const segs = ownerBorders(m.cells);
    const strokeSegs = (filter, width, style) => {
      g.lineWidth = width;
      g.strokeStyle = style;
      g.lineCap = 'round';
      g.beginPath();
      for (const sg of segs) {
        if (filter && !filter(sg)) continue;
        g.moveTo(v.px(sg[0]), v.py(sg[1]));
        g.lineTo(v.px(sg[2]), v.py(sg[3]));
      }
      g.stroke();
    };
    strokeSegs(null, 4, 'rgba(8,10,14,0.9)');
    strokeSegs(null, 1.5, 'rgba(235,240,246,0.85)');
    if (focusShard !== null) strokeSegs((sg) => sg[4] === focusShard || sg[5] === focusShard, 3, '#ffffff');

    // world bounds, and the selected shard's edge along them
    g.lineWidth = 2;
    g.strokeStyle = 'rgba(215,222,231,0.9)';
    g.strokeRect(v.ox - 1, v.oy - 1, v.w + 2, v.h + 2);
    if (selShard !== null) {
      g.lineWidth = 3;
      g.strokeStyle = '#ffffff';
      g.beginPath();
      for (const c of m.cells) {
        if (c.shard !== selShard) continue;
        const [a0, b0, a1, b1] = c.rect;
        if (a0 === x0) { g.moveTo(v.px(a0), v.py(b0)); g.lineTo(v.px(a0), v.py(b1)); }
        if (a1 === x1) { g.moveTo(v.px(a1), v.py(b0)); g.lineTo(v.px(a1), v.py(b1)); }
        if (b0 === z0) { g.moveTo(v.px(a0), v.py(b0)); g.lineTo(v.px(a1), v.py(b0)); }
        if (b1 === z1) { g.moveTo(v.px(a0), v.py(b1)); g.lineTo(v.px(a1), v.py(b1)); }
      }
      g.stroke();
    }
  }

  const FLASH_COLOUR = { move: '#ffd33d', split: '#39d5ff', merge: '#d2a8ff', change: '#ffffff' };

  /** Per frame: the selected cell, the hovered cell, and the flashes of recent changes. */
  function drawOutlines(g, v, m) {
    const box = (r, inset) => [v.px(r[0]) + inset, v.py(r[1]) + inset,
      (r[2] - r[0]) * v.s - 2 * inset, (r[3] - r[1]) * v.s - 2 * inset];
    const sel = st.selected && st.selected.kind === 'cell' ? st.selected : null;
    if (sel && sel.rect) { // dashed if the cell no longer exists
      g.setLineDash(m.cellById.has(sel.id) ? [] : [6, 4]);
      g.lineWidth = 4;
      g.strokeStyle = 'rgba(8,10,14,0.9)';
      g.strokeRect(...box(sel.rect, 0));
      g.lineWidth = 2;
      g.strokeStyle = '#ffffff';
      g.strokeRect(...box(sel.rect, 0));
      g.setLineDash([]);
    }
    if (st.hover && m.cellById.get(st.hover.id) === st.hover) {
      g.lineWidth = 1.5;
      g.strokeStyle = 'rgba(255,255,255,0.8)';
      g.strokeRect(...box(st.hover.rect, 1));
    }
    const now = Date.now();
    let any = false;
    for (const [id, f] of st.flashes) {
      const left = f.until - now;
      const c = m.cellById.get(id);
      if (left <= 0 || !c) { st.flashes.delete(id); continue; }
      any = true;
      const t = left / FLASH_MS; // 1 → 0
      const pulse = 0.5 + 0.5 * Math.sin((FLASH_MS - left) / 120);
      const colour = FLASH_COLOUR[f.kind] || '#ffffff';
      g.fillStyle = rgba(colour, 0.28 * t * pulse);
      g.fillRect(...box(c.rect, 0));
      g.lineWidth = 2 + 2 * pulse;
      g.strokeStyle = rgba(colour, Math.min(1, 0.35 + t));
      g.strokeRect(...box(c.rect, 2));
    }
    if (any && !animating) {
      animating = true;
      requestAnimationFrame(() => { animating = false; drawMap(false); });
    }
  }

  function drawAxes(g, v) {
    const [x0, z0, x1, z1] = v.world;
    g.font = '11px system-ui, "Liberation Sans", "DejaVu Sans", sans-serif';
    g.fillStyle = '#8b96a5';
    g.strokeStyle = '#4a5462';
    g.lineWidth = 1;
    g.beginPath();
    // x along the bottom
    const sx = tickStep(x0, x1, v.w);
    g.textAlign = 'center';
    g.textBaseline = 'top';
    for (let i = Math.ceil(x0 / sx); i * sx <= x1 + 1e-9; i++) {
      const px = Math.round(v.px(i * sx)) + 0.5;
      g.moveTo(px, v.oy + v.h + 2);
      g.lineTo(px, v.oy + v.h + 7);
      g.fillText(fmtAxis(i * sx), px, v.oy + v.h + 9);
    }
    // z along the left, growing downwards
    const sz = tickStep(z0, z1, v.h);
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = Math.ceil(z0 / sz); i * sz <= z1 + 1e-9; i++) {
      const py = Math.round(v.py(i * sz)) + 0.5;
      g.moveTo(v.ox - 2, py);
      g.lineTo(v.ox - 7, py);
      g.fillText(fmtAxis(i * sz), v.ox - 9, py);
    }
    g.stroke();
    g.textAlign = 'left';
    g.textBaseline = 'top';
    g.fillText('x (m) →', v.ox + v.w + 4 > cssW - 50 ? v.ox : v.ox + v.w + 4, v.oy + v.h + 24);
    g.textAlign = 'right';
    g.textBaseline = 'bottom';
    // Above the first tick label (centred on the world's top edge), not on it.
    g.fillText('z (m) ↓', v.ox - 9, Math.max(12, v.oy - 10));
  }

  // ---------------------------------------------------------------- map interaction
  function cellAt(clientX, clientY) {
    const m = st.model;
    const v = st.view;
    if (!m || !v) return null;
    const r = canvas.getBoundingClientRect();
    const x = v.world[0] + (clientX - r.left - v.ox) / v.s;
    const z = v.world[1] + (clientY - r.top - v.oy) / v.s;
    for (const c of m.cells) {
      if (x >= c.rect[0] && x < c.rect[2] && z >= c.rect[1] && z < c.rect[3]) return c;
    }
    return null;
  }

  canvas.addEventListener('mousemove', (e) => {
    const c = cellAt(e.clientX, e.clientY);
    const tip = $('tooltip');
    canvas.style.cursor = c ? 'pointer' : 'crosshair';
    if (c !== st.hover) { st.hover = c; drawMap(false); }
    if (!c) { tip.hidden = true; return; }
    const r = wrap.getBoundingClientRect();
    const owner = c.shard === null ? null : st.model.shards.get(c.shard);
    tip.replaceChildren();
    const line1 = el('div');
    line1.append(el('b', null, `cell ${c.id}`), `  ${fmtM(c.rect[2] - c.rect[0])} m`);
    const line2 = el('div');
    line2.append(swatch(c.shard), c.shard === null ? 'no owner' : `shard ${c.shard}${owner && owner.alive === false ? ' (dead)' : ''}`);
    const line3 = el('div', null, `${fmtInt(c.entities)} entities · ${fmtInt(c.clients)} players`);
    tip.append(line1, line2, line3);
    tip.hidden = false;
    let left = e.clientX - r.left + 14;
    let top = e.clientY - r.top + 14;
    if (left + tip.offsetWidth > r.width - 4) left = e.clientX - r.left - tip.offsetWidth - 10;
    if (top + tip.offsetHeight > r.height - 4) top = e.clientY - r.top - tip.offsetHeight - 10;
    tip.style.left = `${left}px`;
    tip.style.top = `${top}px`;
  });
  canvas.addEventListener('mouseleave', () => {
    $('tooltip').hidden = true;
    if (st.hover) { st.hover = null; drawMap(false); }
  });
  canvas.addEventListener('click', (e) => {
    const c = cellAt(e.clientX, e.clientY);
    if (c) select({ kind: 'cell', id: c.id, rect: c.rect });
    else if (st.selected) select(null);
  });
  canvas.addEventListener('dblclick', (e) => { // a double click selects the cell's owner
    const c = cellAt(e.clientX, e.clientY);
    if (c && c.shard !== null) { st.selected = null; select({ kind: 'shard', id: c.shard }); }
  });

  // Test and console hook: select a shard or a cell without a pointer (e.g. `__dashboard.selectCell("0:5")`).
  window.__dashboard = {
    selectShard: (id) => select({ kind: 'shard', id: Number(id) }),
    selectCell: (id) => selectCellById(String(id)),
    clear: () => select(null),
    redraw: (full = true) => { const t = performance.now(); drawMap(full); return performance.now() - t; },
    cellCentre: (id) => { // viewport coordinates of a cell's centre, for pointer tests
      const c = st.model && st.model.cellById.get(String(id));
      const v = st.view;
      if (!c || !v) return null;
      const r = canvas.getBoundingClientRect();
      return { x: r.left + v.px((c.rect[0] + c.rect[2]) / 2), y: r.top + v.py((c.rect[1] + c.rect[3]) / 2) };
    },
    cellBox: (id) => { // a cell's box in viewport coordinates, for tests that read the canvas
      const c = st.model && st.model.cellById.get(String(id));
      const v = st.view;
      if (!c || !v) return null;
      const r = canvas.getBoundingClientRect();
      const x = r.left + v.px(c.rect[0]);
      const y = r.top + v.py(c.rect[1]);
      return { x, y, w: r.left + v.px(c.rect[2]) - x, h: r.top + v.py(c.rect[3]) - y };
    },
  };

  resize();
  poll();
})();
