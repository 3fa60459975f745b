// The colour legend as a filter: one row per category (swatch, name, points shown / all);
// ticking rows shows only those categories, none ticked shows all. No dropdown, nothing to
// close: a click on a row toggles that row and nothing else. Names go in with textContent.

export function render({ model }) {
  const root = document.createElement('div');
  root.className = 'klustr-facets';
  function draw() {
    root.replaceChildren();
    const chosen = new Set(model.value || []);
    for (const o of model.options || []) {
      const row = document.createElement('label');
      row.className = 'klustr-facet' + (o.count ? '' : ' klustr-facet-empty');
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = chosen.has(o.name);
      box.value = o.name;
      box.addEventListener('change', () => {
        const next = new Set(model.value || []);
        if (box.checked) next.add(o.name); else next.delete(o.name);
        model.value = (model.options || []).map(p => p.name).filter(n => next.has(n));
      });
      const sw = document.createElement('span');
      sw.className = 'klustr-swatch';
      sw.style.background = o.colour;
      const name = document.createElement('span');
      name.className = 'klustr-facet-name';
      name.textContent = o.name;
      const n = document.createElement('span');
      n.className = 'klustr-facet-count';
      n.textContent = o.count === o.total ? o.total.toLocaleString('en') :
        `${o.count.toLocaleString('en')} / ${o.total.toLocaleString('en')}`;
      row.append(box, sw, name, n);
      root.appendChild(row);
    }
  }
  model.on('options', draw);
  model.on('value', draw);
  draw();
  return root;
}
