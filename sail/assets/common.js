
const D = JSON.parse(document.getElementById('sail-data').textContent);
const $ = id => document.getElementById(id);
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function meta(s){const m = D.meta[s] || {}; return `${(m.modality||'').toUpperCase()} ${m.plane||''} · ${({f:'F',m:'M'})[m.gender]||'?'}${m.age==null?'':' '+Math.round(m.age)}`;}
