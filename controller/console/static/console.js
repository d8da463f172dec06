// The console's little script: live updates over Server-Sent Events, confirmations.
"use strict";

function liveFleet(table, words) {
  const source = new EventSource("/live?topics=fleet");
  source.addEventListener("devices", (event) => {
    for (const d of JSON.parse(event.data)) update(d);
  });
  const update = (d) => {
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
  };
  return source;
}

function liveReload(topic, every) {
  // Pages whose content is a whole server-rendered view (a session, a campaign): re-fetch the
  // region marked data-live-region when the server says it changed (and every `every` s for
  // figures that change all the time, such as call quality).
  const source = new EventSource("/live?topics=" + encodeURIComponent(topic));
  let pending = false;
  const refresh = () => {
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
      const preview = document.getElementById("preview");
      if (preview) preview.src = preview.src.split("?")[0] + "?t=" + Date.now();
    }, 300);
  };
  source.addEventListener("changed", refresh);
  if (every) setInterval(refresh, every * 1000);
  return source;
}

function iceGathered(pc) {
  // The bridge takes no trickled candidates (WHIP without PATCH): send them all in the offer.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(resolve, 5000);
  });
}

function preferH264(transceiver) {
  // The bridge sends one H.264 stream to every point: offer H.264 only (as the boxes do).
  const codecs = RTCRtpReceiver.getCapabilities("video").codecs.filter(
    (c) => c.mimeType === "video/H264" || c.mimeType === "video/rtx");
  if (codecs.length) transceiver.setCodecPreferences(codecs);
}

async function connect(path, pc, csrf) {
  await pc.setLocalDescription(await pc.createOffer());
  await iceGathered(pc);
  const reply = await fetch(path, {
    method: "POST", body: pc.localDescription.sdp,
    headers: { "Content-Type": "application/sdp", "X-CSRF-Token": csrf },
  });
  if (reply.status !== 201) throw new Error(await reply.text());
  const resource = reply.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await reply.text() });
  return resource;
}

function show(pc, video, audio, state) {
  pc.addEventListener("track", (event) => {
    const target = event.track.kind === "video" ? video : audio;
    target.srcObject = new MediaStream([event.track]);
    if (event.track.kind === "video") {
      video.hidden = false;
      const count = () => {
        state.frames += 1;
        if (state.firstFrameAt === null) state.firstFrameAt = performance.now();
        video.requestVideoFrameCallback(count);
      };
      video.requestVideoFrameCallback(count);
    }
  });
}

async function watchSession(section) {
  // WHEP: the composed picture and the full mix, receive-only; no tile, no voice.
  const button = section.querySelector("#watch-button");
  const status = section.querySelector("#join-status");
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const state = { startedAt: performance.now(), firstFrameAt: null, frames: 0, pc: null };
  window.tiepdanJoin = state;
  button.disabled = true;
  try {
    const pc = new RTCPeerConnection({ iceServers: [] });
    state.pc = pc;
    preferH264(pc.addTransceiver("video", { direction: "recvonly" }));
    pc.addTransceiver("audio", { direction: "recvonly" });
    show(pc, section.querySelector("#composed"), section.querySelector("#mix"), state);
    state.resource = await connect("/whep/" + encodeURIComponent(button.dataset.session), pc,
                                   csrf);
    status.textContent = section.dataset.watching;
  } catch (error) {
    status.textContent = section.dataset.failed + " " + String(error.message || error);
    button.disabled = false;
  }
}

async function joinSession(section) {
  // WHIP (RFC 9725) with one sendrecv connection: camera and microphone go to the bridge, the
  // composed picture and everyone's voice but ours come back on the same connection.
  const button = section.querySelector("#join-button");
  const leave = section.querySelector("#leave-button");
  const status = section.querySelector("#join-status");
  const video = section.querySelector("#composed");
  const audio = section.querySelector("#mix");
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const state = { startedAt: performance.now(), firstFrameAt: null, frames: 0, pc: null,
                  resource: null };
  window.tiepdanJoin = state;
  button.disabled = true;
  status.textContent = section.dataset.joining;
  try {
    const stream = await navigator.mediaDevices.getUserMedia(
      { audio: true, video: { width: 640, height: 360 } });
    const pc = new RTCPeerConnection({ iceServers: [] });
    state.pc = pc;
    for (const track of stream.getTracks()) {
      const transceiver = pc.addTransceiver(track, { direction: "sendrecv", streams: [stream] });
      if (track.kind === "video") preferH264(transceiver);
    }
    show(pc, video, audio, state);
    state.resource = await connect("/whip/" + encodeURIComponent(button.dataset.session), pc,
                                   csrf);
    status.textContent = section.dataset.joined;
    leave.hidden = false;
    leave.addEventListener("click", async () => {
      await fetch(state.resource, { method: "DELETE", headers: { "X-CSRF-Token": csrf } });
      pc.close();
      for (const track of stream.getTracks()) track.stop();
      video.hidden = true;
      leave.hidden = true;
      button.disabled = false;
      status.textContent = section.dataset.left;
    }, { once: true });
  } catch (error) {
    status.textContent = section.dataset.failed + " " + String(error.message || error);
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const join = document.getElementById("join");
  if (join) {
    const joinButton = join.querySelector("#join-button");
    if (joinButton) joinButton.addEventListener("click", () => joinSession(join));
    const watchButton = join.querySelector("#watch-button");
    if (watchButton) watchButton.addEventListener("click", () => watchSession(join));
  }
  const fleet = document.querySelector('table[data-live="fleet"]');
  if (fleet) liveFleet(fleet, document.getElementById("state-words").content.firstElementChild);
  const region = document.querySelector("[data-live-topic]");
  if (region) liveReload(region.dataset.liveTopic, Number(region.dataset.liveEvery || 0));
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
});
