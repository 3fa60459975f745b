// The side panel's sound: what plays now, its similar sounds (each playable and draggable),
// the keys (arrows step through the list, space replays, Enter opens the chosen one) and the
// drag of any element carrying data-drag into a DAW or onto the desktop (Chromium's
// DownloadURL drag data with the served file). Names are written with textContent only.

function el(tag, cls, parent, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

// "mime:name:/audio/<id>" -> the absolute URL and the DownloadURL string (no media fragment).
export function dragData(spec) {
  const a = spec.indexOf(':'), b = spec.indexOf(':', a + 1);
  if (a < 0 || b < 0) return null;
  const url = new URL(spec.slice(b + 1), window.location.href);
  url.hash = '';
  return { url: url.href, download: `${spec.slice(0, a)}:${spec.slice(a + 1, b)}:${url.href}` };
}

function installDrag() {
  if (window.__klustrDrag) return;
  window.__klustrDrag = true;
  // A focusable ancestor (a Tabulator cell) takes the focus on mousedown and Chromium then starts
  // no drag: such a cell gives up its tabindex before the press reaches it.
  document.addEventListener('mousedown', (e) => {
    const node = e.composedPath().find(n => n && n.dataset && n.dataset.drag);
    const cell = node && node.parentElement && node.parentElement.closest('[tabindex]');
    if (cell) cell.removeAttribute('tabindex');
  }, true);
  document.addEventListener('dragstart', (e) => {
    const node = e.composedPath().find(n => n && n.dataset && n.dataset.drag);
    if (!node || !e.dataTransfer) return;
    const d = dragData(node.dataset.drag);
    if (!d) return;
    e.dataTransfer.setData('DownloadURL', d.download);
    e.dataTransfer.setData('text/uri-list', d.url);
    e.dataTransfer.setData('text/plain', d.url);
    e.dataTransfer.effectAllowed = 'copy';
  }, true);
}

function typing(e) {
  const t = e.composedPath()[0];
  if (!t || !t.tagName) return false;
  return ['INPUT', 'TEXTAREA', 'SELECT', 'BUTTON', 'A'].includes(t.tagName) || t.isContentEditable;
}

export function render({ model }) {
  installDrag();
  const root = el('div', 'klustr-sound');
  const now = el('div', 'klustr-now', root);
  const audio = el('audio', 'klustr-audio', root);
  audio.id = 'klustr-player';
  audio.controls = true;
  audio.preload = 'none';
  const opts = el('div', 'klustr-opts', root);
  const modeLabel = el('label', '', opts, 'Similar by ');
  const mode = el('select', 'klustr-mode', modeLabel);
  for (const [v, t] of [['features', 'sound (features)'], ['map', 'position on the map']]) {
    const o = el('option', '', mode, t); o.value = v;
  }
  mode.addEventListener('change', () => { model.mode = mode.value; });
  const hoverLabel = el('label', 'klustr-hoverplay', opts);
  const hoverBox = el('input', '', hoverLabel);
  hoverBox.type = 'checkbox';
  hoverLabel.appendChild(document.createTextNode(' play on hover'));
  hoverBox.addEventListener('change', () => { model.hover_play = hoverBox.checked; });
  const note = el('div', 'klustr-note', root);
  const list = el('ol', 'klustr-neighbours', root);
  el('div', 'klustr-keys', root, '\u2191 \u2193 step through \u00b7 space replays \u00b7 Enter opens');

  let lastNonce = null;

  function play(url) {
    if (!url) return;
    if (audio.getAttribute('src') !== url) audio.setAttribute('src', url);
    else audio.currentTime = 0;
    const p = audio.play();
    if (p && p.catch) p.catch(() => {});
  }

  function describe(parent, item) {
    const name = el('b', 'klustr-name', parent, item.name || '');
    el('span', 'klustr-meta', parent, ` ${item.start > 0 ? '@ ' + item.start.toFixed(2) + ' s ' : ''}\u00b7 ${item.label} \u00b7 ${Number(item.duration).toFixed(2)} s`);
    return name;
  }

  function showNow() {
    const n = model.now || {};
    now.replaceChildren();
    if (!n.url) {
      el('i', 'klustr-message', now, n.message || 'Click a point to play it.');
      audio.removeAttribute('src');
      audio.removeAttribute('data-id');
      if (!audio.paused) audio.pause();
      return;
    }
    const line = el('div', 'klustr-item klustr-current', now);
    line.draggable = true;
    line.dataset.drag = n.drag || '';
    line.title = 'drag into a DAW or onto the desktop';
    const replay = el('button', 'klustr-play', line, '\u25b6');
    replay.title = 'replay (space)';
    replay.addEventListener('click', () => play(n.url));
    describe(line, n);
    audio.dataset.id = n.id || '';
    if (n.play !== undefined && n.play !== lastNonce) {
      lastNonce = n.play;
      if (n.autoplay !== false) play(n.url);
      else if (audio.getAttribute('src') !== n.url) audio.setAttribute('src', n.url);
    }
  }

  function showList() {
    const items = model.items || [];
    list.replaceChildren();
    items.forEach((item, i) => {
      const li = el('li', 'klustr-item', list);
      li.draggable = true;
      li.dataset.drag = item.drag || '';
      li.dataset.index = String(i);
      li.title = 'click to play; drag into a DAW or onto the desktop';
      el('button', 'klustr-play', li, '\u25b6');
      describe(li, item);
      li.addEventListener('click', () => pick(i));
      li.addEventListener('mouseenter', () => { if (model.hover_play) { play(item.url); } });
    });
    mark();
  }

  function mark() {
    list.querySelectorAll('li').forEach((li, i) => li.classList.toggle('klustr-current', i === model.current));
    const cur = list.children[model.current];
    if (cur && cur.scrollIntoView) cur.scrollIntoView({ block: 'nearest' });
  }

  function pick(i) {
    const items = model.items || [];
    if (i < 0 || i >= items.length) return;
    model.current = i;
    play(items[i].url);
    model.send_msg({ type: 'pick', i });
    mark();
  }

  function onKey(e) {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
    const items = model.items || [];
    if (e.key === 'ArrowDown' || e.key === 'ArrowRight') {
      if (!items.length) return;
      pick(Math.min(items.length - 1, (model.current ?? -1) + 1));
    } else if (e.key === 'ArrowUp' || e.key === 'ArrowLeft') {
      if (!items.length) return;
      if ((model.current ?? -1) <= 0) { model.current = -1; mark(); play((model.now || {}).url); model.send_msg({ type: 'pick', i: -1 }); }
      else pick(model.current - 1);
    } else if (e.key === ' ' || e.key === 'Spacebar') {
      const url = audio.getAttribute('src');
      if (!url) return;
      audio.currentTime = 0;
      const p = audio.play(); if (p && p.catch) p.catch(() => {});
    } else if (e.key === 'Enter') {
      if ((model.current ?? -1) < 0) return;
      model.send_msg({ type: 'open', i: model.current });
    } else return;
    e.preventDefault();
  }
  window.addEventListener('keydown', onKey);
  model.on('remove', () => window.removeEventListener('keydown', onKey));

  function showOpts() {
    mode.value = model.mode || 'features';
    hoverBox.checked = !!model.hover_play;
    note.textContent = model.note || '';
  }

  model.on('now', showNow);
  model.on('items', showList);
  model.on('current', mark);
  model.on('mode', showOpts);
  model.on('hover_play', showOpts);
  model.on('note', showOpts);
  model.on('msg:custom', (msg) => {
    if (msg.type === 'download') {       // an export: the text saved as a file
      const blob = new Blob([msg.text], { type: msg.mime || 'text/plain' });
      const a = document.createElement('a');
      a.href = URL.createObjectURL(blob);
      a.download = msg.name;
      document.body.appendChild(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    } else if (msg.type === 'play') {
      play(msg.url);
    }
  });
  showNow(); showList(); showOpts();
  return root;
}
