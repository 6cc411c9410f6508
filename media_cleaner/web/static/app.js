// The Media Cleaner page: choose → upload → watch → compare and download, and "my videos".
// It talks only to the public API (the same checks as curl); text from the server is always set as text,
// never as HTML. No inline script or style: the page runs under a strict Content-Security-Policy.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const STRINGS = window.MC_STRINGS;
  const KEY_STORE = "media-cleaner-key";          // sessionStorage: forgotten when the tab closes
  const OWNER_STORE = "media-cleaner-owner";      // localStorage: this browser's tasks on an open server
  const LANGUAGE_STORE = "media-cleaner-language";
  const POLL_MS = 1000;

  const state = {
    language: pickLanguage(), stats: null, file: null, task: null, xhr: null, polling: null,
    protectedUrl: null, originalUrl: null,
  };

  // --- words -----------------------------------------------------------------------------------------

  function pickLanguage() {
    const saved = localStorage.getItem(LANGUAGE_STORE);
    if (saved && STRINGS[saved]) return saved;
    const wanted = (navigator.languages || [navigator.language || "en"]).map((l) => l.toLowerCase());
    return wanted.some((l) => l.startsWith("ru")) ? "ru" : "en";
  }

  function t(key, values) {
    const text = (STRINGS[state.language] || STRINGS.en)[key] ?? STRINGS.en[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (_, name) => (values && name in values ? String(values[name]) : ""));
  }

  function applyLanguage() {
    document.documentElement.lang = state.language;
    document.querySelectorAll("[data-i18n]").forEach((node) => {
      node.textContent = t(node.dataset.i18n, rangesFor(node.dataset.i18n));
    });
    const other = t("other_language");
    $("language").textContent = other;
    $("language").setAttribute("aria-label", other);
    $("sheet").alt = t("sheet_alt");
    showLimits();
    if (state.file) showChosen();
    if (state.task) showTask(state.task);
    if (state.report) showReport(state.report);
    renderMine(state.mine || []);
  }

  function rangesFor(key) {
    const ranges = state.stats && state.stats.ranges;
    if (!ranges || !(key in ranges)) return undefined;
    return { min: ranges[key][0], max: ranges[key][1] };
  }

  function bytes(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(1) + " GB";
    if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
    return Math.max(1, Math.round(n / 1e3)) + " kB";
  }

  function duration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "–";
    return seconds < 90 ? t("seconds", { n: Math.ceil(seconds) }) : t("minutes", { n: Math.ceil(seconds / 60) });
  }

  // --- talking to the API ----------------------------------------------------------------------------

  function headers() {
    const key = sessionStorage.getItem(KEY_STORE);
    return key ? { "X-API-Key": key } : {};
  }

  class ApiError extends Error {
    constructor(status, detail, retryAfter) {
      super(typeof detail === "string" ? detail : "");
      this.status = status; this.detail = this.message; this.retryAfter = retryAfter;
    }
  }

  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: { ...headers(), ...((options || {}).headers || {}) } });
    } catch (error) {
      throw new ApiError(0, "");
    }
    if (!response.ok) throw await toError(response.status, () => response.json(),
                                          response.headers.get("Retry-After"));
    return response;
  }

  async function toError(status, readJson, retryAfter) {
    let detail = "";
    try {
      const body = await readJson();
      detail = typeof body.detail === "string" ? body.detail
        : Array.isArray(body.detail) ? body.detail.map((d) => d.msg || "").join("; ") : "";
    } catch (ignored) { /* not JSON: the status says enough */ }
    return new ApiError(status, detail, retryAfter);
  }

  function explain(error) {
    const wait = duration(Number(error.retryAfter) || 60);
    const size = state.stats ? bytes(state.stats.limits.max_upload_bytes) : "";
    const known = [400, 401, 403, 404, 409, 410, 413, 415, 422, 429, 507];
    if (error.status === 0) return t("e_network");
    if (known.includes(error.status)) return t("e_" + error.status, { detail: error.detail, wait, size });
    return t("e_500");
  }

  function showError(error) {
    if (error && error.status === 401) askForKey(t("e_401"));
    $("error-text").textContent = typeof error === "string" ? error : explain(error);
    // The server's own sentence, when it says more than the status (it is written for people too).
    const detail = typeof error === "object" && error.detail && !$("error-text").textContent.includes(error.detail)
      && error.status !== 500 ? error.detail : "";
    $("error-detail").textContent = detail;
    $("error-detail").hidden = !detail;
    $("error").hidden = false;
    $("error").focus && $("error-close").focus();
  }

  function clearError() { $("error").hidden = true; }

  // --- keys ------------------------------------------------------------------------------------------

  function askForKey(message) {
    const dialog = $("key-dialog");
    $("key-error").hidden = !message;
    $("key-error").textContent = message || "";
    $("key-input").value = "";
    if (!dialog.open) dialog.showModal();
    $("key-input").focus();
  }

  async function useKey(event) {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    try {
      await loadStats();
      $("key-dialog").close();
      $("key-button").hidden = false;
      clearError();
      refreshMine();
    } catch (error) {
      sessionStorage.removeItem(KEY_STORE);
      $("key-error").textContent = explain(error);
      $("key-error").hidden = false;
    }
  }

  // --- step 1: choose --------------------------------------------------------------------------------

  async function loadStats() {
    const response = await api("/stats");
    state.stats = await response.json();
    $("key-button").hidden = state.stats.auth !== "api-key";
    const ranges = state.stats.ranges;
    for (const name of ["epsilon", "video_strength", "every_n_frames"]) {
      $(name).min = ranges[name][0]; $(name).max = ranges[name][1];
    }
    applyLanguage();
  }

  function showLimits() {
    if (!state.stats) return;
    const formats = state.stats.limits.supported_video_formats.map((f) => f.replace(".", "").toUpperCase());
    $("limits").textContent = t("limits", { formats: formats.join(", "), size: bytes(state.stats.limits.max_upload_bytes) });
  }

  function choose(file) {
    if (!file) return;
    clearError();
    state.file = file;
    showChosen();
    $("start").disabled = false;
  }

  function showChosen() {
    $("chosen").textContent = t("chosen", { name: state.file.name, size: bytes(state.file.size) });
  }

  function formData() {
    const form = new FormData();
    form.append("file", state.file, state.file.name);
    form.append("protection", document.querySelector("input[name=protection]:checked").value);
    for (const name of ["epsilon", "video_strength", "every_n_frames", "audio_level"]) {
      const value = $(name).value.trim();
      if (value) form.append(name, value);
    }
    if (!sessionStorage.getItem(KEY_STORE)) form.append("user_id", owner());
    return form;
  }

  function owner() {
    let id = localStorage.getItem(OWNER_STORE);
    if (!id) {
      const random = new Uint8Array(12);
      crypto.getRandomValues(random);
      id = "browser-" + Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("");
      localStorage.setItem(OWNER_STORE, id);
    }
    return id;
  }

  // --- step 2: upload, then watch --------------------------------------------------------------------

  function start() {
    if (!state.file) return;
    clearError();
    resetResult();
    $("choose").hidden = true;
    $("progress").hidden = false;
    $("cancel").disabled = false;
    $("cancel").textContent = t("cancel");
    const xhr = new XMLHttpRequest();   // fetch cannot report upload progress
    state.xhr = xhr;
    const began = performance.now();
    xhr.open("POST", "/upload");
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (!event.lengthComputable) return;
      const seconds = (performance.now() - began) / 1000;
      const speed = event.loaded / Math.max(seconds, 0.001);
      const percent = Math.floor(100 * event.loaded / event.total);
      $("phase").textContent = t("uploading", { percent });
      $("bar").value = percent;
      $("detail").textContent = t("upload_detail", { sent: bytes(event.loaded), total: bytes(event.total),
        speed: bytes(speed), left: duration((event.total - event.loaded) / Math.max(speed, 1)) });
    };
    xhr.onload = async () => {
      state.xhr = null;
      if (xhr.status === 202) {
        state.task = JSON.parse(xhr.responseText);
        showTask(state.task);
        watch();
        refreshMine();
        return;
      }
      const error = await toError(xhr.status, () => JSON.parse(xhr.responseText), xhr.getResponseHeader("Retry-After"));
      backToChoose();
      showError(error);
    };
    xhr.onerror = () => { state.xhr = null; backToChoose(); showError(new ApiError(0, "")); };
    xhr.onabort = () => { state.xhr = null; backToChoose(); };
    xhr.send(formData());
  }

  function backToChoose() {
    stopWatching();
    $("progress").hidden = true;
    $("choose").hidden = false;
  }

  function watch() {
    stopWatching();
    const poll = async () => {
      if (!state.task) return;
      try {
        const response = await api("/status/" + encodeURIComponent(state.task.task_id));
        state.task = await response.json();
        showTask(state.task);
        if (["completed", "failed", "cancelled"].includes(state.task.status)) {
          finished(state.task);
          return;
        }
        state.polling = setTimeout(poll, POLL_MS);
      } catch (error) {
        // Honour Retry-After (a proxy or a rate limit); otherwise keep trying at the usual pace.
        const wait = error.retryAfter ? Number(error.retryAfter) * 1000 : POLL_MS * 3;
        if (error.status === 401 || error.status === 404) { showError(error); return; }
        state.polling = setTimeout(poll, wait);
      }
    };
    poll();
  }

  function stopWatching() {
    if (state.polling) clearTimeout(state.polling);
    state.polling = null;
  }

  function showTask(task) {
    const progress = Math.floor(task.progress || 0);
    if (task.status === "pending") {
      $("phase").textContent = task.queue_position ? t("pending_at", { position: task.queue_position }) : t("pending");
      $("detail").textContent = "";
      $("bar").removeAttribute("value");   // indeterminate while it waits
    } else if (task.status === "processing") {
      $("phase").textContent = t("processing", { percent: progress });
      $("bar").value = progress;
      $("detail").textContent = task.eta_s != null ? t("processing_eta", { left: duration(task.eta_s) }) : "";
    } else {
      $("phase").textContent = t(task.status);
      $("bar").value = task.status === "completed" ? 100 : progress;
      $("detail").textContent = "";
    }
  }

  async function cancel() {
    if (state.xhr) { state.xhr.abort(); return; }
    if (!state.task) return;
    $("cancel").disabled = true;
    $("cancel").textContent = t("cancelling");
    try {
      await api("/tasks/" + encodeURIComponent(state.task.task_id), { method: "DELETE" });
    } catch (error) {
      showError(error);
    }
  }

  function finished(task) {
    stopWatching();
    refreshMine();
    if (task.status === "completed") {
      $("progress").hidden = true;
      openResult(task, state.file);
      return;
    }
    backToChoose();
    if (task.status === "failed") showError(t("e_task_failed", { detail: task.error_message || "" }));
    state.task = null;
  }

  // --- step 3: compare and download ------------------------------------------------------------------

  function resetResult() {
    $("result").hidden = true;
    $("compare").hidden = true;
    $("sheet").hidden = true;
    $("report").replaceChildren();
    state.report = null;
    for (const name of ["protectedUrl", "originalUrl", "sheetUrl"]) {
      if (state[name]) URL.revokeObjectURL(state[name]);
      state[name] = null;
    }
  }

  async function openResult(task, originalFile) {
    resetResult();
    state.task = task;
    $("result").hidden = false;
    $("choose").hidden = true;
    $("result-title").focus && $("result-title").scrollIntoView({ block: "start" });
    const download = $("download");
    download.href = task.download_url;
    download.removeAttribute("download");
    try {
      // With a key the browser cannot follow a plain link (it would not send the header): fetch the file.
      const response = await api(task.download_url);
      const blob = await response.blob();
      state.protectedUrl = URL.createObjectURL(blob);
      download.href = state.protectedUrl;
      download.download = fileName(response) || "protected.mp4";
    } catch (error) {
      showError(error);
    }
    loadReport(task);
    if (originalFile && state.protectedUrl) compareLive(originalFile);
    else loadSheet(task);
  }

  function fileName(response) {
    const disposition = response.headers.get("Content-Disposition") || "";
    const utf8 = /filename\*=UTF-8''([^;]+)/i.exec(disposition);
    if (utf8) return decodeURIComponent(utf8[1]);
    const plain = /filename="?([^";]+)"?/i.exec(disposition);
    return plain ? plain[1] : null;
  }

  async function loadSheet(task) {
    try {
      const response = await api("/report/" + encodeURIComponent(task.task_id) + "/preview.png");
      state.sheetUrl = URL.createObjectURL(await response.blob());
      $("sheet").src = state.sheetUrl;
      $("sheet").hidden = false;
    } catch (error) { /* the report explains what is missing */ }
  }

  // The original (still in this page) and the protected file side by side at the same moment.
  function compareLive(file) {
    state.originalUrl = URL.createObjectURL(file);
    const original = document.createElement("video");
    const guarded = document.createElement("video");
    for (const [video, url] of [[original, state.originalUrl], [guarded, state.protectedUrl]]) {
      video.muted = true; video.preload = "auto"; video.src = url;
    }
    let ready = 0;
    const draw = () => {
      const canvases = [$("frame-original"), $("frame-protected")];
      [original, guarded].forEach((video, i) => {
        canvases[i].width = video.videoWidth; canvases[i].height = video.videoHeight;
        canvases[i].getContext("2d").drawImage(video, 0, 0);
      });
      state.frames = canvases.map((c) => c.getContext("2d").getImageData(0, 0, c.width, c.height));
      $("compare").hidden = false;
      paintChange();
    };
    let pending = 0;
    const seek = () => {
      const at = Number($("moment").value) / 100;
      pending = 2;
      for (const video of [original, guarded]) video.currentTime = Math.min(video.duration * at, Math.max(0, video.duration - 0.05));
    };
    for (const video of [original, guarded]) {
      video.addEventListener("loadeddata", () => { if (++ready === 2) seek(); });
      video.addEventListener("seeked", () => { if (--pending === 0) draw(); });
      // A format the browser cannot play (AVI, FLV…): fall back to the server's before/after sheet.
      video.addEventListener("error", () => { if (state.task) loadSheet(state.task); }, { once: true });
    }
    $("moment").oninput = seek;
    split();
  }

  function split() {
    $("frame-protected").style.clipPath = `inset(0 0 0 ${$("split").value}%)`;
  }

  function paintChange() {
    if (!state.frames) return;
    const [original, guarded] = state.frames;
    const canvas = $("frame-protected");
    const context = canvas.getContext("2d");
    if (!$("show-change").checked) { context.putImageData(guarded, 0, 0); return; }
    const change = context.createImageData(guarded.width, guarded.height);
    for (let i = 0; i < change.data.length; i += 4) {
      for (let c = 0; c < 3; c++) change.data[i + c] = Math.min(255, 128 + 10 * (guarded.data[i + c] - original.data[i + c]));
      change.data[i + 3] = 255;
    }
    context.putImageData(change, 0, 0);
  }

  async function loadReport(task) {
    try {
      const response = await api("/report/" + encodeURIComponent(task.task_id));
      state.report = await response.json();
      showReport(state.report);
    } catch (error) {
      state.report = { error: explain(error) };
      showReport(state.report);
    }
  }

  function bar(label, share, say, extra) {
    const row = document.createElement("div");
    row.className = "figure";
    const title = document.createElement("p");
    title.className = "figure-title";
    title.textContent = share == null ? label : `${label}: ${Math.round(100 * share)} % ${t("r_frames")}`;
    row.append(title);
    if (share != null) {
      const meter = document.createElement("meter");
      meter.min = 0; meter.max = 1; meter.low = 0.2; meter.high = 0.6; meter.optimum = 0; meter.value = share;
      meter.setAttribute("aria-label", title.textContent);
      row.append(meter);
    }
    for (const text of [extra, say]) {
      if (!text) continue;
      const line = document.createElement("p");
      line.className = "hint";
      line.textContent = text;
      row.append(line);
    }
    return row;
  }

  function showReport(report) {
    const box = $("report");
    box.replaceChildren();
    if (report.error) { box.append(bar(t("r_none", { reason: report.error }))); return; }
    const detection = (report.detection || {}).mtcnn;
    if (detection && detection.original_rate) {
      box.append(bar(t("r_detector"), detection.protected_rate / detection.original_rate, t("r_detector_say")));
    } else if (detection) {
      box.append(bar(t("r_detector"), null, null, t("r_missing", { note: detection.note || "" })));
    }
    const identity = report.identity || {};
    if (identity.match_rate != null) {
      box.append(bar(t("r_identity"), identity.match_rate, t("r_identity_say"),
        t("r_distance", { value: identity.mean_distance.toFixed(2), threshold: identity.threshold })));
    } else if (identity.note) {
      box.append(bar(t("r_identity"), null, null, t("r_missing", { note: identity.note })));
    }
    const speaker = report.speaker || {};
    if (speaker.similarity != null) {
      box.append(bar(t("r_voice"), Math.max(0, speaker.similarity), t("r_voice_say", { threshold: speaker.threshold })));
    } else if (speaker.note) {
      box.append(bar(t("r_voice_none", { note: speaker.note })));
    }
    if (report.psnr != null) {
      const psnr = isFinite(report.psnr) ? report.psnr.toFixed(1) : "∞";
      box.append(bar(t("r_quality", { psnr, ssim: (report.ssim ?? 1).toFixed(3) }), null, t("r_quality_say")));
    }
  }

  function again() {
    resetResult();
    state.task = null; state.file = null; state.frames = null;
    $("file").value = "";
    $("chosen").textContent = "";
    $("start").disabled = true;
    $("choose").hidden = false;
    $("file").focus();
  }

  // --- my videos -------------------------------------------------------------------------------------

  async function refreshMine() {
    const query = sessionStorage.getItem(KEY_STORE) ? "" : "&user_id=" + encodeURIComponent(owner());
    try {
      const response = await api("/tasks?limit=50" + query);
      state.mine = (await response.json()).tasks;
      renderMine(state.mine);
    } catch (error) {
      if (error.status === 401) askForKey();
    }
  }

  function renderMine(tasks) {
    const list = $("mine-list");
    list.replaceChildren();
    $("mine-empty").hidden = tasks.length > 0;
    for (const task of tasks) {
      const item = document.createElement("li");
      const name = document.createElement("span");
      name.className = "task-name";
      name.textContent = task.original_filename;
      const status = document.createElement("span");
      status.className = "task-status status-" + task.status;
      status.textContent = task.status === "processing" ? t("processing", { percent: Math.floor(task.progress) })
        : t(task.status);
      item.append(name, status);
      if (task.status === "completed" && task.download_url) {
        const open = document.createElement("button");
        open.type = "button"; open.className = "link"; open.textContent = t("download_short");
        open.addEventListener("click", () => { clearError(); openResult(task, null); });
        item.append(open);
      }
      const remove = document.createElement("button");
      remove.type = "button"; remove.className = "link"; remove.textContent = t(
        ["pending", "processing"].includes(task.status) ? "cancel" : "delete");
      remove.addEventListener("click", async () => {
        if (!confirm(t("remove_confirm", { name: task.original_filename }))) return;
        try {
          await api("/tasks/" + encodeURIComponent(task.task_id), { method: "DELETE" });
        } catch (error) { showError(error); }
        refreshMine();
      });
      item.append(remove);
      list.append(item);
    }
  }

  // --- wiring ----------------------------------------------------------------------------------------

  function wire() {
    $("file").addEventListener("change", () => choose($("file").files[0]));
    const drop = $("drop");
    drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault(); drop.classList.remove("over");
      choose(event.dataTransfer.files[0]);
    });
    $("start").addEventListener("click", start);
    $("cancel").addEventListener("click", cancel);
    $("again").addEventListener("click", again);
    $("split").addEventListener("input", split);
    $("show-change").addEventListener("change", paintChange);
    $("refresh").addEventListener("click", refreshMine);
    $("error-close").addEventListener("click", clearError);
    $("key-form").addEventListener("submit", useKey);
    $("key-button").addEventListener("click", () => askForKey());
    $("language").addEventListener("click", () => {
      state.language = state.language === "ru" ? "en" : "ru";
      localStorage.setItem(LANGUAGE_STORE, state.language);
      applyLanguage();
    });
  }

  async function boot() {
    wire();
    applyLanguage();
    try {
      await loadStats();
      refreshMine();
    } catch (error) {
      if (error.status === 401) askForKey(); else showError(error);
    }
  }

  boot();
})();
