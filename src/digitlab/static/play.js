// digitlab playground: the drawing pad, the classifier's bars, the generator's samples.
// Everything goes through the JSON API of digitlab.play.api; nothing is loaded from the network.
"use strict";

const SIDE = 28, BOX = 20, INK = 0.05;  // as digitlab.play.drawing.prepare_drawing
const $ = (id) => document.getElementById(id);
// What the browser tests read: the last image sent, how long the answer took.
window.digitlab = { prepared: null, latencyMs: null, answers: 0 };

// ------------------------------------------------------------------ a drawing as MNIST sees it

// The ink fitted into a 20×20 box (area-averaged as torch's adaptive_avg_pool2d does), scaled to a
// brightest pixel of 1, placed in a 28×28 field with its centre of mass at the centre.
function prepare(gray, width, height) {
  const field = new Float32Array(SIDE * SIDE);
  let r0 = height, r1 = -1, c0 = width, c1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (gray[y * width + x] > INK) {
        r0 = Math.min(r0, y); r1 = Math.max(r1, y); c0 = Math.min(c0, x); c1 = Math.max(c1, x);
      }
    }
  }
  if (r1 < 0) return field;
  const h = r1 - r0 + 1, w = c1 - c0 + 1, scale = BOX / Math.max(h, w);
  const oh = Math.max(1, Math.floor(h * scale + 0.5)), ow = Math.max(1, Math.floor(w * scale + 0.5));
  const small = new Float32Array(oh * ow);
  let brightest = 0;
  for (let i = 0; i < oh; i++) {
    const ys = Math.floor((i * h) / oh), ye = Math.ceil(((i + 1) * h) / oh);
    for (let j = 0; j < ow; j++) {
      const xs = Math.floor((j * w) / ow), xe = Math.ceil(((j + 1) * w) / ow);
      let sum = 0;
      for (let y = ys; y < ye; y++) for (let x = xs; x < xe; x++) sum += gray[(r0 + y) * width + c0 + x];
      small[i * ow + j] = sum / ((ye - ys) * (xe - xs));
      brightest = Math.max(brightest, small[i * ow + j]);
    }
  }
  let mass = 0, my = 0, mx = 0;
  for (let i = 0; i < oh; i++) {
    for (let j = 0; j < ow; j++) {
      const v = (small[i * ow + j] /= brightest);
      mass += v; my += v * i; mx += v * j;
    }
  }
  const top = Math.floor((SIDE - oh) / 2), left = Math.floor((SIDE - ow) / 2);
  const clamp = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
  const dy = clamp(Math.floor((SIDE - 1) / 2 - (top + my / mass) + 0.5), -top, SIDE - oh - top);
  const dx = clamp(Math.floor((SIDE - 1) / 2 - (left + mx / mass) + 0.5), -left, SIDE - ow - left);
  for (let i = 0; i < oh; i++) {
    for (let j = 0; j < ow; j++) field[(top + dy + i) * SIDE + left + dx + j] = small[i * ow + j];
  }
  return field;
}

function rows(field) {
  const out = [];
  for (let y = 0; y < SIDE; y++) out.push(Array.from(field.slice(y * SIDE, (y + 1) * SIDE), (v) => Math.round(v * 1e4) / 1e4));
  return out;
}

// ------------------------------------------------------------------ the API

async function api(path, body) {
  const reply = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const answer = await reply.json();
  if (!reply.ok) throw new Error(answer.error || reply.statusText);
  $("error").hidden = true;
  return answer;
}

function showError(error) {
  $("error").textContent = error.message;
  $("error").hidden = false;
}

// ------------------------------------------------------------------ drawing and the bars

const pad = $("pad"), ctx = pad.getContext("2d", { willReadFrequently: true });
const seen = $("seen").getContext("2d");
let drawing = false, last = null, pending = false, again = false, upAt = null;

function clearPad() {
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height);
  seen.fillStyle = "#000"; seen.fillRect(0, 0, 140, 140);
  showBars(null);
}

function makeBars() {
  for (let d = 0; d < 10; d++) {
    $("bars").insertAdjacentHTML("beforeend",
      `<span>${d}</span><div class="bar" id="bar-${d}"><span style="width:0%"></span></div><span id="p-${d}">–</span>`);
  }
}

function showBars(answer) {
  for (let d = 0; d < 10; d++) {
    const p = answer ? answer.probabilities[d] : 0;
    $(`bar-${d}`).firstElementChild.style.width = `${(p * 100).toFixed(1)}%`;
    $(`bar-${d}`).classList.toggle("top", answer !== null && d === answer.answer);
    $(`p-${d}`).textContent = answer ? `${(p * 100).toFixed(1)}%` : "–";
  }
  $("answer").textContent = answer ? answer.answer : "–";
  $("confidence").textContent = answer ? `(${(answer.confidence * 100).toFixed(1)}%)` : "";
}

function showSeen(field) {
  const image = seen.createImageData(SIDE, SIDE);
  for (let i = 0; i < SIDE * SIDE; i++) {
    const v = Math.round(field[i] * 255);
    image.data.set([v, v, v, 255], i * 4);
  }
  createImageBitmap(image).then((bitmap) => {
    seen.imageSmoothingEnabled = false;
    seen.drawImage(bitmap, 0, 0, 140, 140);
  });
}

// One request at a time; a drawing that changed meanwhile is sent once the answer is in.
async function classifyDrawing() {
  if (pending) { again = true; return; }
  pending = true;
  const pixels = ctx.getImageData(0, 0, pad.width, pad.height).data;
  const gray = new Float32Array(pad.width * pad.height);
  for (let i = 0; i < gray.length; i++) gray[i] = pixels[i * 4] / 255;
  const field = prepare(gray, pad.width, pad.height);
  showSeen(field);
  window.digitlab.prepared = rows(field);
  try {
    const answer = await api("/api/classify", { image: window.digitlab.prepared });
    showBars(answer);
    window.digitlab.answers += 1;
    if (upAt !== null && !drawing && !again) {
      window.digitlab.latencyMs = performance.now() - upAt;
      upAt = null;
    }
  } catch (error) { showError(error); }
  pending = false;
  if (again) { again = false; classifyDrawing(); }
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

pad.addEventListener("pointerdown", (event) => {
  drawing = true; last = point(event); pad.setPointerCapture(event.pointerId);
  ctx.beginPath(); ctx.arc(last[0], last[1], 9, 0, 2 * Math.PI); ctx.fillStyle = "#fff"; ctx.fill();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const next = point(event);
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 18; ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(next[0], next[1]); ctx.stroke();
  last = next;
  classifyDrawing();  // live, while drawing
});
const lift = () => {
  if (!drawing) return;
  drawing = false; upAt = performance.now(); classifyDrawing();
};
pad.addEventListener("pointerup", lift);
pad.addEventListener("pointercancel", lift);
$("clear").addEventListener("click", clearPad);

// ------------------------------------------------------------------ the networks

async function loadModels(select) {
  const models = await api("/api/models", select);
  const hints = [models.classifier.hint, models.generator.hint].filter(Boolean);
  $("hint").textContent = hints.join(" ");
  $("hint").hidden = hints.length === 0;
  for (const kind of ["classifier", "generator"]) {
    const picker = $(`${kind}-version`);
    picker.innerHTML = models[kind].versions.map((v) =>
      `<option value="${v.version}"${v.version === models[kind].current ? " selected" : ""}>version ${v.version}`
      + `${v.aliases.length ? " (@" + v.aliases.join(", @") + ")" : ""}</option>`).join("");
  }
  $("model-details").textContent = ["classifier", "generator"].map((kind) => {
    const v = models[kind].versions.find((v) => v.version === models[kind].current);
    if (!v) return `${kind}: none registered`;
    const pairs = (o) => Object.entries(o).map(([k, x]) => `${k}=${x}`).join(", ");
    return `${kind} version ${v.version}: run ${v.run_id.slice(0, 8)} (commit ${(v.tags["git.commit"] || "?").slice(0, 7)}, `
      + `${v.tags["dvc.exp"] || "?"})\n  params: ${pairs(v.params)}\n  metrics: ${pairs(v.metrics)}`;
  }).join("\n");
  const digit = $("digit");
  digit.disabled = !models.generator.conditional;
  $("ten").disabled = !models.generator.conditional;
  digit.title = $("ten").title = models.generator.hint || "";  // why they are off
  if (digit.options.length === 1) {
    for (let d = 0; d < 10; d++) digit.insertAdjacentHTML("beforeend", `<option value="${d}">${d}</option>`);
  }
  return models;
}

for (const kind of ["classifier", "generator"]) {
  $(`${kind}-version`).addEventListener("change", (event) =>
    loadModels({ [kind]: Number(event.target.value) }).catch(showError));
}

// ------------------------------------------------------------------ the generator

function figures(target, answer, asked) {
  target.innerHTML = answer.images.map((image, i) => {
    const wanted = asked === null ? null : Array.isArray(asked) ? asked[i] : asked;
    const miss = wanted !== null && image.answer !== wanted;
    return `<figure class="${miss ? "miss" : ""}" data-answer="${image.answer}"><img alt="sample ${i}" `
      + `src="data:image/png;base64,${image.png}"><figcaption>${image.answer} (${(image.confidence * 100).toFixed(0)}%)</figcaption></figure>`;
  }).join("");
}

function askedDigit() {
  return $("digit").disabled || $("digit").value === "" ? null : Number($("digit").value);
}

$("make").addEventListener("click", async () => {
  try {
    const digit = askedDigit();
    const answer = await api("/api/generate", { digit, count: Number($("count").value), seed: Number($("seed").value) });
    figures($("samples"), answer, digit);
    $("decent").textContent = `${(answer.decent_share * 100).toFixed(0)}% judged decent (the classifier gives `
      + `${digit === null ? "the digit the generator was trained on" : digit} a probability of at least 0.9)`;
  } catch (error) { showError(error); }
});

$("ten").addEventListener("click", async () => {
  try {
    const answer = await api("/api/digits", { seed: Number($("seed").value) });
    figures($("samples"), answer, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    $("decent").textContent = `one noise vector, seed ${$("seed").value}, asked for each digit`;
  } catch (error) { showError(error); }
});

let frames = null;
$("walk").addEventListener("click", async () => {
  try {
    frames = await api("/api/walk", { digit: askedDigit(), seeds: [Number($("walk-a").value), Number($("walk-b").value)], steps: 16 });
    $("step").value = 0;
    showFrame();
  } catch (error) { showError(error); }
});
function showFrame() {
  if (frames === null) return;
  figures($("walk-frame"), { images: [frames.images[Number($("step").value)]] }, null);
}
$("step").addEventListener("input", showFrame);

makeBars();
clearPad();
loadModels().catch(showError);
