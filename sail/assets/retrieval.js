
const fig = (s, text) => `<figure class="sail-thumb"><img src="${D.thumbs[s]}" alt="${esc(s)}"><figcaption>${text}<br>${esc(meta(s))}</figcaption></figure>`;
function row(name, hits){
  if (!hits || !hits.length) return `<h2>${name}</h2><p class="muted">nothing retrieved</p>`;
  const q = hits.reduce((a, h) => a + h[2], 0) / hits.length;
  return `<h2>${name} <span class="muted">(mean dense cosine ${q.toFixed(3)})</span></h2>` + hits.map(([s, sim, cos]) => fig(s, `sim ${sim.toFixed(3)} · dense ${cos.toFixed(3)}`)).join('');
}
function show(){
  const c = D.configs[$('config').selectedIndex], r = c.refs[+$('ref').value - 1], k = $('k').value, x = r.k[k];
  $('refLabel').textContent = `${+$('ref').value} / ${c.refs.length}`;
  $('reference').innerHTML = fig(r.slice_id, 'reference');
  $('fpnote').textContent = x.fp.length < +k ? `only ${x.fp.length} active features: k_eff = ${x.fp.length}` : '';
  Plotly.react('fp', [{type: 'bar', x: x.fp.map(f => '#' + f[0]), y: x.fp.map(f => f[1]), marker: {color: 'teal'}, hovertemplate: 'feature %{x}: %{y:.3f}<extra></extra>'}],
    {title: {text: `sparse fingerprint, k = ${k}`, font: {size: 13}}, margin: {l: 40, r: 10, t: 30, b: 40}, xaxis: {type: 'category'}}, {displaylogo: false, responsive: true});
  $('hits').innerHTML = row('sparse fingerprint', x.sparse) + row(`dense fingerprint (top ${k} dimensions)`, x.dense_fp) + row('dense embedding (upper bound)', r.dense);
}
function setConfig(){ const c = D.configs[$('config').selectedIndex]; $('ref').max = c.refs.length; $('ref').value = 1; show(); }
$('config').innerHTML = D.configs.map((c, i) => `<option value="${i}">${esc(c.label)}</option>`).join('');
$('k').innerHTML = D.k.map(k => `<option value="${k}">${k}</option>`).join(''); $('k').value = D.k.includes(5) ? '5' : String(D.k[0]);
$('config').onchange = setConfig; $('ref').oninput = show; $('k').onchange = show;
setConfig();
