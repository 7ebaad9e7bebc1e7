// sdpo-service dashboard. Plain script, no build step; charts by the vendored Chart.js.
// Every data call goes to the REST API with the key from sessionStorage as a Bearer token;
// the live stream is read with fetch streaming (EventSource cannot send headers).
"use strict";

(() => {
  const KEY_STORAGE = "sdpo.apiKey";
  const TERMINAL = new Set(["solved", "exhausted", "cancelled", "failed"]);
  const COLORS = {
    pass: "#16a34a",
    fail: "rgba(220, 38, 38, 0.55)",
    loss: "#2563eb",
    kl: "#9333ea",
    grad: "#ea580c",
    best: "#94a3b8",
  };

  const $ = (id) => document.getElementById(id);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const getKey = () => sessionStorage.getItem(KEY_STORAGE) || "";

  class ApiError extends Error {
    constructor(status, code, message, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
    }
  }

  /** fetch() against the REST API with the session's key; throws ApiError unless 2xx. */
  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = getKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers, cache: "no-store" });
    if (response.ok) return response;
    let err = { code: "http_" + response.status, message: response.statusText, field: null };
    try {
      err = (await response.json()).error || err;
    } catch (_) {
      /* not the JSON error envelope */
    }
    if (response.status === 401) showLogin(getKey() ? "That key was not accepted." : "");
    throw new ApiError(response.status, err.code, err.message, err.field);
  }

  const apiJson = async (path, options) => (await api(path, options)).json();

  // ---------------------------------------------------------------- formatting

  function fmtDuration(seconds) {
    if (seconds == null || !isFinite(seconds)) return "–";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const s = Math.round(seconds);
    if (s < 3600) return `${Math.floor(s / 60)} m ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} m`;
  }

  const fmtScore = (x) => (x == null ? "–" : Number(x).toFixed(2));
  const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
  const seconds = (iso) => (iso ? new Date(iso).getTime() / 1000 : null);

  /** Run time of a problem: started → finished, or → now while it runs. */
  function runSeconds(p) {
    const start = seconds(p.started_at);
    if (start == null) return null;
    const end = seconds(p.finished_at) ?? (p.status === "running" ? Date.now() / 1000 : null);
    return end == null ? null : end - start;
  }

  function badge(el, status) {
    el.textContent = status;
    el.className = `badge ${status}`;
  }

  function setText(id, text) {
    const el = $(id);
    if (el.textContent !== text) el.textContent = text;
  }

  // ---------------------------------------------------------------- auth

  function showLogin(message) {
    $("main").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = !message;
    $("login-error").textContent = message || "";
    $("login-key").focus();
  }

  function showKeyStatus() {
    const key = getKey();
    $("key-status").textContent = key ? `key …${key.slice(-4)}` : "no key";
    $("signout").hidden = !key;
  }

  /** Check the key with one cheap call; show the page or the key form. */
  async function boot(start) {
    showKeyStatus();
    try {
      await api("/v1/problems?limit=1");
    } catch (e) {
      if (e.status !== 401) showFatal(e);
      return;
    }
    $("login").hidden = true;
    $("main").hidden = false;
    start();
  }

  function showFatal(e) {
    $("main").hidden = false;
    $("main").prepend(Object.assign(document.createElement("p"), {
      className: "card error-card",
      textContent: `The API did not answer: ${e.message}`,
    }));
  }

  // ---------------------------------------------------------------- SSE over fetch

  /**
   * Follow a problem's event stream, calling onEvent({id, event, data}) for each event.
   * Reconnects with Last-Event-ID after a dropped connection (nothing lost or repeated);
   * resolves after the terminal event. Throws ApiError on 401/404.
   */
  async function follow(pid, onEvent) {
    let lastId = null;
    for (;;) {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      let finished = false;
      let received = 0;
      try {
        const response = await api(`/v1/problems/${pid}/events`, { headers });
        onConnection(true);
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        let event = { data: [] };
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let nl;
          while ((nl = buffer.indexOf("\n")) >= 0) {
            const line = buffer.slice(0, nl).replace(/\r$/, "");
            buffer = buffer.slice(nl + 1);
            if (line === "") {
              if (event.event && event.data.length) {
                if (event.id) lastId = event.id;
                received += 1;
                onEvent({ id: event.id, event: event.event, data: JSON.parse(event.data.join("\n")) });
                if (TERMINAL.has(event.event)) finished = true;
              }
              event = { data: [] };
            } else if (!line.startsWith(":")) {
              const colon = line.indexOf(":");
              const field = colon < 0 ? line : line.slice(0, colon);
              const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
              if (field === "data") event.data.push(val);
              else if (field === "id" || field === "event") event[field] = val;
            }
          }
        }
      } catch (e) {
        if (e instanceof ApiError && (e.status === 401 || e.status === 404)) throw e;
      }
      onConnection(false);
      if (finished) return;
      // Ended without a terminal event: a dropped link (resume), or nothing more to read.
      try {
        const p = await apiJson(`/v1/problems/${pid}`);
        if (TERMINAL.has(p.status) && received === 0) return;
      } catch (e) {
        if (e instanceof ApiError && (e.status === 401 || e.status === 404)) throw e;
      }
      await sleep(2000);
    }
  }

  let onConnection = () => {};

  // ---------------------------------------------------------------- list page

  function listPage() {
    let pages = 1;
    const body = $("problems-body");

    function row(p) {
      const tr = document.createElement("tr");
      tr.dataset.id = p.id;
      const cells = [
        ["a", p.id],
        ["badge", p.status],
        ["", p.model],
        ["num", String(p.attempts)],
        ["num", String(p.steps)],
        ["num", fmtScore(p.best_score)],
        ["", fmtTime(p.created_at)],
        ["num", p.status === "queued" ? "queued" : fmtDuration(runSeconds(p))],
      ];
      for (const [kind, text] of cells) {
        const td = document.createElement("td");
        if (kind === "a") {
          const a = Object.assign(document.createElement("a"), { href: `/ui/problems/${p.id}` });
          a.append(Object.assign(document.createElement("code"), { textContent: text }));
          td.append(a);
        } else if (kind === "badge") {
          const span = document.createElement("span");
          badge(span, text);
          td.append(span);
        } else {
          td.textContent = text;
          if (kind) td.className = kind;
        }
        tr.append(td);
      }
      return tr;
    }

    async function refresh() {
      const rows = [];
      let cursor = null;
      let more = false;
      for (let i = 0; i < pages; i++) {
        const q = new URLSearchParams({ limit: "25" });
        if (cursor) q.set("cursor", cursor);
        const page = await apiJson(`/v1/problems?${q}`);
        rows.push(...page.data);
        cursor = page.next_cursor;
        more = cursor !== null;
        if (!more) break;
      }
      body.replaceChildren(...rows.map(row));
      $("problems-empty").hidden = rows.length > 0;
      $("more").hidden = !more;
      $("list-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    }

    async function loop() {
      for (;;) {
        try {
          await refresh();
        } catch (e) {
          if (e.status === 401) return;
        }
        await sleep(3000);
      }
    }

    $("more").addEventListener("click", () => {
      pages += 1;
      refresh();
    });

    $("submit-file").addEventListener("change", async (ev) => {
      const file = ev.target.files[0];
      if (file) $("submit-json").value = await file.text();
    });

    $("submit-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const error = $("submit-error");
      error.hidden = true;
      const text = $("submit-json").value;
      try {
        JSON.parse(text);
      } catch (e) {
        error.textContent = `Not valid JSON: ${e.message}`;
        error.hidden = false;
        return;
      }
      try {
        const p = await apiJson("/v1/problems", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: text,
        });
        location.href = `/ui/problems/${p.id}`;
      } catch (e) {
        error.textContent = e.field ? `${e.field}: ${e.message}` : e.message;
        error.hidden = false;
      }
    });

    loop();
  }

  // ---------------------------------------------------------------- problem page

  function lineChart(canvas, label, color) {
    return new Chart(canvas, {
      type: "line",
      data: {
        datasets: [
          {
            label,
            data: [],
            borderColor: color,
            backgroundColor: color,
            pointRadius: 2.5,
            borderWidth: 2,
            tension: 0, // straight segments: a curve between steps shows values no step had
          },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: false,
        scales: {
          x: {
            type: "linear",
            min: 0,
            title: { display: true, text: "SDPO step" },
            ticks: { precision: 0 },
          },
          y: { title: { display: false } },
        },
        plugins: { legend: { display: false } },
      },
    });
  }

  function attemptsChart(canvas) {
    const point = (color, radius, style) => ({
      data: [],
      backgroundColor: color,
      borderColor: color,
      pointRadius: radius,
      pointHoverRadius: radius + 2,
      pointStyle: style,
      clip: 10,
    });
    return new Chart(canvas, {
      type: "scatter",
      data: {
        datasets: [
          { label: "fail", ...point(COLORS.fail, 3, "circle") },
          { label: "pass", ...point(COLORS.pass, 8, "rectRot") },
          {
            label: "best so far",
            type: "line",
            data: [],
            borderColor: COLORS.best,
            backgroundColor: COLORS.best,
            borderWidth: 1.5,
            borderDash: [4, 3],
            pointRadius: 0,
            stepped: true,
            clip: 10,
          },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: false,
        scales: {
          x: { type: "linear", min: 0, title: { display: true, text: "seconds since start" } },
          y: { min: 0, max: 1, title: { display: true, text: "verifier score" } },
        },
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              label: (ctx) =>
                ctx.datasetIndex === 2
                  ? `best so far ${fmtScore(ctx.raw.y)}`
                  : `attempt ${ctx.raw.index} (step ${ctx.raw.step}): ` +
                `${ctx.raw.passed ? "pass" : "fail"}, score ${fmtScore(ctx.raw.y)}`,
            },
          },
        },
      },
    });
  }

  function problemPage() {
    const pid = document.body.dataset.problemId;
    const charts = {
      attempts: attemptsChart($("chart-attempts")),
      loss: lineChart($("chart-loss"), "loss", COLORS.loss),
      kl: lineChart($("chart-kl"), "mean KL", COLORS.kl),
      grad: lineChart($("chart-grad"), "grad norm", COLORS.grad),
    };
    const state = {
      problem: null,
      t0: null, // unix seconds of the first `running` event: x = 0 of the attempts plot
      attempts: 0,
      steps: 0,
      best: null,
      adapter: 0,
      worker: null, // the worker of the latest `running` event (a resumed run names its new one)
      events: 0,
      lastEventId: null,
      terminal: null,
      connected: false,
    };
    window.sdpoDashboard = { charts, state }; // for tests and the curious

    let dirty = false;
    function scheduleDraw() {
      if (dirty) return;
      dirty = true;
      setTimeout(() => {
        dirty = false;
        for (const c of Object.values(charts)) c.update("none");
        render();
      }, 150);
    }

    const eventTime = (id) => (id ? Number(id.split("-")[0]) / 1000 : Date.now() / 1000);

    function render() {
      const p = state.problem;
      const status = state.terminal || (p && p.status) || "queued";
      badge($("status"), status);
      setText("s-attempts", String(Math.max(state.attempts, p ? p.attempts : 0)));
      setText("s-steps", String(Math.max(state.steps, p ? p.steps : 0)));
      const best = state.best ?? (p ? p.best_score : null);
      setText("s-best", fmtScore(best));
      const adapter = Math.max(state.adapter, p ? p.adapter_version : 0);
      setText("s-adapter", adapter ? `v${adapter}` : "none yet");
      setText("s-model", p ? p.model : "–");
      setText("s-worker", state.worker || (p && p.worker) || "not started");
      const elapsed =
        p && TERMINAL.has(p.status) ? runSeconds(p) : state.t0 ? Date.now() / 1000 - state.t0 : null;
      setText("s-elapsed", fmtDuration(elapsed));
      const active = !TERMINAL.has(status);
      $("cancel").disabled = !active || Boolean(p && p.cancel_requested);
      $("cancel").textContent = p && p.cancel_requested && active ? "Cancelling…" : "Cancel";
      $("download").disabled = adapter < 1;
      setText("live", active ? (state.connected ? "● live" : "○ reconnecting…") : "");
      $("live").className = state.connected ? "live on" : "live";
    }

    function onEvent(ev) {
      state.events += 1;
      state.lastEventId = ev.id;
      const d = ev.data;
      switch (ev.event) {
        case "status":
          if (d.status === "running" && state.t0 === null) state.t0 = eventTime(ev.id);
          if (d.status === "running" && d.worker) state.worker = d.worker;
          if (state.problem && !state.terminal) state.problem.status = d.status;
          break;
        case "attempt": {
          if (state.t0 === null) state.t0 = eventTime(ev.id);
          const v = d.verdict;
          const point = {
            x: eventTime(ev.id) - state.t0,
            y: v.score,
            index: d.index,
            step: d.step,
            passed: v.passed,
          };
          const [fail, pass, best] = charts.attempts.data.datasets;
          (v.passed ? pass : fail).data.push(point);
          state.attempts = Math.max(state.attempts, d.index);
          state.best = Math.max(state.best ?? 0, v.score);
          best.data.push({ x: point.x, y: state.best });
          if (!v.passed && v.feedback) {
            $("feedback").textContent = v.feedback;
            setText("feedback-meta", `attempt ${d.index}, score ${fmtScore(v.score)}`);
          }
          break;
        }
        case "step": {
          const m = d.metrics || {};
          const add = (chart, y) => {
            if (y != null && isFinite(y)) chart.data.datasets[0].data.push({ x: d.step, y });
          };
          add(charts.loss, m.loss);
          add(charts.kl, m.kl);
          add(charts.grad, m.grad_norm);
          state.steps = Math.max(state.steps, d.step);
          state.adapter = Math.max(state.adapter, d.adapter_version);
          break;
        }
        default:
          if (TERMINAL.has(ev.event)) finish(ev.event, d);
      }
      scheduleDraw();
    }

    function finish(kind, d) {
      state.terminal = kind;
      if (kind === "solved") {
        $("solution").textContent = d.solution;
        setText("solution-meta", `attempt ${d.attempt_index} of ${d.attempts}, after ${d.steps} SDPO steps, ${fmtDuration(d.seconds)}`);
        $("solution-card").hidden = false;
      } else {
        const text = {
          exhausted: `Budget exhausted (${d.reason === "max_seconds" ? "time" : "attempts"}) after ${d.attempts} attempts and ${d.steps} steps; best score ${fmtScore(d.best_score)}.`,
          cancelled: `Cancelled after ${d.attempts} attempts and ${d.steps} steps.`,
          failed: `Failed: ${d.error}`,
        }[kind];
        $("outcome").textContent = text;
        $("outcome-card").className = `card outcome ${kind}`;
        $("outcome-card").hidden = false;
      }
      refreshProblem();
    }

    async function refreshProblem() {
      state.problem = await apiJson(`/v1/problems/${pid}`);
      if (state.terminal) state.problem.status = state.terminal;
      render();
      return state.problem;
    }

    onConnection = (on) => {
      state.connected = on;
      render();
    };

    $("cancel").addEventListener("click", async () => {
      $("cancel").disabled = true;
      try {
        await api(`/v1/problems/${pid}/cancel`, { method: "POST" });
        message("Cancel requested: a running problem stops within one SDPO step.");
      } catch (e) {
        message(e.message);
      }
      refreshProblem();
    });

    $("download").addEventListener("click", async () => {
      try {
        const response = await api(`/v1/problems/${pid}/adapter`);
        const disposition = response.headers.get("Content-Disposition") || "";
        const name = (disposition.match(/filename="?([^";]+)"?/) || [])[1] || `${pid}-adapter.tar.gz`;
        const url = URL.createObjectURL(await response.blob());
        const a = Object.assign(document.createElement("a"), { href: url, download: name });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
      } catch (e) {
        message(e.message);
      }
    });

    function message(text) {
      $("action-msg").textContent = text;
      $("action-msg").hidden = false;
    }

    (async () => {
      try {
        const p = await refreshProblem();
        $("prompt").textContent = p.spec.prompt;
        $("s-method").textContent = p.spec.method || "sdpo";
        if (p.suite) {
          $("s-suite").textContent = p.suite;
          $("s-suite").href = `/ui/suites/${p.suite}`;
          $("s-suite-stat").hidden = false;
        }
        $("problem").hidden = false;
      } catch (e) {
        if (e.status === 404) $("not-found").hidden = false;
        else if (e.status !== 401) showFatal(e);
        return;
      }
      const ticker = setInterval(() => {
        if (state.terminal) clearInterval(ticker);
        render();
      }, 1000);
      const poller = setInterval(async () => {
        if (state.terminal) return clearInterval(poller);
        try {
          await refreshProblem();
        } catch (_) {
          /* the stream reconnects by itself */
        }
      }, 5000);
      try {
        await follow(pid, onEvent);
      } catch (e) {
        if (e.status === 404) $("not-found").hidden = false;
      }
      state.connected = false;
      await refreshProblem();
    })();
  }

  // ---------------------------------------------------------------- suite page

  const METHOD_COLORS = { sdpo: "#2563eb", best_of_k: "#94a3b8", multi_turn: "#f59e0b" };
  const FINISHED = new Set([...TERMINAL, "expired"]);

  // discovery@k at every k: a step up at each finished run's solving attempt (over the
  // method's finished runs), from k = 1 to the largest budget
  function discoveryCurve(runs) {
    const done = runs.filter((r) => FINISHED.has(r.status));
    const budget = Math.max(1, ...runs.map((r) => r.budget));
    if (!done.length) return [];
    const found = done.map((r) => r.solved_attempt).filter((a) => a != null).sort((a, b) => a - b);
    const points = [{ x: 1, y: 0 }];
    found.forEach((a, i) => points.push({ x: a, y: (i + 1) / done.length }));
    points.push({ x: budget, y: found.length / done.length });
    return points;
  }

  function suitePage() {
    const sid = document.body.dataset.suiteId;
    const chart = new Chart($("chart-discovery"), {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: false,
        scales: {
          x: { type: "logarithmic", min: 1, title: { display: true, text: "attempts k" } },
          y: { min: 0, max: 1, title: { display: true, text: "discovery@k" } },
        },
      },
    });
    window.sdpoDashboard = { chart, state: {} }; // for tests and the curious

    function cell(text, cls) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      return td;
    }
    const num = (x, digits = 1) => (x == null ? "–" : Number(x).toFixed(digits));

    function render(s) {
      window.sdpoDashboard.state = s;
      badge($("suite-status"), s.status === "done" ? "solved" : "running");
      $("suite-status").textContent = s.status;
      setText("suite-name", s.name || "");
      setText("suite-progress", `${s.done} / ${s.total}`);
      setText("suite-problems", String(s.problems));
      setText("suite-seeds", String(s.seeds));
      setText("suite-model", s.model);
      $("suite-cancel").disabled = s.status === "done" || s.cancel_requested;
      chart.data.datasets = Object.keys(s.summary).map((method) => ({
        label: method,
        borderColor: METHOD_COLORS[method] || "#64748b",
        backgroundColor: METHOD_COLORS[method] || "#64748b",
        stepped: "before",  // Chart.js: level until the next point, then the step
        pointRadius: 0,
        borderWidth: 2,
        data: discoveryCurve(s.runs.filter((r) => r.method === method)),
      }));
      chart.update("none");
      const body = $("suite-summary-body");
      body.replaceChildren(
        ...Object.entries(s.summary).map(([method, m]) => {
          const tr = document.createElement("tr");
          tr.append(
            cell(method),
            cell(`${m.solved}/${m.runs}`, "num"),
            cell(`${m.finished}/${m.runs}`, "num"),
            cell(num(m.mean_attempts), "num"),
            cell(num(m.ratio_to_sdpo, 2), "num"),
          );
          return tr;
        }),
      );
      const head = document.createElement("tr");
      head.append(cell("Problem"), ...s.methods.map((m) => cell(`${m}: mean (solved)`, "num")));
      $("suite-table-head").replaceChildren(head);
      $("suite-table-body").replaceChildren(
        ...s.table.map((row) => {
          const tr = document.createElement("tr");
          tr.append(
            cell(String(row.problem)),
            ...s.methods.map((m) =>
              cell(`${num(row.mean_attempts[m])} (${row.solved[m] ?? 0})`, "num"),
            ),
          );
          return tr;
        }),
      );
    }

    async function refresh() {
      const s = await apiJson(`/v1/suites/${sid}`);
      render(s);
      return s;
    }

    $("suite-cancel").addEventListener("click", async () => {
      $("suite-cancel").disabled = true;
      render(await apiJson(`/v1/suites/${sid}/cancel`, { method: "POST" }));
    });

    (async () => {
      try {
        await refresh();
        $("suite").hidden = false;
      } catch (e) {
        if (e.status === 404) $("not-found").hidden = false;
        else if (e.status !== 401) showFatal(e);
        return;
      }
      const poller = setInterval(async () => {
        try {
          if ((await refresh()).status === "done") clearInterval(poller);
        } catch (_) {
          /* the next poll tries again */
        }
      }, 2000);
    })();
  }

  // ---------------------------------------------------------------- start

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY_STORAGE, $("login-key").value.trim());
      location.reload();
    });
    $("signout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      location.reload();
    });
    if (window.Chart) {
      Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
      Chart.defaults.color = "#64748b";
      Chart.defaults.borderColor = "#e2e8f0";
    }
    const pages = { problem: problemPage, suite: suitePage, list: listPage };
    boot(pages[document.body.dataset.page] || listPage);
  });
})();
