
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
  $('thumbs').innerHTML = p.rows.map(([label, items]) => `<div class="sample-label">${esc(label)}</div>` + items.map(([s, a]) =>
    `<figure class="sail-thumb"><img src="${D.thumbs[s]}" alt="${esc(s)}"><figcaption>act ${a.toFixed(3)}<br>${esc(meta(s))}</figcaption></figure>`).join('')).join('');
  const e = p.hist.edges, x = e.slice(0, -1).map((v, j) => (v + e[j + 1]) / 2);
  Plotly.react('hist', [{type: 'bar', x: x, y: p.hist.counts, marker: {color: 'teal'}, hovertemplate: '%{x:.3f}: %{y} slices<extra></extra>'}],
    {title: {text: 'activations over all slices of the split', font: {size: 13}}, margin: {l: 40, r: 10, t: 30, b: 30}}, {displaylogo: false, responsive: true});
  const comp = p.composition, lab = [], val = [];
  for (const k of ['modality', 'plane', 'sex', 'age']) for (const [v, n] of Object.entries(comp[k])) { lab.push(`${k}: ${v}`); val.push(n / Math.max(comp.n, 1)); }
  for (const [o, f] of comp.organs) { lab.push(o.replace(/_/g, ' ')); val.push(f); }
  Plotly.react('comp', [{type: 'bar', orientation: 'h', y: lab.reverse(), x: val.reverse(), marker: {color: '#ff8c00'}, hovertemplate: '%{y}: %{x:.0%}<extra></extra>'}],
    {title: {text: `top ${comp.n} slices`, font: {size: 13}}, xaxis: {range: [0, 1], tickformat: '.0%'}, margin: {l: 150, r: 10, t: 30, b: 30}}, {displaylogo: false, responsive: true});
}
function setConfig(){ const c = cfg(); $('rank').max = c.profiles.length; $('rank').value = 1; show(); }
function find(){
  const t = $('search').value.trim().toLowerCase(); if (!t) { $('note').textContent = ''; return; }
  const ps = cfg().profiles, j = ps.findIndex(p => /^\d+$/.test(t) ? p.feature === +t : (p.description || '').toLowerCase().includes(t));
  $('note').textContent = j < 0 ? `no feature matches “${t}”` : ''; if (j >= 0) { $('rank').value = j + 1; show(); }
}
$('config').innerHTML = D.configs.map((c, i) => `<option value="${i}">${esc(c.label)}</option>`).join('');
$('config').onchange = setConfig; $('rank').oninput = show; $('search').onchange = find; $('search').onkeyup = e => { if (e.key === 'Enter') find(); };
$('prev').onclick = () => { $('rank').value = Math.max(1, +$('rank').value - 1); show(); };
$('next').onclick = () => { $('rank').value = Math.min(cfg().profiles.length, +$('rank').value + 1); show(); };
setConfig();
