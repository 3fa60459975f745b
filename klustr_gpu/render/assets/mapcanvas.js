// The app's map: a canvas that draws the pictures of /view/<session>/<seq> itself.
//
// Every change of view redraws the last picture at once, stretched or shifted to the new view,
// and asks the server for the sharp one at the same moment (no level-of-detail timeout); the
// answer is drawn at the canvas's device pixels (devicePixelRatio included). Pictures that a
// newer one has overtaken are dropped. Zoom is bounded by model.limits; a hint says when the
// view holds no points. Clicks, hovers and box / lasso selections go to Python as messages.

const ZOOM_STEP = 1.6;           // one wheel notch (100 px of deltaY)
const TAP_PX = 4;                // a press that moves less than this is a click
const PICK_PX = 10;              // a click or hover finds points this near (CSS px)
const HOVER_MS = 40;             // hover messages at most this often
const MAX_SIDE = 4096;           // the server's largest picture side

function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

// The picture's runs of non-empty pixels (mapview.runs) -> all n pixels as uint32 RGBA.
function unpack(buf, n) {
  const u = new Uint32Array(buf);
  const k = u[0], out = new Uint32Array(n);
  let p = 1 + 2 * k;
  if (u.length < p) return null;
  for (let i = 0; i < k; i++) {
    const start = u[1 + i], len = u[1 + k + i];
    if (start + len > n || p + len > u.length) return null;
    for (let j = 0; j < len; j++) out[start + j] = u[p++];
  }
  return out;
}

export function render({ model }) {
  const root = el('div', 'klustr-map');
  root.tabIndex = -1;
  const pic = el('canvas', 'klustr-pic', root);
  const ovl = el('canvas', 'klustr-overlay', root);
  const tip = el('div', 'klustr-tip', root);
  const hint = el('div', 'klustr-hint', root);
  const bar = el('div', 'klustr-tools', root);
  const tools = {};
  for (const [name, text, title] of [['pan', 'Pan', 'drag to move, wheel to zoom'],
                                     ['box', 'Box', 'drag a box to select'],
                                     ['lasso', 'Lasso', 'draw around points to select']]) {
    const b = el('button', 'klustr-tool', bar);
    b.textContent = text; b.title = title; b.dataset.tool = name;
    b.addEventListener('click', () => { model.tool = name; });
    tools[name] = b;
  }
  const reset = el('button', 'klustr-tool', bar);
  reset.textContent = 'Reset view'; reset.dataset.tool = 'reset';
  reset.addEventListener('click', () => { home(); changed(true); });
  const clear = el('button', 'klustr-tool klustr-clear', bar);
  clear.textContent = 'Clear selection'; clear.dataset.tool = 'clear';
  clear.addEventListener('click', () => model.send_msg({ type: 'clear' }));

  let cssW = 0, cssH = 0, dpr = window.devicePixelRatio || 1;
  let cx = 0, cy = 0, scale = 1;        // view centre (data) and data units per CSS pixel
  let img = null;                       // {bmp, x0, x1, y0, y1, w, h, seq}
  let seq = 0, drawnSeq = 0, inflight = 0, pending = false, lastKey = '', gesture = false;
  let hoverTimer = null, hoverAt = null, press = null, path = null;
  const stats = [];

  // -- the view ------------------------------------------------------------------------------
  function homeBox() { return model.home && model.home.length === 4 ? model.home : [-1, 1, -1, 1]; }
  function extent() { const h = homeBox(); return Math.max(h[1] - h[0], h[3] - h[2]); }
  function home() {
    const h = homeBox();
    cx = (h[0] + h[1]) / 2; cy = (h[2] + h[3]) / 2;
    scale = Math.max((h[1] - h[0]) / Math.max(cssW, 1), (h[3] - h[2]) / Math.max(cssH, 1));
  }
  function clampView() {
    const lim = model.limits && model.limits.length === 2 ? model.limits : [0, Infinity];
    const side = Math.max(cssW, cssH, 1);
    scale = Math.min(Math.max(scale, lim[0] / side), lim[1] / side);
    const h = homeBox(), e = extent();
    cx = Math.min(Math.max(cx, h[0] - e), h[1] + e);
    cy = Math.min(Math.max(cy, h[2] - e), h[3] + e);
  }
  function view() {
    return { x0: cx - scale * cssW / 2, x1: cx + scale * cssW / 2,
             y0: cy - scale * cssH / 2, y1: cy + scale * cssH / 2 };
  }
  function toData(px, py) { const v = view(); return [v.x0 + px * scale, v.y1 - py * scale]; }
  function toPx(x, y) { const v = view(); return [(x - v.x0) / scale, (v.y1 - y) / scale]; }
  function local(e) { const r = root.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }

  // -- drawing ---------------------------------------------------------------------------------
  function draw() {
    const ctx = pic.getContext('2d');
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, pic.width, pic.height);
    if (img) {
      const v = view(), W = pic.width, H = pic.height;
      const sx = W / (v.x1 - v.x0), sy = H / (v.y1 - v.y0);
      const dx = (img.x0 - v.x0) * sx, dw = (img.x1 - img.x0) * sx;
      const dy = (v.y1 - img.y1) * sy, dh = (img.y1 - img.y0) * sy;
      const exact = img.w === W && img.h === H && Math.abs(dw - W) < 0.01 && Math.abs(dh - H) < 0.01
        && Math.abs(dx - Math.round(dx)) < 0.01 && Math.abs(dy - Math.round(dy)) < 0.01;
      ctx.imageSmoothingEnabled = !exact;
      if (exact) ctx.drawImage(img.bmp, Math.round(dx), Math.round(dy));
      else ctx.drawImage(img.bmp, dx, dy, dw, dh);
      root.dataset.sharp = exact && Math.round(dx) === 0 && Math.round(dy) === 0 ? '1' : '0';
    }
    const v = view();
    root.dataset.view = [v.x0, v.x1, v.y0, v.y1].join(',');
    overlay();
  }

  function ring(ctx, x, y, r, colour, width) {
    const [px, py] = toPx(x, y);
    ctx.beginPath(); ctx.arc(px, py, r, 0, 2 * Math.PI);
    ctx.strokeStyle = colour; ctx.lineWidth = width; ctx.stroke();
  }

  function overlay() {
    const ctx = ovl.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    const names = model.annotations || [];
    if (names.length) {
      ctx.font = '600 12px sans-serif'; ctx.textAlign = 'center'; ctx.textBaseline = 'middle';
      ctx.lineWidth = 3; ctx.strokeStyle = 'rgba(255,255,255,0.85)'; ctx.fillStyle = '#222';
      for (const a of names) {
        const [px, py] = toPx(a.x, a.y);
        if (px < -50 || py < -20 || px > cssW + 50 || py > cssH + 20) continue;
        ctx.strokeText(a.text, px, py); ctx.fillText(a.text, px, py);
      }
    }
    const m = model.marker;
    if (m && m.length === 2) ring(ctx, m[0], m[1], 9, '#d62728', 2.5);
    const h = model.hover;
    if (h && h.x !== undefined) ring(ctx, h.x, h.y, 8, '#000', 2);
    if (path && path.length > 1) {
      ctx.beginPath();
      if (path.box) {
        const [a, b] = [path[0], path[path.length - 1]];
        ctx.rect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]));
      } else {
        ctx.moveTo(path[0][0], path[0][1]);
        for (const p of path) ctx.lineTo(p[0], p[1]);
        ctx.closePath();
      }
      ctx.fillStyle = 'rgba(31,119,180,0.12)'; ctx.fill();
      ctx.strokeStyle = '#1f77b4'; ctx.lineWidth = 1.5; ctx.setLineDash([5, 3]); ctx.stroke(); ctx.setLineDash([]);
    }
  }

  function showTip() {
    const h = model.hover;
    if (!h || h.x === undefined) { tip.style.display = 'none'; return; }
    tip.textContent = h.text || '';
    const [px, py] = toPx(h.x, h.y);
    tip.style.display = 'block';
    tip.style.left = Math.min(Math.max(px + 12, 0), Math.max(cssW - tip.offsetWidth - 4, 0)) + 'px';
    tip.style.top = Math.max(py - 30, 0) + 'px';
  }

  function showHint(text) {
    hint.textContent = text || '';
    hint.style.display = text ? 'block' : 'none';
  }
  const EMPTY = 'No points in this view: zoom out or press Reset view.';

  // -- pictures --------------------------------------------------------------------------------
  function requestKey() {
    const v = view();
    return [model.src, model.version, pic.width, pic.height, v.x0, v.x1, v.y0, v.y1].join('|');
  }
  function changed(now) {          // the view moved: ask for the sharp picture, redraw the old one at once
    clampView();
    schedule(now);
    draw(); showTip();
    if (model.hover && model.hover.x !== undefined) { model.hover = {}; }
  }
  function schedule(now) {
    if (!model.src || !pic.width || !pic.height) return;
    if (requestKey() === lastKey) return;
    if (!now && inflight >= 1) { pending = true; return; }   // mid-gesture: one at a time
    fetchPicture();
  }
  async function fetchPicture() {
    const s = ++seq, v = view(), W = pic.width, H = pic.height, key = requestKey();
    lastKey = key; inflight++;
    const t0 = performance.now();
    const q = `x0=${v.x0}&x1=${v.x1}&y0=${v.y0}&y1=${v.y1}&w=${W}&h=${H}`;
    try {
      const r = await fetch(`${model.src}/${s}?${q}`, { cache: 'no-store' });
      if (r.status === 404) { showHint('This map has closed on the server: reload the page.'); return; }
      if (r.status !== 200) return;
      const th = performance.now();
      const buf = await r.arrayBuffer();
      const t1 = performance.now();
      if (s < drawnSeq) return;
      const pixels = unpack(buf, W * H);
      if (!pixels) return;
      const bmp = await createImageBitmap(new ImageData(new Uint8ClampedArray(pixels.buffer), W, H));
      if (s < drawnSeq) { bmp.close(); return; }
      if (img) img.bmp.close();
      drawnSeq = s;
      img = { bmp, x0: v.x0, x1: v.x1, y0: v.y0, y1: v.y1, w: W, h: H, seq: s };
      draw();
      showHint(r.headers.get('X-Klustr-Empty') === '1' ? EMPTY : '');
      const t2 = performance.now();
      root.dataset.drawn = String(s);
      root.dataset.image = `${W}x${H}`;
      stats.push({ seq: s, t0, t_drawn: t2, fetch_ms: t1 - t0, headers_ms: th - t0, body_ms: t1 - th,
                   paint_ms: t2 - t1, bytes: buf.byteLength, server: r.headers.get('Server-Timing') || '' });
      if (stats.length > 500) stats.shift();
    } catch (err) {
      showHint('The server does not answer: is klustr serve still running?');
      console.warn('klustr map: picture failed', err);
    } finally {
      inflight--;
      if (pending && inflight < 1) { pending = false; schedule(!gesture); }
    }
  }
  root.klustrStats = stats;

  // -- size ------------------------------------------------------------------------------------
  function resize() {
    const w = root.clientWidth, h = root.clientHeight;
    dpr = window.devicePixelRatio || 1;
    if (!w || !h) return;
    const first = !cssW;
    cssW = w; cssH = h;
    let W = Math.round(w * dpr), H = Math.round(h * dpr);
    const f = Math.min(1, MAX_SIDE / Math.max(W, H));
    W = Math.max(1, Math.floor(W * f)); H = Math.max(1, Math.floor(H * f));
    for (const c of [pic, ovl]) { c.width = W; c.height = H; }
    if (first) home();
    changed(true);
  }
  new ResizeObserver(resize).observe(root);
  window.addEventListener('resize', resize);

  // -- zoom and pan ----------------------------------------------------------------------------
  root.addEventListener('wheel', (e) => {
    e.preventDefault();
    const d = e.deltaY * (e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 300 : 1);
    if (!d) return;
    const [px, py] = local(e);
    const [x, y] = toData(px, py);
    scale *= Math.pow(ZOOM_STEP, Math.max(-3, Math.min(3, d / 100)));
    clampView();
    cx = x - (px - cssW / 2) * scale;      // keep the point under the cursor where it is
    cy = y + (py - cssH / 2) * scale;
    changed(true);
  }, { passive: false });

  root.addEventListener('pointerdown', (e) => {
    if (e.button !== 0 || e.target !== pic) return;      // the tool buttons are not the map
    root.setPointerCapture(e.pointerId);
    const p = local(e);
    press = { p, start: p, cx, cy, moved: false, tool: model.tool || 'pan' };
    if (press.tool !== 'pan') { path = [p]; path.box = press.tool === 'box'; }
    gesture = true;
  });
  root.addEventListener('pointermove', (e) => {
    const p = local(e);
    if (!press) { hoverSoon(p); return; }
    const dx = p[0] - press.start[0], dy = p[1] - press.start[1];
    if (!press.moved && Math.hypot(dx, dy) < TAP_PX) return;
    press.moved = true;
    if (press.tool === 'pan') {
      // whole device pixels: the shifted picture stays pixel-aligned
      cx = press.cx - Math.round(dx * dpr) / dpr * scale;
      cy = press.cy + Math.round(dy * dpr) / dpr * scale;
      changed(false);
    } else {
      path.push(p); overlay();
    }
  });
  function release(e) {
    if (!press) return;
    const p = local(e), was = press;
    press = null; gesture = false;
    if (!was.moved) {
      path = null;
      const [x, y] = toData(p[0], p[1]);
      model.send_msg({ type: 'tap', x, y, r: PICK_PX * scale });
      return;
    }
    if (was.tool === 'pan') { changed(true); return; }
    const pts = path.map(q => toData(q[0], q[1]));
    path = null; overlay();
    if (was.tool === 'box') {
      const [a, b] = [pts[0], pts[pts.length - 1]];
      model.send_msg({ type: 'box', x0: Math.min(a[0], b[0]), x1: Math.max(a[0], b[0]),
                       y0: Math.min(a[1], b[1]), y1: Math.max(a[1], b[1]) });
    } else if (pts.length >= 3) {
      model.send_msg({ type: 'lasso', xs: pts.map(q => q[0]), ys: pts.map(q => q[1]) });
    }
  }
  root.addEventListener('pointerup', release);
  root.addEventListener('pointercancel', release);
  root.addEventListener('pointerleave', () => {
    if (press) return;
    clearTimeout(hoverTimer); hoverAt = null;
    if (model.hover && model.hover.x !== undefined) model.hover = {};
  });
  function hoverSoon(p) {
    const first = hoverAt === null;
    hoverAt = p;
    if (!first) return;
    hoverTimer = setTimeout(() => {
      const q = hoverAt; hoverAt = null;
      if (!q) return;
      const [x, y] = toData(q[0], q[1]);
      model.send_msg({ type: 'hover', x, y, r: PICK_PX * scale });
    }, HOVER_MS);
  }

  // -- Python's side -----------------------------------------------------------------------------
  function tool() {
    for (const [name, b] of Object.entries(tools)) b.classList.toggle('active', (model.tool || 'pan') === name);
    root.style.cursor = (model.tool || 'pan') === 'pan' ? 'grab' : 'crosshair';
  }
  model.on('tool', tool);
  model.on('version', () => schedule(true));
  model.on('src', () => schedule(true));
  model.on('home', () => { home(); changed(true); });
  model.on('limits', () => changed(true));
  model.on('hover', () => { overlay(); showTip(); });
  model.on('marker', overlay);
  model.on('annotations', overlay);
  model.on('msg:custom', (msg) => {
    if (msg.type === 'goto') {          // centre on a point, keeping the zoom
      cx = msg.x; cy = msg.y; changed(true);
    }
  });
  tool();
  return root;
}
