"use strict";
// The page's behaviour: upload with progress, open a cap, play media in a seekable element.

const $ = (id) => document.getElementById(id);

function fileUrl(cap, name) {
  const base = "/uri/" + encodeURIComponent(cap).replace(/%3A/gi, ":");
  return name ? base + "/" + encodeURIComponent(name) : base;
}

function kindOf(contentType) {
  if (!contentType) return null;
  if (contentType.startsWith("video/")) return "video";
  if (contentType.startsWith("audio/")) return "audio";
  if (contentType.startsWith("image/")) return "img";
  return null;
}

async function show(cap, name) {
  const status = $("open-status");
  status.textContent = "Looking for the file…";
  let info;
  try {
    const response = await fetch(fileUrl(cap, name) + "?t=json", { cache: "no-store" });
    const body = await response.text();
    if (!response.ok) {
      status.textContent = response.status === 404 ? "No shares of this file were found." : body;
      return;
    }
    info = JSON.parse(body);
  } catch (error) {
    status.textContent = "Could not reach the gateway: " + error;
    return;
  }
  status.textContent = "";
  const url = fileUrl(cap, name);
  const player = $("player");
  player.replaceChildren();
  const kind = kindOf(info.content_type);
  if (kind) {
    const element = document.createElement(kind);
    element.src = url;
    if (kind !== "img") {
      element.controls = true;
      element.preload = "metadata";
    }
    element.id = "media";
    player.append(element);
  }
  $("link").href = url + "?save=true";
  $("details").textContent = `${info.size.toLocaleString()} bytes · ${info.k} of ${info.n} shares needed, ${info.shares_found} found`;
  $("viewer").hidden = false;
}

$("open").addEventListener("submit", (event) => {
  event.preventDefault();
  const cap = $("cap").value.trim();
  const name = $("name").value.trim();
  show(cap, name);
});

$("upload").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const request = new XMLHttpRequest();
  const progress = $("progress");
  const status = $("upload-status");
  progress.hidden = false;
  progress.value = 0;
  status.textContent = "Uploading…";
  request.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) progress.value = (100 * e.loaded) / e.total;
  });
  request.addEventListener("load", () => {
    progress.hidden = true;
    if (request.status !== 201) {
      status.textContent = "Upload failed: " + request.responseText;
      return;
    }
    const reply = JSON.parse(request.responseText);
    status.textContent = "Stored. The cap below is the only way to read it again: keep it.";
    $("cap").value = reply.cap;
    $("name").value = file.name;
    show(reply.cap, file.name);
  });
  request.addEventListener("error", () => {
    progress.hidden = true;
    status.textContent = "Upload failed: the connection broke.";
  });
  request.open("POST", "/uri");
  request.setRequestHeader("Accept", "application/json");
  request.send(form);
});

// A cap in the fragment (never sent to the server) opens directly: /#cap=…&name=…
(() => {
  const params = new URLSearchParams(location.hash.slice(1));
  const cap = params.get("cap");
  if (cap) {
    $("cap").value = cap;
    $("name").value = params.get("name") || "";
    show(cap, params.get("name") || "");
  }
})();
