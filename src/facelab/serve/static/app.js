// facelab web page: calls the JSON API under /v1 with the key typed above (kept in memory only).
"use strict";

const $ = (id) => document.getElementById(id);
let apiKey = "";

function setStatus(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

async function api(method, path, body) {
  const opts = { method, headers: { "X-API-Key": apiKey } };
  if (body instanceof FormData) opts.body = body;
  const r = await fetch(path, opts);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  const type = r.headers.get("content-type") || "";
  return type.includes("application/json") ? r.json() : r.blob();
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

async function run(what, fn) {
  setStatus(what + "...");
  try {
    await fn();
    setStatus(what + ": done");
  } catch (e) {
    setStatus(what + ": " + e.message, true);
  }
}

// -- connect / model and database in use ------------------------------------------------------
$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  apiKey = $("key").value.trim();
  run("connect", async () => {
    const info = await loadInfo();
    if (info.database) await loadIdentities();
  });
});

async function loadInfo() {
  const info = await api("GET", "/v1/info");
  const parts = [];
  if (info.attributes) parts.push(`model ${info.attributes.run} (${info.attributes.backbone}, ${info.attributes.backend})`);
  else parts.push("no attribute model");
  if (info.database) parts.push(`database ${info.database.name}: ${info.database.identities} identities, ` +
    `${info.database.embedder}, threshold ${info.database.threshold.toFixed(3)}`);
  else parts.push("no face database");
  parts.push(`detector ${info.detector || "none (photos are face crops)"}`);
  parts.push(`key ${info.key.name} [${info.key.scopes.join(", ")}]`);
  $("info").textContent = parts.join(" · ");
  $("info").className = "";
  return info;
}

// -- analyze ----------------------------------------------------------------------------------
function faceLabel(f) {
  const bits = [];
  if (f.attributes) {
    for (const t of ["mask", "gender", "age"]) {
      const label = f.attributes[t];
      bits.push(`${t} ${label} ${(100 * f.probabilities[t][label]).toFixed(0)}%`);
    }
    bits.push(`class ${f.class18}`);
  }
  if (f.identity) bits.push(f.identity.name ? `= ${f.identity.name} (${f.identity.distance.toFixed(3)})` : "unknown");
  return bits.join(", ");
}

function draw(img, faces) {
  const c = $("canvas");
  const scale = Math.min(1, 640 / img.naturalWidth);
  c.width = Math.round(img.naturalWidth * scale);
  c.height = Math.round(img.naturalHeight * scale);
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0, c.width, c.height);
  g.lineWidth = 3;
  g.font = "14px system-ui, sans-serif";
  faces.forEach((f, i) => {
    const [x1, y1, x2, y2] = f.box.map((v) => v * scale);
    g.strokeStyle = f.identity && f.identity.name ? "#1a73e8" : "#34a853";
    g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${i + 1}` + (f.attributes ? ` ${f.attributes.mask}/${f.attributes.gender}/${f.attributes.age}` : "") +
      (f.identity && f.identity.name ? ` ${f.identity.name}` : "");
    const w = g.measureText(text).width + 8;
    const ty = y1 > 20 ? y1 - 20 : y1;
    g.fillStyle = g.strokeStyle;
    g.fillRect(x1, ty, w, 20);
    g.fillStyle = "#fff";
    g.fillText(text, x1 + 4, ty + 15);
    (f.landmarks || []).forEach(([x, y]) => { g.fillStyle = "#fbbc04"; g.fillRect(x * scale - 2, y * scale - 2, 4, 4); });
  });
}

$("analyze-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const file = $("analyze-file").files[0];
  if (!file) return setStatus("choose a photo first", true);
  run("analyze", async () => {
    const fd = new FormData();
    fd.append("image", file);
    fd.append("identify", $("identify").checked ? "true" : "false");
    const out = await api("POST", "/v1/analyze", fd);
    const img = new Image();
    const url = URL.createObjectURL(file);
    await new Promise((ok, bad) => { img.onload = ok; img.onerror = () => bad(new Error("the browser cannot show this image")); img.src = url; });
    draw(img, out.faces);
    URL.revokeObjectURL(url);
    const list = $("faces");
    list.replaceChildren();
    if (!out.faces.length) list.appendChild(el("li", "no face found"));
    out.faces.forEach((f) => list.appendChild(el("li", faceLabel(f))));
  });
});

// -- verify -----------------------------------------------------------------------------------
$("verify-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const a = $("verify-a").files[0], b = $("verify-b").files[0];
  if (!a || !b) return setStatus("choose two photos", true);
  run("verify", async () => {
    const fd = new FormData();
    fd.append("image_a", a);
    fd.append("image_b", b);
    const out = await api("POST", "/v1/verify", fd);
    const p = $("verify-result");
    p.textContent = `${out.same ? "same person" : "different people"} (distance ${out.distance.toFixed(3)}, threshold ${out.threshold.toFixed(3)})`;
    p.className = out.same ? "ok" : "bad";
  });
});

// -- search -----------------------------------------------------------------------------------
$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const file = $("search-file").files[0];
  if (!file) return setStatus("choose a photo first", true);
  run("search", async () => {
    const fd = new FormData();
    fd.append("image", file);
    fd.append("k", $("search-k").value || "5");
    const out = await api("POST", "/v1/search", fd);
    const body = $("search-result").querySelector("tbody");
    body.replaceChildren();
    out.results[0].matches.forEach((m, i) => {
      const tr = el("tr");
      [String(i + 1), m.identity || "(unlabelled)", m.distance.toFixed(4), m.match ? "yes" : "no"]
        .forEach((t) => tr.appendChild(el("td", t)));
      body.appendChild(tr);
    });
  });
});

// -- identities: list with thumbnails, enroll, delete ------------------------------------------------
async function loadIdentities() {
  const out = await api("GET", "/v1/identities?limit=200");
  const list = $("identities");
  list.replaceChildren();
  for (const ident of out.identities) {
    const li = el("li");
    li.dataset.name = ident.name;
    const img = el("img");
    img.alt = ident.name;
    li.appendChild(img);
    li.appendChild(el("div", ident.name, "name"));
    li.appendChild(el("div", `${ident.faces} face${ident.faces === 1 ? "" : "s"}`, "muted"));
    const del = el("button", "Delete");
    del.type = "button";
    del.addEventListener("click", () => {
      if (!confirm(`Erase ${ident.name}: faces, embeddings, crops and images?`)) return;
      run("delete " + ident.name, async () => {
        await api("DELETE", "/v1/identities/" + encodeURIComponent(ident.name));
        await loadIdentities();
        await loadInfo();
      });
    });
    li.appendChild(del);
    list.appendChild(li);
    if (ident.thumbnail_face_id !== null) {
      api("GET", `/v1/identities/${encodeURIComponent(ident.name)}/faces/${ident.thumbnail_face_id}/crop`)
        .then((blob) => { img.src = URL.createObjectURL(blob); })
        .catch(() => { img.alt = "(no thumbnail)"; });
    }
  }
}

$("refresh").addEventListener("click", () => run("list identities", loadIdentities));

$("enroll-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("enroll-name").value.trim();
  const files = $("enroll-files").files;
  if (!name || !files.length) return setStatus("give a name and at least one photo", true);
  run("enroll " + name, async () => {
    const fd = new FormData();
    fd.append("name", name);
    for (const f of files) fd.append("images", f);
    await api("POST", "/v1/identities", fd);
    await loadIdentities();
    await loadInfo();
  });
});
