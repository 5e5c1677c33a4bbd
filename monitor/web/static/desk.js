/* margin-monitor risk desk. Plain JS, no build step, no network access beyond this monitor.
 *
 * Data: websocket /ws/alerts?snapshot=0&acks=1 (live events, HEARTBEAT summaries, ACK notices,
 * REPLY to requests) and read-only GET /api/* (paged, ranked, filtered server-side). The session
 * is a cookie set by the server when the page is opened with ?token=...; the token is removed from
 * the address bar at once.
 *
 * Roles (GET /api/whoami): a viewer sees no Ack buttons; an operator acknowledges; an approver
 * also gets the Approvals tab (approve / reject liquidation plans) and the kill switch. The page
 * only hides what the role may not do; the server refuses it either way (403 / a REPLY that is
 * not ok). With named tokens an acknowledgement is recorded under the token's name.
 */
"use strict";

(() => {
  // ------------------------------------------------------------------ constants
  const TIERS = ["FORCED_LIQUIDATION", "MARGIN_CALL", "WARNING", "NORMAL", "WITHDRAWABLE", "NO_DEBT"];
  const RANK = Object.fromEntries(TIERS.map((t, i) => [t, i]));
  const SHORT = { FORCED_LIQUIDATION: "FORCED", MARGIN_CALL: "MARGIN CALL", WARNING: "WARNING",
    NORMAL: "NORMAL", WITHDRAWABLE: "WITHDRAWABLE", NO_DEBT: "NO DEBT" };
  const STALE_BEAT_S = 3.5;   // no heartbeat for this long: the monitor is stale
  const STALE_FEED_S = 5.0;   // no feed message for this long: the feed is stale
  const MAX_ROWS = 3000;      // alert rows held in the page
  const SHOW_ROWS = 400;      // alert rows in the DOM
  const CN = "Asia/Shanghai";

  // ------------------------------------------------------------------ login: token out of the URL
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname);
  }

  const $ = (s, el = document) => el.querySelector(s);
  const $$ = (s, el = document) => Array.from(el.querySelectorAll(s));
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(e.dataset, v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const k of kids) if (k !== null && k !== undefined && k !== false)
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    return e;
  };

  // ------------------------------------------------------------------ formatting
  const nf0 = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const nf2 = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const money = (x) => x === null || x === undefined ? "–" : nf2.format(x);
  const money0 = (x) => x === null || x === undefined ? "–" : nf0.format(x);
  const int = (x) => x === null || x === undefined ? "–" : nf0.format(x);
  const compact = (x) => {
    if (x === null || x === undefined) return "–";
    const a = Math.abs(x);
    if (a >= 1e9) return (x / 1e9).toFixed(2) + "B";
    if (a >= 1e6) return (x / 1e6).toFixed(2) + "M";
    if (a >= 1e4) return (x / 1e3).toFixed(1) + "K";
    return nf0.format(x);
  };
  const pct = (r, d = 2) => r === null || r === undefined ? "–" : (r * 100).toFixed(d) + "%";
  const signedPct = (r, d = 1) => r === null || r === undefined ? "–" : (r > 0 ? "+" : "") + (r * 100).toFixed(d) + "%";
  const tfmt = new Intl.DateTimeFormat("en-GB", { timeZone: CN, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  const dfmt = new Intl.DateTimeFormat("en-CA", { timeZone: CN, year: "numeric", month: "2-digit", day: "2-digit" });
  const hhmmss = (ns) => ns ? tfmt.format(new Date(ns / 1e6)) : "–";
  const hhmmssms = (ns) => ns ? tfmt.format(new Date(ns / 1e6)) + "." + String(Math.floor(ns / 1e6) % 1000).padStart(3, "0") : "–";
  const dayTime = (ns) => ns ? dfmt.format(new Date(ns / 1e6)) + " " + tfmt.format(new Date(ns / 1e6)).slice(0, 5) : "–";
  const dur = (s) => {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    if (s < 0) return "past";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  };
  const badge = (tier) => el("span", { class: "badge b-" + (tier || "none"), text: tier ? SHORT[tier] : "NEW" });

  // ------------------------------------------------------------------ HTTP
  async function api(path, params) {
    const q = params ? "?" + new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined)) : "";
    const r = await fetch("/api/" + path + q, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { location.replace("/"); throw new Error("logged out"); }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
    return body;
  }

  // ------------------------------------------------------------------ state
  const S = {
    ws: null, connected: false, everConnected: false, retry: 0,
    lastBeatAt: 0, summary: null, prevBeat: null, rate: null, history: [],
    rows: [], byId: new Map(), acks: new Map(), paused: false, pending: [], dirty: true,
    filters: { tiers: new Set(["FORCED_LIQUIDATION", "MARGIN_CALL", "WARNING"]), account: "", symbol: "" },
    tab: "worst", drill: null, req: 0, waiting: new Map(), sound: false, audio: null, lastBeep: 0,
    newIds: new Set(), serverOffsetMs: 0,
    me: { name: null, role: "approver", may: ["read", "ack", "approve"], named: false, control: false },
    kill: null,
  };
  const may = (what) => S.me.may.includes(what);
  window.__desk = S;  // for tests and the curious

  // ------------------------------------------------------------------ websocket
  function connect() {
    const proto = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(proto + location.host + "/ws/alerts?snapshot=0&acks=1");
    S.ws = ws;
    ws.onopen = () => {
      S.connected = true; S.retry = 0;
      const resync = S.everConnected;
      S.everConnected = true;
      renderHealth();
      if (resync) backfill();   // events missed while away: from the server's recent ring
    };
    ws.onmessage = (m) => {
      let e;
      try { e = JSON.parse(m.data); } catch { return; }
      switch (e.kind) {
        case "HEARTBEAT": onBeat(e); break;
        case "ACK": onAck(e); break;
        case "REPLY": {
          const w = S.waiting.get(e.req);
          if (w) { S.waiting.delete(e.req); w(e); }
          break;
        }
        case "SUBSCRIBED": case "ERROR": case "SNAPSHOT": break;
        default: if (e.event_id) onEvent(e, true);
      }
    };
    ws.onclose = (ev) => {
      S.connected = false; S.ws = null;
      renderHealth(ev.code === 1013 ? "overloaded — resyncing" : null);
      if (ev.code === 1008 || ev.code === 4401) { location.replace("/"); return; }
      const wait = Math.min(10000, 500 * 2 ** Math.min(S.retry++, 5));
      setTimeout(async () => {
        // a 401 on the websocket is invisible to the page: check the session over HTTP
        try { await api("summary"); } catch (_) { /* redirected if logged out */ }
        connect();
      }, wait);
    };
  }

  function request(msg, timeoutMs = 6000) {
    return new Promise((resolve, reject) => {
      if (!S.ws || S.ws.readyState !== WebSocket.OPEN) { reject(new Error("not connected")); return; }
      const req = ++S.req;
      const t = setTimeout(() => { S.waiting.delete(req); reject(new Error("no answer")); }, timeoutMs);
      S.waiting.set(req, (r) => { clearTimeout(t); resolve(r); });
      S.ws.send(JSON.stringify({ ...msg, req }));
    });
  }

  // ------------------------------------------------------------------ health bar + tier board
  function onBeat(s) {
    const now = Date.now();
    if (S.summary && s.feed && S.summary.feed && s.ts > S.summary.ts) {
      const dt = (s.ts - S.summary.ts) / 1e9;
      if (dt > 0) S.rate = (s.feed.ticks_accepted - S.summary.feed.ticks_accepted) / dt;
    }
    S.serverOffsetMs = s.ts / 1e6 - now;
    S.summary = s; S.lastBeatAt = now;
    S.history.push({ at: now, tiers: s.tiers });
    while (S.history.length && now - S.history[0].at > 61000) S.history.shift();
    renderHealth(); renderTiers();
  }

  function chip(id, text, cls) {
    const c = $(id);
    c.className = "chip " + (cls || "");
    $("b", c).textContent = text;
  }

  function renderHealth(note) {
    const s = S.summary;
    const beatAge = S.lastBeatAt ? (Date.now() - S.lastBeatAt) / 1000 : null;
    const monStale = !S.connected || beatAge === null || beatAge > STALE_BEAT_S;
    chip("#h-conn", S.connected ? "live" : (note || (S.everConnected ? "disconnected" : "connecting")),
      S.connected ? "ok" : "bad");
    chip("#h-beat", beatAge === null ? "–" : dur(beatAge), monStale ? "bad" : "");
    let feedStale = false;
    if (s && s.feed) {
      const lag = s.feed.lag_s === null ? null : s.feed.lag_s + (beatAge || 0);
      feedStale = lag === null || lag > STALE_FEED_S;
      chip("#h-feed", s.feed.done ? "ended" : (lag === null ? "no data" : dur(lag)), feedStale ? "bad" : "");
      $("#h-feed").firstChild.textContent = "feed " + (s.feed.done ? "" : "lag ");
      chip("#h-rate", S.rate === null ? "–" : int(S.rate), "");
      const rej = Object.values(s.feed.rejected || {}).reduce((a, b) => a + b, 0);
      chip("#h-rej", int(rej), rej > 0 ? "amber" : "");
      $("#h-rej").title = Object.entries(s.feed.rejected || {}).map(([k, v]) => k + ": " + v).join("\n") || "no rejected ticks";
    }
    if (s && s.last_cycle) {
      chip("#h-cycle", s.last_cycle.ms.toFixed(1) + " ms", s.last_cycle.ms > 250 ? "amber" : "");
      $("#h-cycle").title = `${s.last_cycle.path}: ${s.last_cycle.ticks} ticks, ${s.last_cycle.symbols} symbols, ${s.last_cycle.touched} accounts, ${s.last_cycle.events} events`;
    }
    if (s) {
      if (s.outbox) chip("#h-out", s.outbox.connected ? (s.outbox.queued ? int(s.outbox.queued) + " queued" : "ok") : "DOWN",
        s.outbox.connected ? (s.outbox.queued > 10000 ? "amber" : "") : "bad");
      else chip("#h-out", "off", "");
      $("#run").textContent = "run " + s.run_id + " · seq " + s.seq;
    }
    document.body.classList.toggle("stale", monStale || feedStale);
  }

  function renderTiers() {
    const s = S.summary;
    if (!s) return;
    const old = S.history.length ? S.history[0] : null;
    for (const t of TIERS) {
      const tile = $(`.tile[data-tier="${t}"]`);
      $(".tc", tile).textContent = int(s.tiers[t]);
      $(".tc", tile).dataset.count = s.tiers[t];
      if (t !== "NO_DEBT") $(".td", tile).textContent = "debt " + compact(s.debt[t]);
      const tx = $(".tx", tile);
      tx.textContent = "";
      if (old && old.tiers) {
        const d = s.tiers[t] - old.tiers[t];
        if (d) tx.append(el("span", { class: (RANK[t] <= 2) === (d > 0) ? "up" : "down", text: (d > 0 ? "▲ +" : "▼ ") + int(d) }), " in 1 min");
      }
      if (t === "FORCED_LIQUIDATION") tile.classList.toggle("hot", s.tiers[t] > 0);
    }
    const ct = $("#tile-calls");
    $(".tc", ct).textContent = int(s.open_calls);
    $(".tc", ct).dataset.count = s.open_calls;
  }

  async function loadNextCall() {
    try {
      const r = await api("calls", { limit: 1 });
      const c = r.rows.length ? r.rows[0].call : null;
      const td = $("#calls-next");
      td.replaceChildren(c ? el("span", null, "next ", dueSpan(c.deadline_ns)) : "none open");
    } catch (_) { /* shown on the next try */ }
  }

  // ------------------------------------------------------------------ alert feed
  function onEvent(e, live) {
    if (S.byId.has(e.event_id)) return;
    if (live && S.paused) { S.pending.push(e); updateFeedInfo(); return; }
    addRow(e, live);
  }

  function addRow(e, live) {
    S.byId.set(e.event_id, e);
    S.rows.push(e);
    if (live) {
      S.newIds.add(e.event_id);
      if (e.tier === "FORCED_LIQUIDATION" && e.kind === "TIER_CHANGE" && RANK[e.previous_tier] !== 0) beep(880);
      if (e.kind === "CALL_EXPIRED" || e.kind === "CONTRACT_EXPIRED") beep(660);
    }
    if (S.rows.length > MAX_ROWS * 1.2) {
      S.rows.sort((a, b) => a.seq - b.seq || a.event_id.localeCompare(b.event_id));
      for (const r of S.rows.splice(0, S.rows.length - MAX_ROWS)) S.byId.delete(r.event_id);
    }
    S.dirty = true;
  }

  function matches(e) {
    const f = S.filters;
    if (!(f.tiers.has(e.tier) || f.tiers.has(e.previous_tier))) return false;
    if (f.account && !e.account_id.toUpperCase().includes(f.account)) return false;
    if (f.symbol && !((e.trigger && e.trigger.symbol) || "").toUpperCase().includes(f.symbol)) return false;
    return true;
  }

  function renderFeed() {
    if (!S.dirty) return;
    S.dirty = false;
    const rows = S.rows.filter(matches);
    rows.sort((a, b) => (b.ts_published - a.ts_published) || (b.seq - a.seq));
    const tb = $("#feed-t tbody");
    const frag = document.createDocumentFragment();
    for (const e of rows.slice(0, SHOW_ROWS)) frag.append(feedRow(e));
    tb.replaceChildren(frag);
    $("#feed-empty").classList.toggle("hidden", rows.length > 0);
    S.newIds.clear();
    S.shown = rows.length;
    updateFeedInfo();
  }

  function updateFeedInfo() {
    const n = S.shown || 0;
    $("#feed-info").textContent = (S.paused ? `PAUSED · ${S.pending.length} new · ` : "") +
      `${int(Math.min(n, SHOW_ROWS))} of ${int(n)} shown`;
  }

  function trigger(e) {
    const t = e.trigger;
    if (!t) return el("span", { class: "muted", text: e.previous_tier === null ? "start-up" : "–" });
    if (t.symbol) return el("span", null, el("span", { class: "acct-link", text: t.symbol, title: "filter by this symbol",
      onclick: () => { $("#f-symbol").value = t.symbol; setFilter(); } }), el("span", { class: "muted", text: " @ " }), money(t.price));
    return el("span", { class: "muted", text: t.event + (t.event_id ? " " + t.event_id : "") });
  }

  function eventCell(e) {
    if (e.kind === "TIER_CHANGE") {
      return el("span", null, badge(e.previous_tier), el("span", { class: "arrow", text: "→" }), badge(e.tier));
    }
    const label = { CALL_ISSUED: "CALL ISSUED", CALL_CURED: "CALL CURED", CALL_EXPIRED: "CALL EXPIRED",
      CONTRACT_DUE: "CONTRACT DUE", CONTRACT_EXPIRED: "CONTRACT EXPIRED" }[e.kind] || e.kind;
    const kids = [el("span", { class: "kind", text: label })];
    if (e.contract_id !== undefined) {  // CONTRACT_DUE / CONTRACT_EXPIRED: which contract, when
      kids.push(el("span", { class: "contract", title: "contract (负债合约) and its term end",
        text: ` ${e.contract_id} · term end ${e.term_end || "–"}` +
          (e.kind === "CONTRACT_DUE" && e.trading_days_left !== null && e.trading_days_left !== undefined ? ` · ${e.trading_days_left} trading days left` : "") }));
      if (e.kind === "CONTRACT_EXPIRED") kids.push(badge(e.tier));
      return el("span", null, ...kids);
    }
    if (e.call && e.kind === "CALL_ISSUED") kids.push(dueSpan(e.call.deadline_ns));
    if (e.call && e.kind !== "CALL_ISSUED") kids.push(badge(e.tier));
    return el("span", null, ...kids);
  }

  function dueSpan(deadlineNs) {
    if (deadlineNs === null || deadlineNs === undefined) {  // past the known trading days
      return el("span", { class: "due soon", title: "no deadline until the exchange calendar's closures for that year are configured",
        text: "no deadline (calendar)" });
    }
    const left = (deadlineNs / 1e6 - (Date.now() + S.serverOffsetMs)) / 1000;
    const cls = left < 0 ? "due past" : left < 3600 ? "due soon" : "due";
    return el("span", { class: cls, dataset: { deadline: deadlineNs }, title: "deadline " + dayTime(deadlineNs) + " China time",
      text: left < 0 ? "EXPIRED" : "due " + dur(left) });
  }

  function ratioCell(e) {
    const worse = e.previous_ratio !== undefined && e.previous_ratio !== null && e.ratio !== null && e.ratio < e.previous_ratio;
    const td = el("td", { class: "r-" + e.tier });
    if (e.previous_ratio !== undefined && e.previous_ratio !== null) {
      td.append(el("span", { class: "muted", text: pct(e.previous_ratio) }), el("span", { class: "arrow", text: "→" }));
    }
    td.append(el("span", { class: worse ? "worse" : "", text: pct(e.ratio) }));
    return td;
  }

  function feedRow(e) {
    const worsened = e.kind === "TIER_CHANGE" && (e.previous_tier === null || RANK[e.tier] < RANK[e.previous_tier]);
    const ack = S.acks.get(e.event_id);
    const tr = el("tr", {
      class: `e-${e.tier} k-${e.kind}` + (worsened ? " worsened" : "") + (ack ? " acked" : "") + (S.newIds.has(e.event_id) ? " new" : ""),
      dataset: { id: e.event_id, account: e.account_id, tier: e.tier, kind: e.kind },
    });
    tr.append(
      el("td", { class: "l", title: "published " + dayTime(e.ts_published) }, hhmmss(e.ts_published),
        el("span", { class: "ms", text: "." + String(Math.floor(e.ts_published / 1e6) % 1000).padStart(3, "0") })),
      el("td", { class: "l" }, acctLink(e.account_id)),
      el("td", { class: "l" }, eventCell(e)),
      el("td", { class: "l" }, trigger(e)),
      ratioCell(e),
      el("td", { text: e.cure && e.cure.deposit ? money0(e.cure.deposit) : "–" }),
      el("td", { class: "opt", text: e.cure && e.cure.repay ? money0(e.cure.repay) : "–" }),
      el("td", { text: e.liquidation_status === "UNREACHABLE_FULL_LIQUIDATION" ? "ALL · short " + money0(e.shortfall) : (e.liquidation_value ? money0(e.liquidation_value) : "–") }),
      el("td", { class: "c" }, ackCell(e)),
    );
    return tr;
  }

  function ackCell(e) {
    const a = S.acks.get(e.event_id);
    if (a) return el("span", { class: "ackd", text: "✓ " + (a.by || ""), title: `${a.by} at ${dayTime(a.ts)}: ${a.note || "(no note)"}` });
    if (!may("ack")) return el("span", { class: "muted", text: "–", title: `a ${S.me.role} does not acknowledge` });
    return el("button", { class: "btn sm ack-btn", text: "Ack", onclick: (ev) => { ev.stopPropagation(); openAck(e); } });
  }

  function acctLink(id) {
    return el("a", { class: "acct", href: "#" + encodeURIComponent(id), text: id, dataset: { account: id },
      onclick: (ev) => { ev.preventDefault(); openDrill(id); } });
  }

  async function backfill() {
    try {
      const f = S.filters;
      const r = await api("events", { limit: 500, tier: [...f.tiers].join(","), account: f.account, symbol: f.symbol });
      for (const e of r.events) if (!S.byId.has(e.event_id)) addRow(e, false);
      S.dirty = true;
    } catch (err) { console.warn("backfill", err); }
  }

  function setFilter() {
    S.filters.account = $("#f-account").value.trim().toUpperCase();
    S.filters.symbol = $("#f-symbol").value.trim().toUpperCase();
    S.filters.tiers = new Set($$("#f-tiers .fchip.on").map((b) => b.dataset.tier));
    S.dirty = true;
    clearTimeout(S.bfTimer);
    S.bfTimer = setTimeout(backfill, 250);
  }

  // ------------------------------------------------------------------ sound
  function beep(freq) {
    if (!S.sound || !S.audio) return;
    const now = Date.now();
    if (now - S.lastBeep < 1500) return;
    S.lastBeep = now;
    const ctx = S.audio, o = ctx.createOscillator(), g = ctx.createGain();
    o.type = "square"; o.frequency.value = freq;
    g.gain.setValueAtTime(0.0001, ctx.currentTime);
    g.gain.exponentialRampToValueAtTime(0.15, ctx.currentTime + 0.02);
    g.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + 0.35);
    o.connect(g).connect(ctx.destination);
    o.start(); o.stop(ctx.currentTime + 0.4);
  }

  // ------------------------------------------------------------------ acknowledgements
  function onAck(a) {
    S.acks.set(a.event_id, a);
    S.dirty = true;
    if (S.tab === "acks") loadSide();
    if (S.drill && S.drill.id === a.account_id) loadDrill();
  }

  async function loadAcks() {
    try {
      const r = await api("acks", { limit: 2000 });
      for (const a of r.acks) S.acks.set(a.event_id, a);
      S.dirty = true;
    } catch (err) { console.warn("acks", err); }
  }

  let ackFor = null;
  function openAck(e) {
    ackFor = e;
    $("#ack-what").textContent = `${e.account_id} · ${e.kind === "TIER_CHANGE" ? (e.previous_tier || "start") + " → " + e.tier : e.kind} · ${hhmmss(e.ts_published)} · ratio ${pct(e.ratio)}`;
    $("#ack-note").value = "";
    $("#ack-err").textContent = "";
    $("#ack-by").value = S.me.named ? S.me.name : (localStorage.getItem("mm.operator") || "");
    $("#ack-by-row").classList.toggle("hidden", S.me.named);  // the token's name is recorded
    $("#ackdlg").classList.remove("hidden");
    ($("#ack-by").value ? $("#ack-note") : $("#ack-by")).focus();
  }
  function closeAck() { $("#ackdlg").classList.add("hidden"); ackFor = null; }
  async function submitAck(ev) {
    ev.preventDefault();
    if (!ackFor) return;
    const by = $("#ack-by").value.trim();
    if (!S.me.named) localStorage.setItem("mm.operator", by);
    $("#ack-ok").disabled = true;
    try {
      const r = await request({ op: "ack", event_id: ackFor.event_id, note: $("#ack-note").value, by });
      if (!r.ok) throw new Error(r.error || "refused");
      onAck(r.ack);
      closeAck();
    } catch (err) {
      $("#ack-err").textContent = "Not acknowledged: " + err.message;
    } finally { $("#ack-ok").disabled = false; }
  }

  // ------------------------------------------------------------------ worst / calls / acks panel
  const HEADS = {
    worst: [["#", ""], ["Account", "l"], ["Tier", "l"], ["Ratio", ""], ["Next line", "l"], ["Gap", "opt"], ["Fall to line", ""], ["Debt", ""]],
    calls: [["Account", "l"], ["Tier", "l"], ["Ratio", ""], ["Deadline (CN)", ""], ["Left", ""], ["Call amount", ""], ["Debt", ""]],
    acks: [["Acked", "l"], ["By", "l"], ["Account", "l"], ["Alert", "l"], ["Note", "l"]],
    approvals: [["Since", "l"], ["Account", "l"], ["Why", "l"], ["Held", "l"], ["Orders", "l"], ["", "c"]],
  };
  function setHead(tab) {
    const tr = el("tr");
    for (const [h, c] of HEADS[tab]) tr.append(el("th", { class: c, text: h }));
    $("#worst-t thead").replaceChildren(tr);
  }

  function nextCell(n) {
    if (!n) return [el("td", { class: "l worse", text: "under FL line" }), el("td", { class: "opt", text: "–" }), el("td", { text: "–" })];
    return [el("td", { class: "l" }, el("span", { class: "muted", text: pct(n.line, 0) + " " }), badge(n.tier)),
      el("td", { class: "opt", text: (n.gap * 100).toFixed(2) + "pt" }),
      el("td", { text: n.fall === null ? "–" : "−" + (n.fall * 100).toFixed(2) + "%" })];
  }

  async function loadSide() {
    const tab = S.tab;
    try {
      const tb = $("#worst-t tbody");
      if (tab === "worst") {
        const r = await api("worst", { n: 30 });
        if (S.tab !== tab) return;
        setHead(tab);
        tb.replaceChildren(...r.rows.map((x, i) => el("tr", { dataset: { account: x.account_id } },
          el("td", { class: "muted", text: i + 1 }), el("td", { class: "l" }, acctLink(x.account_id)),
          el("td", { class: "l" }, badge(x.tier)), el("td", { class: "r-" + x.tier, text: pct(x.ratio) }),
          ...nextCell(x.next), el("td", { text: money0(x.liabilities) }))));
        $("#worst-info").textContent = `of ${int(r.total)} with debt · ${r.ms.toFixed(1)} ms`;
      } else if (tab === "calls") {
        const r = await api("calls", { limit: 50 });
        if (S.tab !== tab) return;
        setHead(tab);
        tb.replaceChildren(...r.rows.map((x) => el("tr", null,
          el("td", { class: "l" }, acctLink(x.account_id)), el("td", { class: "l" }, badge(x.tier)),
          el("td", { class: "r-" + x.tier, text: pct(x.ratio) }),
          el("td", { text: dayTime(x.call.deadline_ns) }), el("td", null, dueSpan(x.call.deadline_ns)),
          el("td", { text: money0(x.call.amount) }), el("td", { text: money0(x.liabilities) }))));
        $("#worst-info").textContent = `${int(r.total)} open · nearest deadline first`;
      } else if (tab === "approvals") {
        const r = await api("approvals");
        if (S.tab !== tab) return;
        setHead(tab);
        tb.replaceChildren(...r.approvals.map((x) => el("tr", { dataset: { id: x.event_id, account: x.account_id } },
          el("td", { class: "l", text: dayTime(x.created_ns) }), el("td", { class: "l" }, acctLink(x.account_id)),
          el("td", { class: "l txt", text: (x.reason || "").replaceAll("_", " ") }),
          el("td", { class: "l txt", text: x.state === "approved" ? "approved, queued" : (x.held || "").replaceAll("_", " ") }),
          el("td", { class: "l note", text: (x.orders || []).map((o) => `${o.side} ${o.qty} ${o.symbol} @ ${o.price}`).join("; ") || "–" }),
          el("td", { class: "c" }, x.state === "pending" ? decideButtons(x) : "–"))));
        $("#worst-info").textContent = `${int(r.approvals.length)} waiting`;
      } else {
        const r = await api("acks", { limit: 200 });
        if (S.tab !== tab) return;
        setHead(tab);
        tb.replaceChildren(...r.acks.map((a) => el("tr", null,
          el("td", { class: "l", text: dayTime(a.ts) }), el("td", { class: "l txt", text: a.by }),
          el("td", { class: "l" }, acctLink(a.account_id)),
          el("td", { class: "l" }, el("span", { class: "kind", text: a.event_kind === "TIER_CHANGE" ? "" : (a.event_kind || "").replaceAll("_", " ") }), badge(a.tier)),
          el("td", { class: "l note", text: a.note || "–" }))));
        $("#worst-info").textContent = `${int(r.total)} stored in ${r.store || "memory"}`;
      }
    } catch (err) { $("#worst-info").textContent = "error: " + err.message; }
  }

  // ------------------------------------------------------------------ approvals and kill switch
  async function post(path, body) {
    const r = await fetch("/api/" + path, { method: "POST", credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    if (r.status === 401) { location.replace("/"); throw new Error("logged out"); }
    const out = await r.json();
    if (!r.ok) throw new Error(out.error || ("HTTP " + r.status));
    return out;
  }

  function decideButtons(x) {
    const decide = (how) => async (ev) => {
      ev.stopPropagation();
      const note = prompt(`${how === "approve" ? "Approve" : "Reject"} the plan for ${x.account_id}: note (stored with the decision)`, "");
      if (note === null) return;
      try { await post("approvals/" + how, { event_id: x.event_id, note }); }
      catch (err) { alert("Not done: " + err.message); }
      loadSide();
    };
    return el("span", { class: "decide" },
      el("button", { class: "btn sm approve-btn", text: "Approve", onclick: decide("approve") }),
      el("button", { class: "btn sm reject-btn", text: "Reject", onclick: decide("reject") }));
  }

  function renderKill() {
    const b = $("#kill"), k = S.kill;
    if (!k) return;
    b.textContent = "Kill switch " + (k.on ? "ON" : "off");
    b.classList.toggle("on", k.on);
    b.title = k.on ? `ON since ${dayTime(k.ts)} by ${k.by}: ${k.reason || "(no reason given)"}` :
      "The liquidator's kill switch: no liquidation order is sent while it is on";
    b.disabled = !may("approve");
  }

  async function loadKill() {
    if (!S.me.control) return;
    try { S.kill = await api("kill-switch"); renderKill(); } catch (err) { console.warn("kill switch", err); }
  }

  async function toggleKill() {
    if (!S.kill || !may("approve")) return;
    const on = !S.kill.on;
    const reason = on ? prompt("Turn the kill switch ON: no liquidation order will be sent. Reason:", "") : "";
    if (reason === null || (!on && !confirm("Turn the kill switch off? Automatic liquidation orders will be sent again."))) return;
    try { S.kill = await post("kill-switch", { on, reason }); renderKill(); }
    catch (err) { alert("Not done: " + err.message); }
  }

  async function loadMe() {
    try { S.me = await api("whoami"); } catch (err) { console.warn("whoami", err); return; }
    $("#me").textContent = (S.me.named ? S.me.name + " · " : "") + S.me.role;
    $("#tab-approvals").classList.toggle("hidden", !(may("approve") && S.me.control));
    $("#kill").classList.toggle("hidden", !S.me.control);
    S.dirty = true;
  }

  // ------------------------------------------------------------------ crowding
  async function loadCrowd() {
    try {
      const r = await api("crowding", { limit: 40, sort: $("#c-sort").value, by: $("#c-by").value });
      const tb = $("#crowd-t tbody");
      tb.replaceChildren(...r.rows.map((x) => {
        const c = x.cross;
        return el("tr", null,
          el("td", { class: "l" }, el("span", { class: "acct-link", text: x.symbol, title: "what-if: this symbol",
            onclick: () => { $("#w-scope").value = "symbol"; $("#w-symbol").value = x.symbol; scopeUi(); runWhatIf(); } })),
          el("td", { class: "l muted", text: x.board }),
          el("td", { text: money(x.price) }), el("td", { text: money(x.limit_down) }),
          el("td", { class: "worse", text: signedPct(x.move) }), el("td", { text: int(x.holders) }),
          el("td", { class: c.warning.accounts ? "r-WARNING" : "muted", text: int(c.warning.accounts) }),
          el("td", { text: compact(c.warning.debt) }),
          el("td", { class: c.margin_call.accounts ? "r-MARGIN_CALL" : "muted", text: int(c.margin_call.accounts) }),
          el("td", { text: compact(c.margin_call.debt) }),
          el("td", { class: c.forced_liquidation.accounts ? "r-FORCED_LIQUIDATION" : "muted", text: int(c.forced_liquidation.accounts) }),
          el("td", { text: compact(c.forced_liquidation.debt) }));
      }));
      $("#crowd-info").textContent = `${int(r.securities)} stocks · as of ${hhmmss(r.computed_ns)} · ${r.refresh_ms.toFixed(0)} ms`;
    } catch (err) { $("#crowd-info").textContent = "error: " + err.message; }
  }

  // ------------------------------------------------------------------ what-if
  function scopeUi() {
    const v = $("#w-scope").value;
    $("#w-board").classList.toggle("hidden", v !== "board");
    $("#w-symbol").classList.toggle("hidden", v !== "symbol");
  }

  async function runWhatIf(ev) {
    if (ev) ev.preventDefault();
    const kind = $("#w-scope").value;
    const scope = kind === "all" ? "all" : kind === "board" ? "board:" + $("#w-board").value : "symbol:" + $("#w-symbol").value.trim().toUpperCase();
    const shock = Number($("#w-shock").value) / 100;
    const out = $("#w-out");
    $("#w-run").disabled = true;
    try {
      const r = await api("whatif", { scope, shock, limit_band: $("#w-band").checked ? 1 : "", top: 12 });
      const t = el("table", { class: "grid-t" }, el("thead", null, el("tr", null,
        el("th", { class: "l", text: "Tier" }), el("th", { text: "Accounts now" }), el("th", { text: "After" }),
        el("th", { text: "Δ" }), el("th", { text: "Debt now" }), el("th", { text: "Debt after" }))));
      const tb = el("tbody");
      for (const tier of TIERS) {
        const a = r.now[tier], b = r.after[tier], d = b.accounts - a.accounts;
        tb.append(el("tr", null, el("td", { class: "l" }, badge(tier)), el("td", { text: int(a.accounts) }),
          el("td", { class: "r-" + tier, text: int(b.accounts) }),
          el("td", { class: d === 0 ? "muted" : ((RANK[tier] <= 2) === (d > 0) ? "delta-up" : "delta-down"), text: d === 0 ? "0" : (d > 0 ? "+" : "") + int(d) }),
          el("td", { text: compact(a.debt) }), el("td", { text: compact(b.debt) })));
      }
      t.append(tb);
      const h = el("table", { class: "grid-t" }, el("thead", null, el("tr", null,
        el("th", { class: "l", text: "Hardest hit" }), el("th", { text: "Ratio now → after" }), el("th", { class: "l", text: "Tier after" }))),
        el("tbody", null, ...r.hardest.map((x) => el("tr", null, el("td", { class: "l" }, acctLink(x.account_id)),
          el("td", { class: "r-" + x.tier_after, text: pct(x.ratio_now) + " → " + pct(x.ratio_after) }),
          el("td", { class: "l" }, badge(x.tier_after))))));
      const fl = r.after.FORCED_LIQUIDATION.accounts - r.now.FORCED_LIQUIDATION.accounts;
      out.replaceChildren(el("div", { class: "wi" },
        el("div", { class: "sum" },
          el("span", { class: "muted" }, `${r.scope} ${signedPct(r.shock)} · ${int(r.securities)} securities · ${r.ms.toFixed(0)} ms`),
          el("span", { class: "bad" }, el("b", { text: int(r.worse.accounts) }), " accounts worse, debt ", el("b", { text: compact(r.worse.debt) })),
          el("span", null, el("b", { text: (fl >= 0 ? "+" : "") + int(fl) }), " forced")),
        el("div", null, t), el("div", null, h)));
    } catch (err) {
      out.replaceChildren(el("div", { class: "empty err", text: "What-if failed: " + err.message }));
    } finally { $("#w-run").disabled = false; }
  }

  async function symbolHints() {
    const p = $("#w-symbol").value.trim().toUpperCase();
    if (p.length < 2) return;
    try {
      const r = await api("symbols", { prefix: p, limit: 20 });
      $("#w-symbols").replaceChildren(...r.symbols.map((s) => el("option", { value: s })));
    } catch (_) { /* hints only */ }
  }

  // ------------------------------------------------------------------ drill-down
  function openDrill(id) {
    S.drill = { id, data: null };
    $("#drawer").classList.add("open");
    $("#drawer").setAttribute("aria-hidden", "false");
    $("#shade").classList.add("on");
    $("#d-id").textContent = id;
    $("#d-body").replaceChildren(el("div", { class: "empty", text: "Loading…" }));
    loadDrill();
  }
  function closeDrill() {
    S.drill = null;
    $("#drawer").classList.remove("open");
    $("#drawer").setAttribute("aria-hidden", "true");
    $("#shade").classList.remove("on");
  }

  async function loadDrill() {
    const d = S.drill;
    if (!d) return;
    try {
      const r = await api("account", { id: d.id });
      if (S.drill !== d) return;
      d.data = r;
      renderDrill(r);
    } catch (err) {
      if (S.drill === d) $("#d-body").replaceChildren(el("div", { class: "empty err", text: err.message }));
    }
  }

  function kv(label, value, cls) { return el("div", null, el("span", { text: label }), el("b", { class: cls, text: value })); }

  function chart(r) {
    const W = 760, H = 150, P = { l: 48, r: 10, t: 10, b: 18 };
    const pts = r.history.filter((p) => p[1] !== null);
    const svgNS = "http://www.w3.org/2000/svg";
    const mk = (tag, attrs) => { const e = document.createElementNS(svgNS, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; };
    const svg = mk("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", id: "d-chart" });
    const lines = [["normal", "var(--warn)"], ["warning", "var(--mc)"], ["margin_call", "var(--fl)"]];
    const now = r.server_ns;
    if (!pts.length) return svg;
    const t0 = pts[0][0], t1 = Math.max(now, t0 + 1e9);  // ns: "+ 1" is lost in a double
    // the ratio's range, widened to the nearest line above and below it
    const vals = pts.map((p) => p[1]), levels = lines.map(([n]) => r.lines[n]);
    let lo = Math.min(...vals), hi = Math.max(...vals);
    const above = levels.filter((v) => v >= hi), below = levels.filter((v) => v <= lo);
    if (above.length) hi = Math.min(...above);
    if (below.length) lo = Math.max(...below);
    const pad = (hi - lo) * 0.1 || 0.02; lo -= pad; hi += pad;
    const x = (t) => P.l + (W - P.l - P.r) * (t - t0) / (t1 - t0);
    const y = (v) => P.t + (H - P.t - P.b) * (1 - (v - lo) / (hi - lo));
    for (const [name, col] of lines) {
      const v = r.lines[name];
      if (v < lo || v > hi) continue;
      svg.append(mk("line", { x1: P.l, x2: W - P.r, y1: y(v), y2: y(v), stroke: col, "stroke-dasharray": "4 4", "stroke-width": 1, opacity: 0.8 }));
      const t = mk("text", { x: 4, y: y(v) + 3 }); t.textContent = (v * 100).toFixed(0) + "%"; svg.append(t);
    }
    let dpath = "";
    pts.forEach((p, i) => { dpath += (i ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1) + (i < pts.length - 1 ? "H" + x(pts[i + 1][0]).toFixed(1) : ""); });
    dpath += "H" + x(now).toFixed(1);
    svg.append(mk("path", { d: dpath, fill: "none", stroke: "#9ecbff", "stroke-width": 1.8 }));
    const last = pts[pts.length - 1];
    svg.append(mk("circle", { cx: x(now), cy: y(last[1]), r: 3, fill: "#fff" }));
    const lv = mk("text", { x: Math.max(P.l, x(now) - 58), y: Math.max(P.t + 8, y(last[1]) - 6), class: "cur" });
    lv.textContent = (last[1] * 100).toFixed(2) + "%"; svg.append(lv);
    const tl = mk("text", { x: P.l, y: H - 4 }); tl.textContent = hhmmss(t0); svg.append(tl);
    const tr = mk("text", { x: W - P.r - 52, y: H - 4 }); tr.textContent = hhmmss(now); svg.append(tr);
    return svg;
  }

  function renderDrill(r) {
    $("#d-tier").className = "badge b-" + r.tier;
    $("#d-tier").textContent = SHORT[r.tier];
    const ratio = $("#d-ratio");
    ratio.textContent = r.ratio === null ? "no debt" : (r.ratio * 100).toFixed(4) + "%";
    ratio.dataset.ratio = r.ratio === null ? "" : String(r.ratio);
    ratio.className = "big r-" + r.tier;
    const b = r.breakdown;
    const body = [];
    body.push(el("div", { class: "kv" },
      kv("Assets", money(r.assets)), kv("Liabilities", money(r.liabilities)),
      kv("Available margin", money(r.available_margin_balance), r.available_margin_balance < 0 ? "worse" : ""),
      kv("Withdrawable", money(r.withdrawable)), kv("Free cash", money(r.free_cash)),
      kv("Cash", money(b.cash)), kv("Long market value", money(b.long_market_value)),
      kv("Financed principal", money(b.financed_principal)), kv("Short market value", money(b.short_market_value)),
      kv("Interest & fees", money(b.interest_fees)), kv("Other debt", money(b.other_debt + b.negative_cash)),
      kv("Stress ratio (limit move)", pct(r.stress_ratio), r.stress_ratio !== null && r.stress_ratio < r.lines.margin_call ? "worse" : ""),
      kv("Profile", r.profile)));
    // cure
    body.push(el("div", { class: "sec" }, "Cure", el("span", { class: "muted", text: r.liquidation_status.replaceAll("_", " ").toLowerCase() })));
    body.push(el("div", { class: "kv" },
      kv("Deposit to target", money(r.cure.deposit), r.cure.deposit ? "r-MARGIN_CALL" : ""),
      kv("Or repay from outside", money(r.cure.repay)),
      kv("Or liquidate (value)", r.liquidation_value === null ? "everything" : money(r.liquidation_value)),
      kv("Shortfall", money(r.shortfall), r.shortfall ? "worse" : "")));
    // lines
    const lineBox = (key, tier, label) => {
      const v = r.lines[key], dist = r.distance[tier], below = r.ratio !== null && r.ratio < v;
      return el("div", { class: "line t-" + tier.toUpperCase() },
        el("span", { text: `${label} ${pct(v, 0)}` }),
        el("b", { class: below ? "worse" : "", text: below ? "breached" : (dist === null ? "–" : "−" + (dist * 100).toFixed(2) + "%") }),
        el("span", { text: below ? "ratio is below this line" : r.ratio === null ? "no debt" : `${((r.ratio - v) * 100).toFixed(2)}pt above; uniform fall of long prices to reach it` }));
    };
    body.push(el("div", { class: "sec" }, "Distance to each line"));
    body.push(el("div", { class: "lines" }, lineBox("normal", "warning", "Warning line"),
      lineBox("warning", "margin_call", "Margin-call line"), lineBox("margin_call", "forced_liquidation", "Forced-liquidation line")));
    // history
    body.push(el("div", { class: "sec" }, "Ratio history", el("span", { class: "muted", text: `${r.history.length} points since tracking began` })));
    body.push(chart(r));
    // call
    if (r.call) {
      body.push(el("div", { class: "sec" }, "Margin call"));
      body.push(el("div", { class: "kv" }, kv("State", r.call.state), kv("Issued", dayTime(r.call.issued_ns)),
        kv("Deadline (CN)", dayTime(r.call.deadline_ns)), kv("Amount at issue", money(r.call.amount))));
    }
    // positions
    const pt = el("table", { class: "grid-t", id: "d-positions" }, el("thead", null, el("tr", null,
      ...[["Symbol", "l"], ["Kind", "l"], ["Qty", ""], ["Price", ""], ["Day", ""], ["Market value", ""], ["Haircut", ""], ["Cost", ""], ["P&L", ""]]
        .map(([h, c]) => el("th", { class: c, text: h })))));
    pt.append(el("tbody", null, ...r.positions.map((p) => el("tr", null,
      el("td", { class: "l" }, p.symbol, p.suspended ? el("span", { class: "kind", text: " SUSP" }) : null, p.at_limit_down ? el("span", { class: "kind worse", text: " LD" }) : null),
      el("td", { class: "l txt muted", text: p.kind }), el("td", { text: int(p.qty) }), el("td", { text: money(p.price) }),
      el("td", { class: p.change < 0 ? "worse" : "better", text: signedPct(p.change, 2) }),
      el("td", { text: money0(p.market_value) }), el("td", { text: p.haircut.toFixed(2) }),
      el("td", { text: p.cost === null ? "–" : money0(p.cost) }),
      el("td", { class: p.pnl === null ? "" : p.pnl < 0 ? "worse" : "better", text: p.pnl === null ? "–" : money0(p.pnl) })))));
    body.push(el("div", { class: "sec" }, "Positions", el("span", { class: "muted", text: `${r.positions.length}` })), pt);
    // contracts (负债合约), in repayment order
    const cs = r.contracts || [];
    const ct = el("table", { class: "grid-t", id: "d-contracts" }, el("thead", null, el("tr", null,
      ...[["Contract", "l"], ["Symbol", "l"], ["Kind", "l"], ["Qty", ""], ["Owed", ""], ["Margin ratio", ""], ["Opened", "l"], ["Term end", "l"], ["Notice", "l"]]
        .map(([h, c]) => el("th", { class: c, text: h })))));
    const ctb = el("tbody", null, ...cs.map((c) => el("tr", { dataset: { contract: c.contract_id } },
      el("td", { class: "l", text: c.contract_id }), el("td", { class: "l", text: c.symbol }),
      el("td", { class: "l txt muted", text: c.kind }), el("td", { text: int(c.qty) }),
      el("td", { text: money0(c.kind === "financed" ? c.principal : c.market_value) }),
      el("td", { text: (c.margin_ratio * 100).toFixed(0) + "%" }),
      el("td", { class: "l", text: c.open_date || "–" }), el("td", { class: "l", text: c.term_end || "none" }),
      el("td", { class: "l" + (c.notice ? " worse" : ""), text: c.notice || "" }))));
    if (!cs.length) ctb.append(el("tr", null, el("td", { class: "l muted", colspan: 9, text: "No open contracts." })));
    ct.append(ctb);
    body.push(el("div", { class: "sec" }, "Contracts", el("span", { class: "muted", text: `${cs.length} open, repayment order` })), ct);
    // plan
    // plan: free cash first (the cash repayment), then the orders
    const cashRepay = r.plan.cash_repayment || 0;
    const planned = r.plan.orders.length || cashRepay > 0;
    body.push(el("div", { class: "sec" }, "Liquidation plan preview",
      el("span", { class: "muted", text: planned ? `ratio after ${pct(r.plan.ratio_after)}` + (r.plan.residual ? ` · residual ${money0(r.plan.residual)}` : "") : "nothing to liquidate" })));
    if (planned) {
      const steps = [];
      if (cashRepay > 0) {
        steps.push(el("tr", { class: "cash-repayment" }, el("td", { class: "l muted", text: 1 }),
          el("td", { class: "l txt muted", text: "free cash" }),
          el("td", { class: "l txt", text: `cash repayment (interest ${money0(r.plan.interest_repaid || 0)}, principal ${money0(r.plan.principal_repaid || 0)})` }),
          el("td", { text: "–" }), el("td", { text: "–" }), el("td", { text: money0(cashRepay) })));
      }
      const first = steps.length + 1;
      body.push(el("table", { class: "grid-t", id: "d-plan" }, el("thead", null, el("tr", null,
        el("th", { class: "l", text: "#" }), el("th", { class: "l", text: "Symbol" }), el("th", { class: "l", text: "Side" }),
        el("th", { text: "Qty" }), el("th", { text: "Price" }), el("th", { text: "Value" }))),
        el("tbody", null, ...steps, ...r.plan.orders.map((o, i) => el("tr", null, el("td", { class: "l muted", text: i + first }),
          el("td", { class: "l", text: o.symbol }), el("td", { class: "l txt", text: o.side.replaceAll("_", " ") }),
          el("td", { text: int(o.qty) }), el("td", { text: money(o.price) }), el("td", { text: money0(o.value) }))))));
    }
    // events
    const evs = r.events || [];
    const seen = new Set(evs.map((e) => e.event_id));
    const olderAcks = Object.values(r.acks || {}).filter((a) => !seen.has(a.event_id));
    body.push(el("div", { class: "sec" }, "Events", el("span", { class: "muted", text: `${evs.length} this run` })));
    const et = el("table", { class: "grid-t evlist", id: "d-events" }, el("thead", null, el("tr", null,
      el("th", { class: "l", text: "Time" }), el("th", { class: "l", text: "Event" }), el("th", { class: "l", text: "Trigger" }),
      el("th", { text: "Ratio" }), el("th", { class: "l", text: "Acknowledgement" }))));
    const tb = el("tbody");
    for (const e of evs) {
      const a = (r.acks || {})[e.event_id] || S.acks.get(e.event_id);
      tb.append(el("tr", { class: "k-" + e.kind, dataset: { id: e.event_id } },
        el("td", { class: "l", text: hhmmssms(e.ts_published) }), el("td", { class: "l" }, eventCell(e)),
        el("td", { class: "l" }, trigger(e)), ratioCell(e),
        el("td", { class: "l note" }, a ? el("span", null, el("span", { class: "ackd", text: "✓ " }), `${a.by}: ${a.note || "(no note)"}`)
          : el("button", { class: "btn sm ack-btn", text: "Ack", onclick: () => openAck(e) }))));
    }
    for (const a of olderAcks) {
      tb.append(el("tr", { class: "muted" }, el("td", { class: "l", text: dayTime(a.event_ts || a.ts) }),
        el("td", { class: "l" }, el("span", { class: "kind", text: "earlier run" }), badge(a.tier)), el("td", { class: "l", text: a.event_id }),
        el("td", { text: "" }), el("td", { class: "l note" }, el("span", { class: "ackd", text: "✓ " }), `${a.by}: ${a.note || "(no note)"}`)));
    }
    if (!evs.length && !olderAcks.length) tb.append(el("tr", null, el("td", { class: "l muted", colspan: 5, text: "No events for this account in this run." })));
    et.append(tb);
    body.push(et);
    const scroll = $("#d-body").scrollTop;
    $("#d-body").replaceChildren(...body);
    $("#d-body").scrollTop = scroll;
  }

  // ------------------------------------------------------------------ wiring
  function bind() {
    $$("#f-tiers .fchip").forEach((b) => b.addEventListener("click", () => { b.classList.toggle("on"); setFilter(); }));
    $("#f-account").addEventListener("input", setFilter);
    $("#f-symbol").addEventListener("input", setFilter);
    $("#pause").addEventListener("click", () => {
      S.paused = !S.paused;
      $("#pause").textContent = S.paused ? "Resume" : "Pause";
      $("#pause").classList.toggle("on", S.paused);
      if (!S.paused) { for (const e of S.pending.splice(0)) if (!S.byId.has(e.event_id)) addRow(e, true); }
      S.dirty = true; updateFeedInfo();
    });
    $$("#w-tabs .tab").forEach((b) => b.addEventListener("click", () => {
      $$("#w-tabs .tab").forEach((x) => x.classList.toggle("on", x === b));
      S.tab = b.dataset.tab; loadSide();
    }));
    $$(".tile[data-tier]").forEach((t) => t.addEventListener("click", () => {
      const tier = t.dataset.tier;
      $$("#f-tiers .fchip").forEach((b) => b.classList.toggle("on", b.dataset.tier === tier));
      setFilter();
    }));
    $("#tile-calls").addEventListener("click", () => $('#w-tabs .tab[data-tab="calls"]').click());
    $("#c-sort").addEventListener("change", loadCrowd);
    $("#c-by").addEventListener("change", loadCrowd);
    $("#w-scope").addEventListener("change", scopeUi);
    $("#w-form").addEventListener("submit", runWhatIf);
    $("#w-symbol").addEventListener("input", () => { clearTimeout(S.symT); S.symT = setTimeout(symbolHints, 200); });
    $("#d-close").addEventListener("click", closeDrill);
    $("#shade").addEventListener("click", closeDrill);
    $("#ack-cancel").addEventListener("click", closeAck);
    $("#kill").addEventListener("click", toggleKill);
    $("#ack-form").addEventListener("submit", submitAck);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape") { if (!$("#ackdlg").classList.contains("hidden")) closeAck(); else closeDrill(); }
    });
    $("#sound").addEventListener("click", () => {
      S.sound = !S.sound;
      if (S.sound && !S.audio) { try { S.audio = new (window.AudioContext || window.webkitAudioContext)(); } catch (_) { S.sound = false; } }
      $("#sound").textContent = S.sound ? "Sound on" : "Sound off";
      $("#sound").classList.toggle("on", S.sound);
      if (S.sound) beep(880);
    });
    if (location.hash.length > 1) openDrill(decodeURIComponent(location.hash.slice(1)));
  }

  function tick() {
    const d = new Date(Date.now() + S.serverOffsetMs);
    $("#clock").textContent = tfmt.format(d) + " CN";
    renderHealth();
    for (const s of $$(".due[data-deadline]")) {
      const left = (Number(s.dataset.deadline) / 1e6 - (Date.now() + S.serverOffsetMs)) / 1000;
      s.className = left < 0 ? "due past" : left < 3600 ? "due soon" : "due";
      s.textContent = left < 0 ? "EXPIRED" : "due " + dur(left);
    }
  }

  function every(ms, fn) {
    fn();
    setInterval(() => { if (!document.hidden) fn(); }, ms);
  }

  async function start() {
    bind();
    setHead("worst");
    try { S.summary = await api("summary"); S.lastBeatAt = 0; renderTiers(); renderHealth(); } catch (_) { return; }
    await loadMe();
    await loadAcks();
    await backfill();
    connect();
    setInterval(tick, 500);
    const frame = () => { renderFeed(); setTimeout(() => requestAnimationFrame(frame), 200); };
    requestAnimationFrame(frame);
    every(2000, loadSide);
    every(5000, loadCrowd);
    every(5000, loadNextCall);
    every(5000, loadKill);
    setInterval(() => { if (S.drill && !document.hidden) loadDrill(); }, 2000);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
