// taskdeploy dashboard: the API key, error messages, live logs, the metrics chart, downloads.
// Fragments are fetched by htmx; this file only adds what htmx does not do.
(() => {
  "use strict";

  const KEY = "taskdeploy.apiKey";
  const $ = (id) => document.getElementById(id);
  const apiKey = () => localStorage.getItem(KEY);
  const authHeaders = (headers = {}) => {
    const key = apiKey();
    return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
  };

  // ------------------------------------------------------------------ messages and the key
  let flashTimer = 0;
  function flash(text) {
    const box = $("flash");
    box.textContent = text;
    box.classList.toggle("shown", Boolean(text));
    clearTimeout(flashTimer);
    if (text) flashTimer = setTimeout(() => flash(""), 10000);
  }

  function errorText(status, body) {
    try {
      const message = JSON.parse(body).error.message;
      if (message) return message;
    } catch (_) { /* not the API's JSON error */ }
    return `The request failed (HTTP ${status}).`;
  }

  // Closed without a key: polling fragments keep answering 401, but the dialog stays closed
  // until the "API key" button is used.
  let keyDismissed = false;
  function askForKey(reason, asked = false) {
    const dialog = $("key-dialog");
    if (dialog.open || (keyDismissed && !asked)) return;
    $("key-reason").textContent = reason
      ? `${reason}. The key is kept in this browser and sent as a bearer token.`
      : "The key is kept in this browser and sent as a bearer token.";
    $("key-input").value = "";
    dialog.showModal();
  }

  function onError(status, body) {
    if (status === 401) askForKey(errorText(status, body));
    else flash(errorText(status, body));
  }

  function wireKeyDialog() {
    const dialog = $("key-dialog");
    $("key-form").addEventListener("submit", () => {
      const key = $("key-input").value.trim();
      if (!key) return;
      localStorage.setItem(KEY, key);
      location.reload(); // every fragment and stream starts again with the key
    });
    $("key-forget").addEventListener("click", () => {
      localStorage.removeItem(KEY);
      location.reload();
    });
    $("key-cancel").addEventListener("click", () => {
      keyDismissed = true;
      dialog.close();
    });
    dialog.addEventListener("cancel", () => { keyDismissed = true; }); // Escape
    $("key-button").addEventListener("click", () => askForKey("", true));
    $("key-button").textContent = apiKey() ? "API key ✓" : "API key";
  }

  // htmx: every fragment request carries the key; an HTML error (a form's 422) is swapped in
  // like a success, a JSON error becomes a message (or the key dialog on 401).
  document.addEventListener("htmx:configRequest", (event) => {
    const key = apiKey();
    if (key) event.detail.headers.Authorization = `Bearer ${key}`;
  });
  document.addEventListener("htmx:beforeSwap", (event) => {
    const xhr = event.detail.xhr;
    if (xhr.status < 400) return;
    const type = xhr.getResponseHeader("Content-Type") || "";
    if (type.startsWith("text/html")) {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
      return;
    }
    event.detail.shouldSwap = false;
    event.detail.isError = false; // handled here: htmx need not log it
    onError(xhr.status, xhr.responseText);
  });
  document.addEventListener("htmx:sendError", () => flash("The service did not answer; retrying."));

  // ------------------------------------------------------------------ downloads
  // A link cannot send a header: with a key, fetch the artifact and hand the browser a blob.
  document.addEventListener("click", async (event) => {
    const link = event.target.closest("a[data-download]");
    if (!link || !apiKey()) return;
    event.preventDefault();
    const response = await fetch(link.href, { headers: authHeaders() });
    if (!response.ok) {
      onError(response.status, await response.text());
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const save = Object.assign(document.createElement("a"), {
      href: url,
      download: link.dataset.download,
    });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  });

  // ------------------------------------------------------------------ the run page
  function followLog(runId, pane, attempt = 0) {
    const url = `/v1/runs/${encodeURIComponent(runId)}/logs?stream=${pane.dataset.stream}&follow=true`;
    pane.textContent = ""; // a (re)started follow sends the stream from its first byte
    fetch(url, { headers: authHeaders({ Accept: "text/plain" }) })
      .then(async (response) => {
        if (!response.ok) {
          onError(response.status, await response.text());
          return;
        }
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          const atEnd = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
          pane.append(value); // a text node: output is never parsed as HTML
          if (atEnd) pane.scrollTop = pane.scrollHeight;
          $("logs-note").textContent = "";
        }
        pane.dataset.done = "true";
        const panes = [...document.querySelectorAll("pre.log")];
        if (panes.every((p) => p.dataset.done === "true" && !p.textContent)) {
          $("logs-note").textContent = "The run wrote nothing to stdout or stderr.";
        }
      })
      .catch(() => {
        if (attempt < 30) setTimeout(() => followLog(runId, pane, attempt + 1), 2000);
      });
  }

  const MiB = 1048576;
  const chart = { plot: null, fetchedAt: 0, final: false, busy: false, again: null };

  function chartOptions(width) {
    return {
      width,
      height: 220,
      legend: { live: false },
      scales: { x: { time: false }, cpu: { range: (u, lo, hi) => [0, Math.max(100, hi)] } },
      axes: [
        { label: "seconds since start" },
        { scale: "cpu", label: "CPU %" },
        { scale: "mem", side: 1, label: "memory MiB", grid: { show: false } },
      ],
      series: [
        { label: "t" },
        { label: "CPU %", scale: "cpu", stroke: "#1d4ed8", width: 2 },
        { label: "memory MiB", scale: "mem", stroke: "#be185d", width: 2 },
      ],
    };
  }

  function drawChart(doc) {
    const box = $("chart");
    const series = doc.series || [];
    const data = [
      series.map((p) => p.t),
      series.map((p) => p.cpu_percent),
      series.map((p) => p.memory_bytes / MiB),
    ];
    if (!chart.plot) {
      chart.plot = new uPlot(chartOptions(Math.max(280, box.clientWidth)), data, box);
      new ResizeObserver(() => chart.plot.setSize({ width: Math.max(280, box.clientWidth), height: 220 }))
        .observe(box);
    } else {
      chart.plot.setData(data);
    }
    box.dataset.points = String(series.length);
    const s = doc.summary;
    const text = s
      ? `${series.length} samples · peak memory ${(s.peak_memory_bytes / MiB).toFixed(1)} MiB · ` +
        `CPU time ${s.cpu_seconds.toFixed(2)} s · CPU max ${s.cpu_percent_max.toFixed(0)} %` +
        (doc.live ? " (live)" : "")
      : "No samples.";
    $("chart-note").textContent = text;
    box.setAttribute("aria-label", `CPU and memory over time: ${text}`);
  }

  async function refreshChart(runId, state, terminal) {
    if (chart.final || state === "queued" || state === "preparing") return;
    if (chart.busy) {
      if (terminal) chart.again = () => refreshChart(runId, state, terminal); // the last word
      return;
    }
    if (!terminal && Date.now() - chart.fetchedAt < 2000) return;
    chart.busy = true;
    chart.fetchedAt = Date.now();
    try {
      const response = await fetch(`/v1/runs/${encodeURIComponent(runId)}/metrics`, {
        headers: authHeaders(),
      });
      if (response.ok) {
        drawChart(await response.json());
        chart.final = terminal;
      } else if (response.status === 404 && terminal) {
        chart.final = true;
        $("chart-note").textContent = "This run ended before it was measured.";
      } else if (response.status !== 409) {
        onError(response.status, await response.text());
      }
    } finally {
      chart.busy = false;
      const again = chart.again;
      chart.again = null;
      if (again) again();
    }
  }

  function wireRunPage() {
    const root = $("run");
    if (!root) return;
    const runId = root.dataset.runId;
    for (const pane of document.querySelectorAll("pre.log")) followLog(runId, pane);
    document.addEventListener("htmx:afterSettle", (event) => {
      if (event.detail.elt !== root) return;
      const head = root.querySelector("[data-state]");
      if (!head) return;
      refreshChart(runId, head.dataset.state, head.dataset.terminal === "true");
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    wireKeyDialog();
    wireRunPage();
  });
})();
