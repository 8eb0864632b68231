// The troupe dashboard: a client of the HTTP API of docs/http-api.md.
//
// It keeps the bearer token in localStorage, polls the runs and the approval
// queue every 2 s (and sooner when a run's events say something changed), and
// follows the run being viewed through GET /v1/runs/{id}/events. EventSource
// cannot send an Authorization header, so the event stream is read with
// fetch() and parsed here (readEventStream), resuming with Last-Event-ID after
// a drop. The run's spans are drawn as a Gantt chart (one row per agent, bars
// for model and tool calls) and as a collapsible tree of the whole trace.
//
// Plain DOM code, no framework; every element the tests use has a stable id.
'use strict';

(() => {
  const TOKEN_KEY = 'troupe.token';
  const PAGE_SIZE = 20;
  const REFRESH_MS = 2000;
  const FINISHED = new Set(['complete', 'max_steps', 'failed', 'halted', 'cancelled']);

  const $ = (selector) => document.querySelector(selector);

  /// Creates an element: el('td', {className: 'num'}, 'text', childNode).
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key === 'style') node.setAttribute('style', value);
      else if (key.startsWith('aria-') || key === 'role' || key === 'for') node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // --- formatting ----------------------------------------------------------

  function fmtDuration(ms) {
    if (ms === undefined || ms === null || !isFinite(ms)) return '';
    if (ms <= 0) return '0 ms';
    if (ms < 1) return `${ms.toFixed(2)} ms`;
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    const s = Math.round(ms / 1000);
    if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
    return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  }

  function fmtTime(ms) {
    if (!ms) return '';
    const d = new Date(ms);
    const now = new Date();
    const time = d.toLocaleTimeString('en-GB', {hour12: false});
    if (d.toDateString() === now.toDateString()) return time;
    return `${d.toISOString().slice(0, 10)} ${time}`;
  }

  function fmtCost(usd) {
    if (typeof usd !== 'number' || !isFinite(usd)) return '';
    if (usd === 0) return '$0';
    return '$' + usd.toFixed(usd < 1 ? 4 : 2);
  }

  function fmtInt(n) {
    return typeof n === 'number' ? n.toLocaleString('en-US') : '';
  }

  function excerpt(text, max) {
    text = String(text || '').replace(/\s+/g, ' ').trim();
    return text.length > max ? text.slice(0, max - 1) + '…' : text;
  }

  function statusBadge(status, id) {
    return el('span', {className: `status status-${status || 'unknown'}`, id}, status || '…');
  }

  function jsonText(value) {
    if (typeof value === 'string') return value;
    try {
      return JSON.stringify(value, null, 2);
    } catch (e) {
      return String(value);
    }
  }

  // --- the error bar -----------------------------------------------------------

  /// Which background refresh (or 'action' for a click) put the current error
  /// up: a refresh that succeeds later takes its own error down again.
  let errorSource = null;

  function showError(err, source) {
    let text;
    if (err instanceof ApiError) {
      text = err.status ? `${err.status} ${err.code}: ${err.message}` : err.message;
    } else {
      text = err && err.message ? err.message : String(err);
    }
    $('#error-text').textContent = text;
    $('#error-bar').hidden = false;
    errorSource = source || 'action';
  }

  function clearError(source) {
    if (source && errorSource !== source) return;
    $('#error-bar').hidden = true;
    $('#error-text').textContent = '';
    errorSource = null;
  }

  // --- the API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  let token = localStorage.getItem(TOKEN_KEY) || '';

  function authHeaders(extra) {
    const headers = Object.assign({}, extra);
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  /// The API's error for a response that is not 2xx: its JSON error's
  /// message, else the status line and the start of the body.
  async function errorOf(res, what) {
    const text = await res.text().catch(() => '');
    let doc = null;
    try {
      doc = text ? JSON.parse(text) : null;
    } catch (e) {
      doc = null;
    }
    const e = doc && typeof doc.error === 'object' && doc.error ? doc.error : {};
    const message = e.message ||
      `${what}: HTTP ${res.status}${text ? ': ' + excerpt(text, 200) : ''}`;
    return new ApiError(res.status, e.code || 'http_error', message);
  }

  async function api(method, path, body) {
    const what = `${method} ${path}`;
    const init = {method, cache: 'no-store', headers: authHeaders({Accept: 'application/json'})};
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'network', `cannot reach the server (${what}): ${e.message}`);
    }
    if (!res.ok) {
      const err = await errorOf(res, what);
      if (res.status === 401 && token) signOut(err);
      throw err;
    }
    const text = await res.text();
    try {
      return text ? JSON.parse(text) : null;
    } catch (e) {
      throw new ApiError(res.status, 'bad_json', `${what}: the answer is not JSON: ${e.message}`);
    }
  }

  const enc = encodeURIComponent;

  /// Runs `fn` now, or once more right after the call in flight: refreshes
  /// never overlap and a request made meanwhile is not lost.
  function serialised(fn) {
    let running = false;
    let again = false;
    return async function run() {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        do {
          again = false;
          await fn();
        } while (again);
      } finally {
        running = false;
      }
    };
  }

  // --- signing in and out ----------------------------------------------------------

  const timers = [];

  function showLogin() {
    $('#app').hidden = true;
    $('#sign-out').hidden = true;
    $('#signed-in').hidden = true;
    $('#login').hidden = false;
    $('#token').value = '';
    $('#token').focus();
  }

  async function signIn(candidate) {
    token = candidate;
    try {
      const doc = await api('GET', '/v1/swarms');
      localStorage.setItem(TOKEN_KEY, token);
      clearError();
      enterApp(doc);
    } catch (e) {
      token = '';
      showError(e, 'sign-in');
      showLogin();
    }
  }

  function signOut(err) {
    token = '';
    localStorage.removeItem(TOKEN_KEY);
    while (timers.length) clearInterval(timers.pop());
    closeRunView();
    approvalNodes.clear();
    $('#approvals').replaceChildren();
    $('#runs tbody').replaceChildren();
    showLogin();
    if (err) showError(err, 'sign-in');
    else clearError();
  }

  function enterApp(swarmsDoc) {
    $('#login').hidden = true;
    $('#app').hidden = false;
    $('#sign-out').hidden = false;
    $('#signed-in').hidden = false;
    $('#signed-in').textContent = `token …${token.slice(-4)}`;
    if (swarmsDoc) renderSwarms(swarmsDoc);
    else refreshSwarms();
    refreshRuns();
    refreshApprovals();
    timers.push(setInterval(() => {
      if (document.hidden) return;
      refreshRuns();
      refreshApprovals();
      if (!swarmsLoaded) refreshSwarms();
    }, REFRESH_MS));
    timers.push(setInterval(tick, 1000));
    route();
  }

  // --- swarms and submitting ---------------------------------------------------------

  let swarmsLoaded = false;
  let swarmList = [];

  const refreshSwarms = serialised(async () => {
    try {
      renderSwarms(await api('GET', '/v1/swarms'));
      clearError('swarms');
    } catch (e) {
      showError(e, 'swarms');
    }
  });

  function renderSwarms(doc) {
    swarmList = (doc && doc.swarms) || [];
    const select = $('#swarm');
    const previous = select.value;
    select.replaceChildren(...swarmList.map((s) => el('option', {value: s.name}, s.name)));
    if (swarmList.some((s) => s.name === previous)) select.value = previous;
    swarmsLoaded = true;
    describeSwarm();
  }

  function describeSwarm() {
    const s = swarmList.find((x) => x.name === $('#swarm').value);
    $('#swarm-description').textContent =
      s ? `${s.description || ''}${s.entry ? ` (entry: ${s.entry})` : ''}` : '';
  }

  async function submitRun(event) {
    event.preventDefault();
    const button = $('#submit-run');
    button.disabled = true;
    $('#submit-result').textContent = '';
    try {
      const run = await api('POST', '/v1/runs', {swarm: $('#swarm').value, goal: $('#goal').value});
      clearError('action');
      $('#submit-result').replaceChildren(
        'Run ', el('a', {href: `#/runs/${enc(run.id)}`}, run.id), ` ${run.status}.`);
      $('#goal').value = '';
      refreshRuns();
    } catch (e) {
      showError(e, 'action');
    } finally {
      button.disabled = false;
    }
  }

  // --- the runs table -------------------------------------------------------------------

  /// Cursors of the pages visited: the last is the page shown ('' = newest).
  let cursors = [''];
  let nextCursor = null;

  const refreshRuns = serialised(async () => {
    const cursor = cursors[cursors.length - 1];
    const filter = $('#status-filter').value;
    const query = new URLSearchParams({limit: String(PAGE_SIZE)});
    if (filter) query.set('status', filter);
    if (cursor) query.set('cursor', cursor);
    try {
      const doc = await api('GET', `/v1/runs?${query}`);
      // The filter or page changed while the answer travelled: the next
      // refresh (already asked for) draws the right one.
      if (filter !== $('#status-filter').value || cursor !== cursors[cursors.length - 1]) return;
      renderRuns(doc);
      clearError('runs');
    } catch (e) {
      showError(e, 'runs');
    }
  });

  function renderRuns(doc) {
    const runs = (doc && doc.runs) || [];
    nextCursor = doc && doc.next_cursor ? doc.next_cursor : null;
    const rows = runs.map((run) => {
      const running = run.status === 'running' && run.started_ms;
      const usage = run.usage || {};
      const tokens = (usage.input_tokens || 0) + (usage.output_tokens || 0);
      const row = el('tr', {
        dataset: {runId: run.id, status: run.status},
        tabIndex: 0,
        className: currentRun && currentRun.id === run.id ? 'selected' : '',
        'aria-label': `run ${run.id}, ${run.status}`,
      },
      el('td', {}, el('a', {href: `#/runs/${enc(run.id)}`, className: 'run-link'}, run.id)),
      el('td', {}, run.swarm),
      el('td', {className: 'goal', title: run.goal}, excerpt(run.goal, 70)),
      el('td', {}, statusBadge(run.status)),
      el('td', {className: 'num'}, fmtInt(run.steps)),
      el('td', {className: 'num', title: `${fmtInt(usage.input_tokens)} in / ${fmtInt(usage.output_tokens)} out`},
        fmtInt(tokens)),
      el('td', {className: 'num'}, fmtCost(run.cost_usd)),
      el('td', {title: run.created_ms ? `created ${new Date(run.created_ms).toISOString()}` : ''},
        fmtTime(run.started_ms)),
      el('td', {
        className: 'num duration',
        dataset: running ? {since: String(run.started_ms)} : {},
      }, running ? fmtDuration(Date.now() - run.started_ms)
        : run.started_ms && run.ended_ms ? fmtDuration(run.ended_ms - run.started_ms) : ''));
      return row;
    });
    $('#runs tbody').replaceChildren(...rows);
    $('#runs-empty').hidden = rows.length > 0;
    $('#runs-total').textContent = typeof doc.total === 'number' ? `(${doc.total})` : '';
    $('#page-older').disabled = !nextCursor;
    $('#page-newer').disabled = cursors.length <= 1;
    $('#page-number').textContent = `page ${cursors.length}`;
  }

  function openRowRun(event) {
    const row = event.target.closest('tr[data-run-id]');
    if (!row) return;
    if (event.type === 'keydown' && event.key !== 'Enter') return;
    if (event.target.closest('a')) return; // the link changes the hash itself
    location.hash = `#/runs/${enc(row.dataset.runId)}`;
  }

  // --- the approval queue ------------------------------------------------------------

  /// Pending requests' elements by id, kept across refreshes so that a note
  /// being typed survives them.
  const approvalNodes = new Map();

  const refreshApprovals = serialised(async () => {
    try {
      const doc = await api('GET', '/v1/approvals');
      renderApprovals((doc && doc.approvals) || []);
      clearError('approvals');
    } catch (e) {
      showError(e, 'approvals');
    }
  });

  function renderApprovals(list) {
    const ids = new Set(list.map((r) => r.id));
    for (const [id, node] of approvalNodes) {
      if (!ids.has(id)) {
        node.remove();
        approvalNodes.delete(id);
      }
    }
    const box = $('#approvals');
    for (const req of list) {
      if (!approvalNodes.has(req.id)) {
        const node = approvalNode(req);
        approvalNodes.set(req.id, node);
        box.append(node);
      }
    }
    $('#approvals-empty').hidden = list.length > 0;
    $('#approvals-count').textContent = list.length ? `(${list.length})` : '';
    tick();
  }

  function approvalNode(req) {
    const noteId = `note-${req.id}`;
    const approve = el('button', {type: 'button', className: 'approve'}, 'Approve');
    const deny = el('button', {type: 'button', className: 'deny'}, 'Deny');
    const note = el('input', {id: noteId, className: 'note', type: 'text', placeholder: 'why (optional)'});
    const node = el('article', {
      className: 'approval',
      dataset: {approvalId: req.id, runId: req.run_id || ''},
      'aria-label': `approval ${req.id}: ${req.action} by ${req.agent}`,
    },
    el('div', {className: 'approval-head'},
      el('strong', {className: 'action'}, req.action),
      ' by ', el('span', {className: 'agent'}, req.agent || '?'),
      req.run_id ? el('span', {}, ' in run ', el('a', {href: `#/runs/${enc(req.run_id)}`, className: 'run'}, req.run_id)) : null),
    req.reason ? el('p', {className: 'reason'}, req.reason) : null,
    el('pre', {className: 'args'}, jsonText(req.args)),
    el('p', {className: 'time-left muted', dataset: {expires: String(req.expires_ms || '')}}),
    el('div', {className: 'approval-actions'},
      el('label', {for: noteId}, 'Note'), note, approve, deny));
    const decide = async (decision) => {
      approve.disabled = deny.disabled = true;
      try {
        await api('POST', `/v1/approvals/${enc(req.id)}`, {decision, note: note.value});
        clearError('action');
        node.remove();
        approvalNodes.delete(req.id);
        renderApprovalCount();
        refreshRuns();
      } catch (e) {
        showError(e, 'action');
        approve.disabled = deny.disabled = false;
      }
      refreshApprovals();
    };
    approve.addEventListener('click', () => decide('approve'));
    deny.addEventListener('click', () => decide('deny'));
    return node;
  }

  function renderApprovalCount() {
    const n = approvalNodes.size;
    $('#approvals-empty').hidden = n > 0;
    $('#approvals-count').textContent = n ? `(${n})` : '';
  }

  /// Once a second: the approvals' time left and the running runs' durations.
  function tick() {
    const now = Date.now();
    for (const p of document.querySelectorAll('#approvals .time-left')) {
      const expires = Number(p.dataset.expires);
      if (!expires) p.textContent = '';
      else if (expires <= now) p.textContent = 'expired';
      else p.textContent = `time left: ${fmtDuration(expires - now)}`;
    }
    for (const td of document.querySelectorAll('#runs td.duration[data-since]')) {
      td.textContent = fmtDuration(now - Number(td.dataset.since));
    }
  }

  // --- server-sent events over fetch ------------------------------------------------------

  /// Reads a text/event-stream body (WHATWG HTML, 9.2) and calls onEvent with
  /// each dispatched event {id, event, data}; onRetry with a `retry:` value.
  /// Lines end with CRLF, LF or CR, split anywhere across chunks. An event
  /// left incomplete when the stream ends is dropped, as the standard says.
  async function readEventStream(body, onEvent, onRetry) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let data = [];
    let type = '';
    let lastId = '';
    const line = (text) => {
      if (text === '') {
        if (data.length) onEvent({id: lastId, event: type || 'message', data: data.join('\n')});
        data = [];
        type = '';
        return;
      }
      if (text[0] === ':') return;
      const colon = text.indexOf(':');
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? '' : text.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') data.push(value);
      else if (field === 'event') type = value;
      else if (field === 'id' && !value.includes('\0')) lastId = value;
      else if (field === 'retry' && /^\d+$/.test(value)) onRetry(Number(value));
    };
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      for (;;) {
        const m = /\r\n|\r|\n/.exec(buffer);
        if (!m) break;
        // A CR at the very end may be the first half of a CRLF.
        if (m[0] === '\r' && m.index === buffer.length - 1) break;
        const text = buffer.slice(0, m.index);
        buffer = buffer.slice(m.index + m[0].length);
        line(text);
      }
    }
  }

  // --- the run view ---------------------------------------------------------------------

  /// The run being viewed: its record, its trace records (spans by id, open
  /// spans, events), and the state of its event stream.
  let currentRun = null;

  function route() {
    const m = /^#\/runs\/(.+)$/.exec(location.hash);
    const id = m ? decodeURIComponent(m[1]) : null;
    if (!token) return;
    if (!id) {
      closeRunView();
      return;
    }
    if (currentRun && currentRun.id === id) return;
    openRunView(id);
  }

  function closeRunView() {
    if (currentRun) {
      currentRun.closed = true;
      currentRun.abort.abort();
    }
    currentRun = null;
    $('#run-view').hidden = true;
    for (const tr of document.querySelectorAll('#runs tr.selected')) tr.classList.remove('selected');
  }

  function openRunView(id) {
    closeRunView();
    const view = {
      id,
      run: null,
      spans: new Map(),
      open: new Map(),
      events: new Map(),
      lastEventId: '',
      ended: false,
      closed: false,
      retryMs: 1000,
      failures: 0,
      abort: new AbortController(),
      openNodes: new Set(),
      seenNodes: new Set(),
    };
    currentRun = view;
    $('#run-id').textContent = id;
    for (const sel of ['#run-swarm', '#run-goal', '#run-usage', '#run-answer', '#run-error', '#run-stream']) {
      $(sel).textContent = '';
    }
    setRunStatus('');
    $('#run-cancel').hidden = true;
    $('#timeline').replaceChildren();
    $('#trace').replaceChildren();
    $('#timeline-empty').hidden = false;
    $('#trace-empty').hidden = false;
    $('#run-view').hidden = false;
    for (const tr of document.querySelectorAll('#runs tr[data-run-id]')) {
      tr.classList.toggle('selected', tr.dataset.runId === id);
    }
    $('#run-view').scrollIntoView({block: 'start'});
    loadRun(view);
    loadTrace(view);
    followEvents(view);
  }

  function setRunStatus(status) {
    const badge = $('#run-status');
    badge.textContent = status;
    badge.className = `status status-${status || 'unknown'}`;
  }

  async function loadRun(view) {
    try {
      const run = await api('GET', `/v1/runs/${enc(view.id)}`);
      if (view.closed) return;
      showRun(view, run);
    } catch (e) {
      if (!view.closed) showError(e, 'action');
    }
  }

  function showRun(view, run) {
    view.run = run;
    setRunStatus(run.status);
    $('#run-swarm').textContent = run.swarm || '';
    $('#run-goal').textContent = run.goal || '';
    const usage = run.usage || {};
    $('#run-usage').textContent =
      `${fmtInt(run.steps)} steps, ${fmtInt(usage.input_tokens || 0)} tokens in, ` +
      `${fmtInt(usage.output_tokens || 0)} out, ${fmtCost(run.cost_usd || 0)}` +
      (run.attempts > 1 ? `, ${run.attempts} attempts` : '');
    $('#run-answer').textContent = run.answer || '';
    $('#run-error').textContent = run.error || '';
    $('#run-cancel').hidden = FINISHED.has(run.status);
    if (FINISHED.has(run.status)) view.ended = true;
  }

  async function loadTrace(view) {
    try {
      const doc = await api('GET', `/v1/runs/${enc(view.id)}/trace`);
      if (view.closed) return;
      for (const record of (doc && doc.records) || []) addRecord(view, record);
      scheduleDraw(view);
    } catch (e) {
      if (!view.closed) showError(e, 'action');
    }
  }

  async function cancelRun() {
    const view = currentRun;
    if (!view) return;
    try {
      showRun(view, await api('POST', `/v1/runs/${enc(view.id)}/cancel`));
      clearError('action');
      refreshRuns();
    } catch (e) {
      showError(e, 'action');
    }
  }

  /// Follows the run's events until its final status event, reconnecting
  /// after a drop with the last event id seen (Last-Event-ID), so nothing is
  /// missed and nothing is seen twice.
  async function followEvents(view) {
    const stream = $('#run-stream');
    while (!view.closed && !view.ended) {
      try {
        const headers = authHeaders({Accept: 'text/event-stream'});
        if (view.lastEventId) headers['Last-Event-ID'] = view.lastEventId;
        const res = await fetch(`/v1/runs/${enc(view.id)}/events`,
          {headers, cache: 'no-store', signal: view.abort.signal});
        if (!res.ok) throw await errorOf(res, `GET /v1/runs/${view.id}/events`);
        stream.textContent = 'live';
        view.failures = 0;
        await readEventStream(res.body, (ev) => {
          if (view.closed) return;
          onRunEvent(view, ev);
          view.lastEventId = ev.id;
        }, (ms) => {
          view.retryMs = ms;
        });
        if (view.ended || view.closed) break;
        stream.textContent = 'reconnecting…';
      } catch (e) {
        if (view.closed || e.name === 'AbortError') return;
        if (e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 429) {
          stream.textContent = '';
          if (e.status === 401 && token) signOut(e);
          else showError(e, 'action');
          return;
        }
        stream.textContent = 'reconnecting…';
      }
      // The page waits before reconnecting, longer after each failure in a
      // row, so a server that is down is not hammered.
      const wait = Math.min(view.retryMs * 2 ** Math.min(view.failures++, 4), 15000);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
    if (!view.closed) stream.textContent = view.ended ? '' : stream.textContent;
  }

  function onRunEvent(view, ev) {
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch (e) {
      console.warn('troupe: an event that is not JSON', ev);
      return;
    }
    const type = data.type || ev.event;
    if (type === 'trace' && data.record) {
      addRecord(view, data.record);
      scheduleDraw(view);
    } else if (type === 'status') {
      const run = Object.assign({}, view.run || {id: view.id});
      for (const key of ['status', 'answer', 'error', 'usage', 'cost_usd', 'steps', 'attempts']) {
        if (data[key] !== undefined) run[key] = data[key];
      }
      showRun(view, run);
      refreshRuns();
      if (FINISHED.has(data.status)) {
        view.ended = true;
        // The whole record and trace, as stored, now that nothing changes.
        loadRun(view);
        loadTrace(view);
      }
    } else if (type === 'approval') {
      refreshApprovals();
    }
  }

  function addRecord(view, record) {
    if (!record || typeof record !== 'object') return;
    if (record.type === 'span_start' && record.span_id) {
      if (!view.spans.has(record.span_id)) view.open.set(record.span_id, record);
    } else if (record.type === 'span' && record.span_id) {
      view.spans.set(record.span_id, record);
      view.open.delete(record.span_id);
    } else if (record.type === 'event') {
      view.events.set(`${record.span_id}|${record.name}|${record.time_ns}`, record);
    }
  }

  function scheduleDraw(view) {
    if (view.drawPending) return;
    view.drawPending = true;
    requestAnimationFrame(() => {
      view.drawPending = false;
      if (view.closed) return;
      drawTimeline(view);
      drawTrace(view);
    });
  }

  // --- the Gantt chart --------------------------------------------------------------------

  const attr = (span, key) => (span.attributes || {})[key];

  function kindOf(span) {
    const op = attr(span, 'gen_ai.operation.name') || String(span.name || '').split(' ')[0];
    if (op === 'chat') return 'chat';
    if (op === 'execute_tool') return 'tool';
    if (op === 'invoke_agent') return 'agent';
    return null;
  }

  /// The agent a span belongs to: its own gen_ai.agent.name, else its
  /// nearest ancestor's.
  function agentOf(span, all) {
    for (let s = span, hops = 0; s && hops < 64; s = all.get(s.parent_span_id), hops++) {
      const name = attr(s, 'gen_ai.agent.name');
      if (name) return name;
    }
    return '(no agent)';
  }

  function failed(span) {
    return span.type === 'span' && span.status && span.status !== 'ok' && span.status !== 'unfinished';
  }

  /// Packs bars into lanes so that bars of one lane do not overlap.
  function packLanes(bars) {
    const laneEnds = [];
    for (const bar of bars.sort((a, b) => a.start - b.start)) {
      let lane = laneEnds.findIndex((end) => end <= bar.start);
      if (lane < 0) {
        lane = laneEnds.length;
        laneEnds.push(bar.end);
      } else {
        laneEnds[lane] = bar.end;
      }
      bar.lane = lane;
    }
    return laneEnds.length;
  }

  function niceStep(totalMs, ticks) {
    const raw = totalMs / ticks;
    const mag = 10 ** Math.floor(Math.log10(raw || 1));
    for (const m of [1, 2, 5, 10]) if (raw <= m * mag) return m * mag;
    return 10 * mag;
  }

  function drawTimeline(view) {
    const all = new Map([...view.open, ...view.spans]);
    const nowNs = Date.now() * 1e6;
    let origin = Infinity;
    let last = -Infinity;
    for (const s of all.values()) {
      origin = Math.min(origin, s.start_ns);
      last = Math.max(last, s.type === 'span' ? s.end_ns : s.start_ns);
    }
    for (const e of view.events.values()) {
      origin = Math.min(origin, e.time_ns);
      last = Math.max(last, e.time_ns);
    }
    const bars = [];
    for (const s of all.values()) {
      const kind = kindOf(s);
      if (!kind || typeof s.start_ns !== 'number') continue;
      const open = s.type !== 'span';
      const end = open ? Math.max(last, Math.min(nowNs, s.start_ns + 3.6e12)) : s.end_ns;
      bars.push({span: s, kind, open, agent: agentOf(s, all), start: s.start_ns, end: Math.max(end, s.start_ns)});
    }
    for (const b of bars) last = Math.max(last, b.end);
    const box = $('#timeline');
    if (!bars.length) {
      box.replaceChildren();
      $('#timeline-empty').hidden = false;
      return;
    }
    $('#timeline-empty').hidden = true;
    const totalNs = Math.max(last - origin, 1e6);
    const pct = (ns) => `${(((ns - origin) / totalNs) * 100).toFixed(3)}%`;
    const width = (a, b) => `${(((b - a) / totalNs) * 100).toFixed(3)}%`;

    // Rows in the order their agents first started.
    const rows = new Map();
    for (const b of [...bars].sort((a, b2) => a.start - b2.start)) {
      if (!rows.has(b.agent)) rows.set(b.agent, {agent: [], chat: [], tool: []});
      rows.get(b.agent)[b.kind].push(b);
    }

    const axis = el('div', {className: 'tl-row tl-axis', 'aria-hidden': 'true'},
      el('div', {className: 'tl-label'}), el('div', {className: 'tl-track'}));
    const totalMs = totalNs / 1e6;
    const step = niceStep(totalMs, 6);
    for (let t = 0; t <= totalMs + 1e-9; t += step) {
      const at = (t / totalMs) * 100;
      axis.lastChild.append(el('span', {className: at > 92 ? 'tick tick-end' : 'tick', style: `left: ${at}%`},
        t === 0 ? '0' : fmtDuration(t)));
    }
    const out = [axis];
    for (const [agent, row] of rows) {
      const chatLanes = Math.max(packLanes(row.chat), 1);
      const toolLanes = packLanes(row.tool);
      const track = el('div', {className: 'tl-track', style: `--lanes: ${chatLanes + toolLanes}`});
      for (const b of row.agent) track.append(barNode(b, 'agent', 0, pct, width));
      for (const b of row.chat) track.append(barNode(b, 'chat', b.lane, pct, width));
      for (const b of row.tool) track.append(barNode(b, 'tool', chatLanes + b.lane, pct, width));
      out.push(el('div', {className: 'tl-row', dataset: {agent}},
        el('div', {className: 'tl-label', title: agent}, agent), track));
    }
    box.replaceChildren(...out);
  }

  function barNode(bar, kind, lane, pct, width) {
    const s = bar.span;
    const durationMs = bar.open ? (bar.end - bar.start) / 1e6
      : typeof s.duration_ms === 'number' ? s.duration_ms : (s.end_ns - s.start_ns) / 1e6;
    const status = bar.open ? 'in progress' : s.status || 'ok';
    const classes = ['bar', `bar-${kind}`];
    if (failed(s)) classes.push('failed');
    if (bar.open) classes.push('open');
    if (s.status === 'unfinished') classes.push('unfinished');
    const label = `${s.name}, ${fmtDuration(durationMs)}, ${status}`;
    const node = el('div', {
      className: classes.join(' '),
      tabIndex: 0,
      role: 'img',
      'aria-label': label,
      dataset: {
        kind: kind === 'tool' ? 'execute_tool' : kind === 'agent' ? 'invoke_agent' : 'chat',
        spanId: s.span_id,
        status,
      },
      style: `left: ${pct(bar.start)}; width: ${width(bar.start, bar.end)}; --lane: ${lane}`,
    });
    node.tooltip = () => tooltipContent(s, durationMs, status);
    return node;
  }

  function tooltipContent(s, durationMs, status) {
    const lines = [
      el('strong', {}, s.name),
      el('div', {}, `duration: ${fmtDuration(durationMs)}`),
      el('div', {className: failed(s) ? 'error-text' : ''}, `status: ${status}`),
    ];
    if (s.status_message) lines.push(el('div', {className: 'error-text'}, excerpt(s.status_message, 200)));
    for (const key of ['gen_ai.agent.name', 'gen_ai.request.model', 'gen_ai.usage.input_tokens',
      'gen_ai.usage.output_tokens', 'gen_ai.tool.call.arguments', 'gen_ai.tool.call.result',
      'troupe.tool.attempts', 'troupe.step']) {
      const v = attr(s, key);
      if (v !== undefined && v !== '') lines.push(el('div', {className: 'muted'}, `${key}: ${excerpt(jsonText(v), 160)}`));
    }
    return lines;
  }

  function showTooltip(event) {
    const bar = event.target.closest && event.target.closest('.bar');
    const tip = $('#tooltip');
    if (!bar || !bar.tooltip) return;
    tip.replaceChildren(...bar.tooltip());
    tip.hidden = false;
    const r = bar.getBoundingClientRect();
    const x = Math.min(r.left + window.scrollX, window.scrollX + document.documentElement.clientWidth - tip.offsetWidth - 8);
    tip.style.left = `${Math.max(x, 4)}px`;
    tip.style.top = `${r.bottom + window.scrollY + 6}px`;
  }

  function hideTooltip(event) {
    const bar = event.target.closest && event.target.closest('.bar');
    if (bar) $('#tooltip').hidden = true;
  }

  // --- the trace tree -----------------------------------------------------------------------

  function drawTrace(view) {
    const box = $('#trace');
    // Keep what the reader opened or closed across redraws.
    for (const d of box.querySelectorAll('details[data-span-id]')) {
      if (d.open) view.openNodes.add(d.dataset.spanId);
      else view.openNodes.delete(d.dataset.spanId);
    }
    const spans = new Map([...view.open, ...view.spans]);
    if (!spans.size && !view.events.size) {
      box.replaceChildren();
      $('#trace-empty').hidden = false;
      return;
    }
    $('#trace-empty').hidden = true;
    let origin = Infinity;
    for (const s of spans.values()) origin = Math.min(origin, s.start_ns);
    for (const e of view.events.values()) origin = Math.min(origin, e.time_ns);

    const children = new Map();
    const eventsOf = new Map();
    const roots = [];
    for (const s of spans.values()) {
      if (s.parent_span_id && spans.has(s.parent_span_id)) {
        if (!children.has(s.parent_span_id)) children.set(s.parent_span_id, []);
        children.get(s.parent_span_id).push(s);
      } else {
        roots.push(s);
      }
    }
    const loose = [];
    for (const e of view.events.values()) {
      if (spans.has(e.span_id)) {
        if (!eventsOf.has(e.span_id)) eventsOf.set(e.span_id, []);
        eventsOf.get(e.span_id).push(e);
      } else {
        loose.push(e);
      }
    }
    const byStart = (a, b) => a.start_ns - b.start_ns;
    const offset = (ns) => `+${fmtDuration((ns - origin) / 1e6)}`;

    const attrTable = (attributes) => {
      const keys = Object.keys(attributes || {});
      if (!keys.length) return null;
      return el('table', {className: 'attrs'}, el('tbody', {},
        ...keys.sort().map((k) => el('tr', {}, el('th', {scope: 'row'}, k),
          el('td', {}, el('pre', {}, jsonText(attributes[k])))))));
    };
    const eventNode = (e) => el('li', {className: 'trace-event'},
      el('span', {className: 'name'}, e.name), ' ',
      el('span', {className: 'muted'}, offset(e.time_ns)),
      attrTable(e.attributes));

    const spanNode = (s) => {
      const open = s.type !== 'span';
      const kids = (children.get(s.span_id) || []).sort(byStart);
      const evs = (eventsOf.get(s.span_id) || []).sort((a, b) => a.time_ns - b.time_ns);
      const duration = open ? '' : fmtDuration(typeof s.duration_ms === 'number' ? s.duration_ms : (s.end_ns - s.start_ns) / 1e6);
      const status = open ? 'in progress' : s.status || 'ok';
      const node = el('details', {dataset: {spanId: s.span_id}, className: `span kind-${kindOf(s) || 'other'}`},
        el('summary', {},
          el('span', {className: 'name'}, s.name), ' ',
          el('span', {className: `span-status ${failed(s) ? 'error-text' : ''}`}, status), ' ',
          el('span', {className: 'muted'}, offset(s.start_ns)), ' ',
          el('span', {className: 'dur'}, duration)),
        s.status_message ? el('p', {className: 'error-text'}, s.status_message) : null,
        el('p', {className: 'muted ids'}, `span ${s.span_id}${s.parent_span_id ? ` (parent ${s.parent_span_id})` : ''}`),
        attrTable(s.attributes),
        evs.length ? el('ul', {className: 'events'}, ...evs.map(eventNode)) : null,
        ...kids.map(spanNode));
      // At first the structure is open (runs, teams, steps) and the calls,
      // the leaves, are closed; then each node stays as the reader left it.
      const leaf = kindOf(s) === 'chat' || kindOf(s) === 'tool';
      if (!view.seenNodes.has(s.span_id)) {
        view.seenNodes.add(s.span_id);
        if (!leaf) view.openNodes.add(s.span_id);
      }
      node.open = view.openNodes.has(s.span_id);
      return node;
    };
    const nodes = roots.sort(byStart).map(spanNode);
    if (loose.length) {
      nodes.push(el('ul', {className: 'events'},
        ...loose.sort((a, b) => a.time_ns - b.time_ns).map(eventNode)));
    }
    box.replaceChildren(...nodes);
  }

  // --- wiring -----------------------------------------------------------------------------

  function start() {
    $('#login-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const candidate = $('#token').value.trim();
      if (candidate) signIn(candidate);
    });
    $('#sign-out').addEventListener('click', (event) => {
      event.preventDefault();
      signOut();
    });
    $('#error-dismiss').addEventListener('click', () => clearError());
    $('#submit-form').addEventListener('submit', submitRun);
    $('#swarm').addEventListener('change', describeSwarm);
    $('#status-filter').addEventListener('change', () => {
      cursors = [''];
      refreshRuns();
    });
    $('#page-older').addEventListener('click', () => {
      if (!nextCursor) return;
      cursors.push(nextCursor);
      refreshRuns();
    });
    $('#page-newer').addEventListener('click', () => {
      if (cursors.length > 1) cursors.pop();
      refreshRuns();
    });
    const tbody = $('#runs tbody');
    tbody.addEventListener('click', openRowRun);
    tbody.addEventListener('keydown', openRowRun);
    $('#run-close').addEventListener('click', () => {
      history.pushState(null, '', location.pathname + location.search);
      closeRunView();
    });
    $('#run-cancel').addEventListener('click', cancelRun);
    window.addEventListener('hashchange', route);
    const timeline = $('#timeline');
    timeline.addEventListener('mouseover', showTooltip);
    timeline.addEventListener('focusin', showTooltip);
    timeline.addEventListener('mouseout', hideTooltip);
    timeline.addEventListener('focusout', hideTooltip);

    if (token) signIn(token);
    else showLogin();
  }

  start();
})();
