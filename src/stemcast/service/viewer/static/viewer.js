// stemcast live viewer: runs, the latest frame and a virtual image, over one WebSocket.
//
// The service sends the runs list (JSON text) and binary messages: a 4-byte little-endian
// header length, a JSON header, then the typed arrays it lists, each at a multiple of 8
// bytes. See docs/viewer.md.
"use strict";

(() => {
  const byId = (id) => document.getElementById(id);

  const TYPED = {
    "|u1": Uint8Array, "|i1": Int8Array,
    "<u2": Uint16Array, "<i2": Int16Array,
    "<u4": Uint32Array, "<i4": Int32Array,
    "<f4": Float32Array, "<f8": Float64Array,
  };

  // Colour maps: anchors interpolated to 256 RGB entries.
  function colourMap(anchors) {
    const table = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const position = (i / 255) * (anchors.length - 1);
      const low = Math.min(Math.floor(position), anchors.length - 2);
      const t = position - low;
      for (let c = 0; c < 3; c++) {
        table[3 * i + c] = anchors[low][c] * (1 - t) + anchors[low + 1][c] * t;
      }
    }
    return table;
  }
  const INFERNO = colourMap([
    [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
    [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164],
  ]);
  const VIRIDIS = colourMap([
    [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37],
  ]);
  const DIVERGING = colourMap([[33, 102, 172], [146, 197, 222], [247, 247, 247],
    [244, 165, 130], [178, 24, 43]]);

  // ?run=ID shows that run (stemcast view --run ID) instead of following the newest.
  const asked = new URLSearchParams(location.search).get("run");

  const state = {
    socket: null,
    runs: [],
    run: asked, // id of the run shown
    pinned: asked !== null,
    frameShape: null, // [rows, cols]
    detector: null, // as the service shows it
    geometry: { disk: null, annulus: null }, // last disk and annulus drawn
    frame: null,
    frameLog: [],
    image: null,
    scale: "log",
    dragging: null,
    lastSent: 0,
    pendingSend: null,
  };

  // --- WebSocket -------------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/viewer/ws");
    socket.binaryType = "arraybuffer";
    state.socket = socket;
    socket.onopen = () => {
      setConnection("connected");
      if (document.hidden) send({ type: "visible", visible: false });
      if (state.pinned && state.run) send({ type: "view", run: state.run });
      if (state.detector) send({ type: "detector", detector: state.detector });
    };
    socket.onclose = () => {
      setConnection("disconnected");
      setTimeout(connect, 1000);
    };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") onText(JSON.parse(event.data));
      else onBinary(event.data);
    };
  }

  function send(message) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(JSON.stringify(message));
    }
  }

  function setConnection(status) {
    const badge = byId("connection");
    badge.textContent = status;
    badge.className = "badge " + status;
  }

  function unpack(buffer) {
    const length = new DataView(buffer).getUint32(0, true);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
    const arrays = {};
    let offset = 4 + length;
    for (const described of header.arrays) {
      const Type = TYPED[described.dtype];
      arrays[described.name] = new Type(buffer, offset, described.length);
      const bytes = described.length * Type.BYTES_PER_ELEMENT;
      offset += bytes + ((8 - (bytes % 8)) % 8);
    }
    return { header, arrays };
  }

  function onText(message) {
    if (message.type === "runs") {
      state.runs = message.runs;
      showRuns();
    } else if (message.type === "view") {
      onView(message);
    } else if (message.type === "detector") {
      // The service's choice (the bright-field disk it found, or what it kept of ours):
      // taken unless the person is drawing one.
      if (!state.dragging && Date.now() - state.lastSent > 500) adoptDetector(message.detector);
    } else if (message.type === "error") {
      byId("message").textContent = message.message;
    }
  }

  function onBinary(buffer) {
    const { header, arrays } = unpack(buffer);
    if (header.run !== state.run) return;
    if (header.type === "frame") onFrame(header, arrays.pixels);
    else if (header.type === "image") onImage(header, arrays);
  }

  // --- Runs ------------------------------------------------------------------------------

  function onView(message) {
    state.pinned = message.pinned;
    if (message.run === state.run && state.frameShape) {
      showRuns(); // the same run, kept or no longer kept
      return;
    }
    state.run = message.run;
    state.frameShape = message.frame_shape;
    state.frame = null;
    state.image = null;
    byId("frames").textContent = "0";
    byId("message").textContent = "";
    showRuns();
  }

  function setText(id, text) {
    const target = byId(id);
    if (target.textContent !== text) target.textContent = text;
  }

  function element(tag, className, text) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined) made.textContent = text;
    return made;
  }

  function baseName(path) {
    return String(path).split(/[\\/]/).pop();
  }

  function showRuns() {
    const list = byId("runs");
    list.replaceChildren();
    for (const run of state.runs) {
      const item = element("li");
      if (run.id === state.run) item.classList.add("shown");
      item.dataset.run = run.id;
      item.title = run.path;
      item.append(element("span", "status status-" + run.status, run.status));
      item.append(element("div", "name", run.name));
      const expected = run.frames_expected ? " / " + run.frames_expected : "";
      const rate = run.rate === null ? "" : ", " + run.rate + " frames/s";
      item.append(element("div", "line", run.frames + expected + " frames" + rate));
      if (run.status === "following") {
        const seconds = run.lag.seconds === null ? "" : " (" + run.lag.seconds.toFixed(2) + " s)";
        item.append(element("div", "line", "lag " + run.lag.frames + " frames" + seconds));
      }
      const scan = run.scan.shape ? run.scan.shape.join(" × ") : "unknown";
      const evidence = run.scan.evidence ? " from " + run.scan.evidence : "";
      const scanLine = element("div", "line", "scan " + scan + evidence);
      if (run.scan.detail) scanLine.title = run.scan.detail;
      item.append(scanLine);
      item.append(element("div", "line", run.frame_shape.join(" × ") + " " + run.dtype + ", " + run.detector));
      if (run.reason && run.status !== "following") item.append(element("div", "line", run.reason));
      for (const job of run.jobs) item.append(jobElement(job));
      item.addEventListener("click", () => send({ type: "view", run: run.id }));
      list.append(item);
    }
    const shown = state.runs.find((run) => run.id === state.run);
    const name = shown ? shown.name : state.run || "no run yet";
    byId("selection").textContent = (state.pinned ? "showing " : "following the newest run: ") + name;
    byId("follow").disabled = !state.pinned;
  }

  function jobElement(job) {
    const box = element("div", "job");
    const fraction = job.progress.fraction;
    const percent = fraction === null ? "" : " " + Math.round(fraction * 100) + "%";
    const line = element("div", "");
    line.append(element("span", "", job.targets.join(", ") + ": "));
    line.append(element("span", "status-" + job.status, job.status + percent));
    box.append(line);
    if (job.status === "running" || job.status === "queued") {
      const bar = element("progress");
      bar.max = 1;
      if (fraction !== null) bar.value = fraction;
      box.append(bar);
    }
    const outputs = Object.values(job.outputs || {});
    if (outputs.length) {
      const list = element("div", "outputs", outputs.map(baseName).join(", "));
      list.title = outputs.join("\n");
      box.append(list);
    }
    if (job.error) box.append(element("div", "status-failed", job.error));
    return box;
  }

  // --- Frame -----------------------------------------------------------------------------

  // Drawing waits for the browser's next paint: a frame and an image that arrive together
  // are painted once, and nothing is drawn while the page is hidden.
  const dirty = { frame: false, image: false, scheduled: false };

  function scheduleDraw(what) {
    dirty[what] = true;
    if (!dirty.scheduled && !document.hidden) {
      dirty.scheduled = true;
      requestAnimationFrame(drawDirty);
    }
  }

  function drawDirty() {
    dirty.scheduled = false;
    if (dirty.frame && state.frame) {
      dirty.frame = false;
      drawFrame();
      frameDrawn();
    }
    if (dirty.image) {
      dirty.image = false;
      drawImage();
    }
  }

  function onFrame(header, pixels) {
    state.frame = {
      run: header.run, index: header.index, timestampMs: header.timestamp_ms, shape: header.shape,
      pixels, receivedMs: Date.now(),
    };
    scheduleDraw("frame");
  }

  // The next frame is sent once this one is on the screen.
  function frameDrawn() {
    const frame = state.frame;
    frame.drawnMs = Date.now();
    state.frameLog.push({
      run: frame.run, index: frame.index, timestampMs: frame.timestampMs,
      receivedMs: frame.receivedMs, drawnMs: frame.drawnMs,
    });
    if (state.frameLog.length > 10000) state.frameLog.splice(0, 5000);
    setText("frame-index", "#" + frame.index);
    send({ type: "drawn", frame: frame.index });
  }

  function range(values) {
    let low = Infinity;
    let high = -Infinity;
    for (let i = 0; i < values.length; i++) {
      const value = values[i];
      if (value < low) low = value;
      if (value > high) high = value;
    }
    return [low, high];
  }

  function drawFrame() {
    const frame = state.frame;
    if (!frame) return;
    const [rows, cols] = frame.shape;
    const canvas = byId("frame");
    if (canvas.width !== cols || canvas.height !== rows) {
      canvas.width = cols;
      canvas.height = rows;
      showOverlay();
    }
    const context = canvas.getContext("2d");
    const picture = context.createImageData(cols, rows);
    const pixels = frame.pixels;
    const [low, high] = range(pixels);
    const log = state.scale === "log";
    const top = log ? Math.log1p(Math.max(high - low, 0)) : high - low;
    const scale = top > 0 ? 255 / top : 0;
    // One packed RGBA colour per possible value (counts are integers in a small range),
    // then one look-up per pixel.
    const colour = (value) => {
      const shifted = Math.max(value - low, 0);
      const level = Math.min(255, Math.round((log ? Math.log1p(shifted) : shifted) * scale)) * 3;
      return (255 << 24 | INFERNO[level + 2] << 16 | INFERNO[level + 1] << 8 | INFERNO[level]) >>> 0;
    };
    const out = new Uint32Array(picture.data.buffer);
    const integers = !(pixels instanceof Float32Array || pixels instanceof Float64Array);
    if (integers && high - low < 1 << 20) {
      const table = new Uint32Array(high - low + 1);
      for (let value = low; value <= high; value++) table[value - low] = colour(value);
      for (let i = 0; i < pixels.length; i++) out[i] = table[pixels[i] - low];
    } else {
      for (let i = 0; i < pixels.length; i++) out[i] = colour(pixels[i]);
    }
    context.putImageData(picture, 0, 0);
    setText("frame-high", formatValue(high));
    setText("frame-low", formatValue(low) + (log ? " (log)" : ""));
  }

  function drawBar(id, table) {
    const canvas = byId(id);
    const context = canvas.getContext("2d");
    const picture = context.createImageData(1, 256);
    for (let i = 0; i < 256; i++) {
      const level = (255 - i) * 3;
      picture.data.set([table[level], table[level + 1], table[level + 2], 255], i * 4);
    }
    context.putImageData(picture, 0, 0);
  }

  function formatValue(value) {
    if (!Number.isFinite(value)) return "";
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 1000 ? value.toExponential(3) : value.toPrecision(4);
  }

  // --- Virtual image ---------------------------------------------------------------------

  function onImage(header, arrays) {
    let image = state.image;
    if (header.reset || !image) {
      image = state.image = {
        run: header.run, detector: header.detector, scanWidth: header.width, scanHeight: header.height,
        data: new Float64Array(0), filled: 0,
      };
    }
    const size = image.scanWidth ? image.scanWidth * image.scanHeight : header.filled;
    if (image.data.length < size) {
      const grown = new Float64Array(size).fill(NaN);
      grown.set(image.data);
      image.data = grown;
    }
    const values = arrays.values;
    const positions = arrays.positions;
    for (let i = 0; i < values.length; i++) {
      const place = positions ? positions[i] : header.start + i;
      if (place >= 0 && place < image.data.length) image.data[place] = values[i];
    }
    image.filled = header.filled;
    setText("frames", String(image.filled));
    scheduleDraw("image");
  }

  function imageSize(image) {
    if (image.scanWidth) return [image.scanWidth, image.scanHeight];
    return [Math.max(image.filled, 1), 1];
  }

  function drawImage() {
    const image = state.image;
    if (!image) return;
    const [width, height] = imageSize(image);
    const canvas = byId("image");
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const data = image.data;
    let low = Infinity;
    let high = -Infinity;
    for (let i = 0; i < width * height; i++) {
      const value = data[i];
      if (value < low) low = value;
      if (value > high) high = value;
    }
    const centred = image.detector.kind === "com_x" || image.detector.kind === "com_y";
    if (centred) {
      const largest = Math.max(Math.abs(low), Math.abs(high));
      low = -largest;
      high = largest;
    }
    const table = centred ? DIVERGING : VIRIDIS;
    if (state.imageTable !== table) {
      state.imageTable = table;
      drawBar("image-bar", table);
    }
    const scale = high > low ? 255 / (high - low) : 0;
    const context = canvas.getContext("2d");
    const picture = context.createImageData(width, height);
    const out = picture.data;
    for (let i = 0, j = 0; i < width * height; i++, j += 4) {
      const value = data[i];
      if (Number.isNaN(value)) {
        out[j + 3] = 0;
        continue;
      }
      const level = Math.min(255, Math.max(0, Math.round((value - low) * scale))) * 3;
      out[j] = table[level];
      out[j + 1] = table[level + 1];
      out[j + 2] = table[level + 2];
      out[j + 3] = 255;
    }
    context.putImageData(picture, 0, 0);
    setText("image-high", formatValue(high));
    setText("image-low", formatValue(low));
  }

  // --- Detector --------------------------------------------------------------------------

  function describe(detector) {
    const at = "centre (" + detector.cx + ", " + detector.cy + ")";
    if (detector.kind === "disk") return "disk, " + at + ", radius " + detector.r;
    if (detector.kind === "annulus") {
      return "annulus, " + at + ", radii " + detector.inner + " to " + detector.outer;
    }
    return "centre-of-mass shift along " + (detector.kind === "com_x" ? "x (columns)" : "y (rows)") + ", in pixels";
  }

  function adoptDetector(detector) {
    state.detector = detector;
    if (detector.kind === "disk" || detector.kind === "annulus") state.geometry[detector.kind] = detector;
    for (const input of document.querySelectorAll("input[name=detector]")) {
      input.checked = input.value === detector.kind;
    }
    byId("detector-text").textContent = describe(detector);
    showOverlay();
  }

  function round(value) {
    return Math.round(value * 100) / 100;
  }

  function setDetector(detector) {
    const copy = { kind: detector.kind };
    if (detector.kind === "disk") {
      Object.assign(copy, { cx: round(detector.cx), cy: round(detector.cy), r: round(detector.r) });
    } else if (detector.kind === "annulus") {
      Object.assign(copy, {
        cx: round(detector.cx), cy: round(detector.cy),
        inner: round(detector.inner), outer: round(detector.outer),
      });
    } else if (detector.kind !== "com_x" && detector.kind !== "com_y") {
      throw new Error("unknown detector kind " + detector.kind);
    }
    adoptDetector(copy);
    send({ type: "detector", detector: copy });
    state.lastSent = Date.now();
    return copy;
  }

  // While dragging: at most one detector every 150 ms, and the last one when the drag ends.
  function setDetectorSoon(detector) {
    adoptDetector(detector);
    clearTimeout(state.pendingSend);
    const wait = state.lastSent + 150 - Date.now();
    if (wait <= 0) setDetector(detector);
    else state.pendingSend = setTimeout(() => setDetector(state.detector), wait);
  }

  function defaultGeometry(kind) {
    const [rows, cols] = state.frameShape || [256, 256];
    const disk = state.geometry.disk || { cx: (cols - 1) / 2, cy: (rows - 1) / 2, r: Math.min(rows, cols) / 8 };
    if (kind === "disk") return { kind, cx: disk.cx, cy: disk.cy, r: disk.r };
    const outer = Math.max(disk.r * 2.5, Math.min(rows, cols) / 3);
    return { kind, cx: disk.cx, cy: disk.cy, inner: round(disk.r * 1.2), outer: round(outer) };
  }

  function chooseKind(kind) {
    if (kind === "com_x" || kind === "com_y") setDetector({ kind });
    else setDetector(state.geometry[kind] || defaultGeometry(kind));
  }

  const SVG = "http://www.w3.org/2000/svg";

  function circle(cx, cy, r, className) {
    const made = document.createElementNS(SVG, "circle");
    made.setAttribute("cx", cx + 0.5);
    made.setAttribute("cy", cy + 0.5);
    made.setAttribute("r", Math.max(r, 0));
    made.setAttribute("class", className);
    made.setAttribute("vector-effect", "non-scaling-stroke");
    return made;
  }

  function showOverlay() {
    const overlay = byId("overlay");
    overlay.replaceChildren();
    const canvas = byId("frame");
    overlay.setAttribute("viewBox", "0 0 " + canvas.width + " " + canvas.height);
    const detector = state.detector;
    if (!detector || (detector.kind !== "disk" && detector.kind !== "annulus")) return;
    const outer = detector.kind === "disk" ? detector.r : detector.outer;
    overlay.append(circle(detector.cx, detector.cy, outer, "ring"));
    if (detector.kind === "annulus") overlay.append(circle(detector.cx, detector.cy, detector.inner, "ring inner"));
    const size = Math.max(canvas.width / 64, 1);
    for (const [dx, dy] of [[size, 0], [0, size]]) {
      const line = document.createElementNS(SVG, "line");
      line.setAttribute("x1", detector.cx + 0.5 - dx);
      line.setAttribute("y1", detector.cy + 0.5 - dy);
      line.setAttribute("x2", detector.cx + 0.5 + dx);
      line.setAttribute("y2", detector.cy + 0.5 + dy);
      line.setAttribute("class", "centre");
      line.setAttribute("vector-effect", "non-scaling-stroke");
      overlay.append(line);
    }
  }

  // Frame pixel coordinates (column, row) of a pointer event.
  function framePoint(event) {
    const canvas = byId("frame");
    const box = byId("overlay").getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * canvas.width - 0.5,
      y: ((event.clientY - box.top) / box.height) * canvas.height - 0.5,
      tolerance: (8 * canvas.width) / box.width,
    };
  }

  function startDrag(event) {
    const detector = state.detector;
    if (!detector || (detector.kind !== "disk" && detector.kind !== "annulus")) return;
    const point = framePoint(event);
    const distance = Math.hypot(point.x - detector.cx, point.y - detector.cy);
    const outer = detector.kind === "disk" ? detector.r : detector.outer;
    let part = "move";
    if (Math.abs(distance - outer) < point.tolerance) part = "outer";
    else if (detector.kind === "annulus" && Math.abs(distance - detector.inner) < point.tolerance) part = "inner";
    if (part === "move" && distance > outer + point.tolerance) {
      setDetectorSoon({ ...detector, cx: round(point.x), cy: round(point.y) });
    }
    state.dragging = { part, from: point, start: { ...state.detector } };
    byId("overlay").setPointerCapture(event.pointerId);
  }

  function drag(event) {
    showCursor(event);
    const dragging = state.dragging;
    if (!dragging) return;
    const point = framePoint(event);
    const start = dragging.start;
    const moved = { ...start };
    if (dragging.part === "move") {
      moved.cx = round(start.cx + point.x - dragging.from.x);
      moved.cy = round(start.cy + point.y - dragging.from.y);
    } else {
      const radius = round(Math.max(0.5, Math.hypot(point.x - start.cx, point.y - start.cy)));
      if (start.kind === "disk") moved.r = radius;
      else if (dragging.part === "outer") moved.outer = Math.max(radius, start.inner + 0.5);
      else moved.inner = Math.min(radius, start.outer - 0.5);
    }
    setDetectorSoon(moved);
  }

  function endDrag() {
    if (!state.dragging) return;
    state.dragging = null;
    clearTimeout(state.pendingSend);
    setDetector(state.detector);
  }

  function showCursor(event) {
    const frame = state.frame;
    if (!frame) return;
    const point = framePoint(event);
    const column = Math.round(point.x);
    const row = Math.round(point.y);
    const [rows, cols] = frame.shape;
    if (column < 0 || row < 0 || column >= cols || row >= rows) {
      byId("frame-cursor").textContent = "\u00a0";
      return;
    }
    byId("frame-cursor").textContent =
      "column " + column + ", row " + row + ": " + frame.pixels[row * cols + column];
  }

  function showImageCursor(event) {
    const image = state.image;
    if (!image) return;
    const [width, height] = imageSize(image);
    const box = byId("image").getBoundingClientRect();
    const x = Math.floor(((event.clientX - box.left) / box.width) * width);
    const y = Math.floor(((event.clientY - box.top) / box.height) * height);
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    const value = image.data[y * width + x];
    byId("image-cursor").textContent =
      "scan x " + x + ", y " + y + ": " + (Number.isNaN(value) ? "not yet" : formatValue(value));
  }

  // --- Test and automation hooks (part of the viewer's contract, see docs/viewer.md) -----

  window.stemcastViewer = {
    virtualImage() {
      const image = state.image;
      if (!image) return null;
      const [width, height] = imageSize(image);
      return {
        width, height,
        values: Array.from(image.data.subarray(0, width * height), (value) => (Number.isNaN(value) ? null : value)),
        detector: image.detector, frames: image.filled, run: image.run,
      };
    },
    setDetector,
    detector: () => state.detector,
    run: () => ({ id: state.run, pinned: state.pinned }),
    selectRun(id) { send({ type: "view", run: id }); },
    latestFrame() {
      const frame = state.frame;
      if (!frame) return null;
      return {
        index: frame.index, timestampMs: frame.timestampMs, receivedMs: frame.receivedMs,
        drawnMs: frame.drawnMs, shape: frame.shape,
      };
    },
    frameLog: () => state.frameLog.slice(),
  };

  // --- Start -----------------------------------------------------------------------------

  for (const input of document.querySelectorAll("input[name=scale]")) {
    input.addEventListener("change", () => {
      state.scale = input.value;
      scheduleDraw("frame");
    });
  }
  for (const input of document.querySelectorAll("input[name=detector]")) {
    input.addEventListener("change", () => chooseKind(input.value));
  }
  byId("follow").addEventListener("click", () => send({ type: "view", run: null }));
  // A hidden page is sent no frames (it would not draw them); its image keeps filling.
  document.addEventListener("visibilitychange", () => {
    send({ type: "visible", visible: !document.hidden });
    if (!document.hidden && (dirty.frame || dirty.image) && !dirty.scheduled) {
      dirty.scheduled = true;
      requestAnimationFrame(drawDirty);
    }
  });
  const overlay = byId("overlay");
  overlay.addEventListener("pointerdown", startDrag);
  overlay.addEventListener("pointermove", drag);
  overlay.addEventListener("pointerup", endDrag);
  overlay.addEventListener("pointercancel", endDrag);
  overlay.addEventListener("pointerleave", () => { byId("frame-cursor").textContent = "\u00a0"; });
  byId("image").addEventListener("pointermove", showImageCursor);
  drawBar("frame-bar", INFERNO);
  connect();
})();
