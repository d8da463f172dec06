// The console's little script: live updates over Server-Sent Events, confirmations.
"use strict";

function liveFleet(table, words) {
  const source = new EventSource("/live?topics=fleet");
  source.addEventListener("device", (event) => {
    const d = JSON.parse(event.data);
    const row = document.getElementById("dev-" + d.id);
    if (!row) return;
    const state = row.querySelector('[data-field="state"] span');
    if (state) {
      state.className = "state " + (d.online ? "on" : "off");
      state.textContent = d.online ? words.dataset.on : words.dataset.off;
    }
    const set = (field, text) => {
      const cell = row.querySelector('[data-field="' + field + '"]');
      if (cell) cell.textContent = text;
    };
    set("cpu", d.cpu == null ? "—" : Math.round(d.cpu) + "%");
    set("temp", d.temp == null ? "—" : Math.round(d.temp) + " °C");
    set("firmware", d.firmware || "");
    set("last_seen", d.last_seen_text || "");
    row.dataset.updated = String(Date.now());
  });
  return source;
}

function liveReload(topic) {
  // Pages whose content is a whole server-rendered view (a session, a campaign): re-fetch the
  // region marked data-live-region when the server says it changed.
  const source = new EventSource("/live?topics=" + encodeURIComponent(topic));
  let pending = false;
  source.addEventListener("changed", () => {
    if (pending) return;
    pending = true;
    setTimeout(async () => {
      pending = false;
      const reply = await fetch(location.href, { headers: { "Accept": "text/html" } });
      if (!reply.ok) return;
      const doc = new DOMParser().parseFromString(await reply.text(), "text/html");
      for (const region of document.querySelectorAll("[data-live-region]")) {
        const fresh = doc.getElementById(region.id);
        if (fresh) region.replaceWith(fresh);
      }
      const status = document.getElementById("live-status");
      if (status) status.textContent = status.dataset.updated || "";
    }, 300);
  });
  return source;
}

document.addEventListener("DOMContentLoaded", () => {
  const fleet = document.querySelector('table[data-live="fleet"]');
  if (fleet) liveFleet(fleet, document.getElementById("state-words").content.firstElementChild);
  const region = document.querySelector("[data-live-topic]");
  if (region) liveReload(region.dataset.liveTopic);
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
});
