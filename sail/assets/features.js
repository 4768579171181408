
function cfg(){ return D.configs[$('config').selectedIndex]; }
function show(){
  const c = cfg(), i = +$('rank').value - 1, p = c.profiles[i];
  $('rankLabel').textContent = `${i + 1} / ${c.profiles.length}`;
  $('title').textContent = `${c.label} · feature #${p.feature} (rank ${p.rank})`;
  $('description').innerHTML = p.description ? esc(p.description) : '<span class="muted">not described (outside the autointerp selection)</span>';
  $('judge').textContent = p.judge_rank == null ? '' : `judge rank ${p.judge_rank} of 5 (${p.success ? 'success' : 'not recognised'})`;
  $('stats').innerHTML = [['M₁₀', p.M10.toFixed(3)], ['coherence', p.coherence.toFixed(3)], ['specificity', p.specificity.toFixed(3)],
    ['active slices', `${p.n_active} (${(100 * p.frac_active).toFixed(1)} %)`], ['mean activation', p.mean_activation.toFixed(3)]]
    .map(([a, b]) => `<tr><td>${a}</td><td>${b}</td></tr>`).join('');
  const heat = (c.heat || {})[p.feature] || {}, line = (c.outline || {})[p.feature] || {};   // the feature's map layers
  const layer = (u, k) => u ? `<img class="${k}" src="${u}" alt="">` : '';
  const stack = s => `<div class="stack"><img src="${D.thumbs[s]}" alt="${esc(s)}">`
    + `${layer(heat[s], 'heat')}${layer(line[s], 'outline')}</div>`;
  $('thumbs').innerHTML = p.rows.map(([label, items]) => `<div class="sample-label">${esc(label)}</div>` + items.map(([s, a]) =>
    `<figure class="sail-thumb">${stack(s)}<figcaption>act ${a.toFixed(3)}<br>${esc(meta(s))}</figcaption></figure>`)
    .join('')).join('');
  $('grounding').innerHTML = ground(p, c); $('mapnote').textContent = c.note || ''; layers();
  const e = p.hist.edges, x = e.slice(0, -1).map((v, j) => (v + e[j + 1]) / 2);
  Plotly.react('hist', [{type: 'bar', x: x, y: p.hist.counts, marker: {color: 'teal'}, hovertemplate: '%{x:.3f}: %{y} slices<extra></extra>'}],
    {title: {text: 'activations over all slices of the split', font: {size: 13}}, margin: {l: 40, r: 10, t: 30, b: 30}}, {displaylogo: false, responsive: true});
  const comp = p.composition, lab = [], val = [];
  for (const k of ['modality', 'plane', 'sex', 'age']) for (const [v, n] of Object.entries(comp[k])) { lab.push(`${k}: ${v}`); val.push(n / Math.max(comp.n, 1)); }
  for (const [o, f] of comp.organs) { lab.push(o.replace(/_/g, ' ')); val.push(f); }
  Plotly.react('comp', [{type: 'bar', orientation: 'h', y: lab.reverse(), x: val.reverse(), marker: {color: '#ff8c00'}, hovertemplate: '%{y}: %{x:.0%}<extra></extra>'}],
    {title: {text: `top ${comp.n} slices`, font: {size: 13}}, xaxis: {range: [0, 1], tickformat: '.0%'}, margin: {l: 150, r: 10, t: 30, b: 30}}, {displaylogo: false, responsive: true});
}
function ground(p, c){  // the feature's best organ, AP and mass inside (or why none), and its stability badge
  const st = p.stability == null ? '<span class="badge none" id="stability">stability not assessed</span>'
    : `<span class="badge" id="stability" title="reappearance rate over the other seeds">`
      + `reappears in ${(100 * p.stability).toFixed(0)} % of other seeds</span>`;
  const grounded = Object.keys(c.organs || {}).length;
  if (!p.best_organ) return `<span class="muted">${grounded ? 'grounds on no organ' : 'not grounded'}</span>${st}`;
  const mass = p.mass_inside == null ? '' : ` · ${(100 * p.mass_inside).toFixed(0)} % of its map's positive mass `
    + 'inside';
  return `best organ <b id="bestOrgan">${esc(p.best_organ.replace(/_/g, ' '))}</b> `
    + `<span class="outline-key">(outlined)</span> · AP ${p.ap.toFixed(3)}${mass}${st}`;
}
function layers(){  // the map toggle and opacity slider act on every heat layer shown
  const on = $('overlay').checked, o = +$('opacity').value / 100;
  $('opacityLabel').textContent = `${$('opacity').value} %`;
  for (const im of document.querySelectorAll('#thumbs img.heat')) {
    im.style.display = on ? '' : 'none'; im.style.opacity = o;
  }
}
function hitButton(f, ap, m, o, rank){
  const off = rank ? '' : ' disabled title="not among the features on this page"';
  const inside = m == null ? '' : ` · ${(100 * m).toFixed(0)} % inside`;
  return `<button class="hit" data-feature="${f}" data-rank="${rank}"${off}>`
    + `#${f} ${esc(o.replace(/_/g, ' '))} · AP ${ap.toFixed(2)}${inside}</button>`;
}
function findOrgan(){  // the features that ground on an organ (exact name, else every organ containing the text), by AP
  const c = cfg(), idx = c.organs || {}, out = $('organHits');
  const t = $('organ').value.trim().toLowerCase().replace(/ /g, '_');
  if (!t) { out.innerHTML = ''; return; }
  if (!Object.keys(idx).length) {
    out.innerHTML = '<span class="muted">no grounding results for this configuration</span>'; return;
  }
  let names = Object.keys(idx).filter(o => o.toLowerCase() === t);
  if (!names.length) names = Object.keys(idx).filter(o => o.toLowerCase().includes(t));
  const hits = names.flatMap(o => idx[o].map(([f, ap, m]) => [f, ap, m, o]))
    .sort((a, b) => b[1] - a[1]);  // stable: ties keep the index's order (by exact AP)
  if (!hits.length) { out.innerHTML = `<span class="warn">no feature grounds on “${esc(t)}”</span>`; return; }
  const rank = f => c.profiles.findIndex(p => p.feature === f) + 1;
  const which = esc(names.join(', ').replace(/_/g, ' '));
  out.innerHTML = `<span class="muted">features that ground on ${which}, by AP:</span> `
    + hits.map(([f, ap, m, o]) => hitButton(f, ap, m, o, rank(f))).join('');
  for (const b of out.querySelectorAll('button.hit')) b.onclick = () => { $('rank').value = b.dataset.rank; show(); };
  const first = hits.map(h => rank(h[0])).find(r => r > 0);
  if (first) { $('rank').value = first; show(); }
}
function setConfig(){
  const c = cfg(); $('rank').max = c.profiles.length; $('rank').value = 1;
  $('organs').innerHTML = Object.keys(c.organs || {}).map(o => `<option value="${esc(o)}">`).join('');
  $('organHits').innerHTML = ''; show();
}
function find(){
  const t = $('search').value.trim().toLowerCase(); if (!t) { $('note').textContent = ''; return; }
  const ps = cfg().profiles, j = ps.findIndex(p => /^\d+$/.test(t) ? p.feature === +t : (p.description || '').toLowerCase().includes(t));
  $('note').textContent = j < 0 ? `no feature matches “${t}”` : ''; if (j >= 0) { $('rank').value = j + 1; show(); }
}
$('config').innerHTML = D.configs.map((c, i) => `<option value="${i}">${esc(c.label)}</option>`).join('');
$('overlay').onchange = layers; $('opacity').oninput = layers;
$('organ').onchange = findOrgan; $('organ').onkeyup = e => { if (e.key === 'Enter') findOrgan(); };
$('config').onchange = setConfig; $('rank').oninput = show; $('search').onchange = find; $('search').onkeyup = e => { if (e.key === 'Enter') find(); };
$('prev').onclick = () => { $('rank').value = Math.max(1, +$('rank').value - 1); show(); };
$('next').onclick = () => { $('rank').value = Math.min(cfg().profiles.length, +$('rank').value + 1); show(); };
setConfig();
