// infaas console: confirmation for actions, and the live page's self-refreshing tables (served and rejected).
"use strict";

function confirmActions() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
        return;
      }
      const confirmed = form.querySelector("input[name=confirmed]");
      if (confirmed) confirmed.value = "yes";
    });
  });
}

function cell(text, numeric) {
  const td = document.createElement("td");
  td.textContent = text;
  if (numeric) td.className = "num";
  return td;
}

function renderLive(table, data) {
  const body = table.tBodies[0];
  const previous = new Map();
  for (const tr of body.rows) previous.set(tr.dataset.variant, tr.dataset.total);
  const rows = data.rows.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.variant = r.variant;
    tr.dataset.total = String(r.total_requests);
    if (previous.has(r.variant) && previous.get(r.variant) !== tr.dataset.total) tr.className = "flash-row";
    tr.append(
      cell(r.variant, false),
      cell(r.rate_per_s.toFixed(2), true),
      cell(r.p50_ms.toFixed(2), true),
      cell(r.p99_ms.toFixed(2), true),
      cell((100 * r.slo_miss_rate).toFixed(1) + "%", true),
      cell((100 * r.infeasible_rate).toFixed(1) + "%", true),
      cell((r.estimate_error_ms >= 0 ? "+" : "") + r.estimate_error_ms.toFixed(2), true),
      cell(String(r.total_requests), true),
    );
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty-row";
    const td = cell("No queries yet.", false);
    td.colSpan = 8;
    td.className = "empty";
    tr.append(td);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  const total = document.getElementById("live-total");
  total.textContent = String(data.total);
  total.dataset.total = String(data.total);
  renderRejected(document.getElementById("rejected"), data.rejected);
  const status = document.getElementById("live-status");
  status.textContent = `last ${Math.round(data.window_s)} s · updated ${new Date(data.at * 1000).toLocaleTimeString()}`;
}

function renderRejected(table, rejected) {
  if (!table) return;
  const rows = rejected.map((r) => {
    const tr = document.createElement("tr");
    tr.append(
      cell(r.target, false),
      cell(String(r.rejected), true),
      cell(r.rate_per_s.toFixed(2), true),
      cell(String(r.unmet_latency), true),
      cell(String(r.unmet_max_cost), true),
      cell(String(r.total_rejected), true),
    );
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty-row";
    const td = cell("No query rejected.", false);
    td.colSpan = 6;
    td.className = "empty";
    tr.append(td);
    rows.push(tr);
  }
  table.tBodies[0].replaceChildren(...rows);
}

function pollLive(table) {
  const tick = async () => {
    try {
      const response = await fetch(table.dataset.source, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) {
        window.location.assign("/console/login?next=/console/live");
        return;
      }
      if (response.ok) renderLive(table, await response.json());
    } catch {
      // The server may be restarting: keep the last table and try again on the next tick.
    }
    window.setTimeout(tick, 2000);
  };
  window.setTimeout(tick, 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  confirmActions();
  const live = document.getElementById("live");
  if (live) pollLive(live);
});
