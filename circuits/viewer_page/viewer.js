// mechintro's attribution-graph viewer: draws a graph JSON written by circuits.viewer (the
// format of circuit-tracer's frontend) as plain SVG, with no library and no request beyond the
// server it came from. Layers run left to right (inputs, blocks, logits); inside a layer the
// nodes are ordered by role, then by cumulative influence (most influential first). The graph's
// supernodes (qParams.supernodes: gates, evidence carriers) are drawn as boxes from the start.
// A click on a node shows its numbers, its strongest links and, for a transcoder feature, the
// top-activating examples of its feature file.
'use strict';

(function () {
  const NS = 'http://www.w3.org/2000/svg';
  const ROLE_COLOURS = {
    concept: '#9467bd', carrier: '#ff7f0e', gate: '#d62728',
    other: '#7f7f7f', error: '#bcbd22', logit: '#2ca02c',
  };
  const ROLE_ORDER = ['concept', 'carrier', 'gate', 'other', 'error', 'logit'];
  const GROUP_COLOURS = ['#d62728', '#ff7f0e', '#1f77b4', '#9467bd', '#8c564b'];
  const POS = '#1f77b4';
  const NEG = '#d62728';
  const state = { data: null, byId: new Map(), groupOf: new Map(), selected: null, threshold: 1 };

  function el(tag, attrs = {}, text = null) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== null) e.textContent = text;
    return e;
  }

  function svgEl(tag, attrs = {}) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  }

  async function getJSON(url) {
    const response = await fetch(url, { cache: 'no-store' });
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  function fmt(x, digits = 3) {
    return typeof x === 'number' && isFinite(x) ? x.toPrecision(digits) : '–';
  }

  function cantorUnpair(z) {
    const w = Math.floor((Math.sqrt(8 * z + 1) - 1) / 2);
    const y = z - (w * w + w) / 2;
    return [w - y, y];
  }

  function roleOf(node) {
    if (node.mechintro && node.mechintro.role) return node.mechintro.role;
    const group = state.groupOf.get(node.node_id);
    if (group === 'gates') return 'gate';
    if (group === 'evidence carriers') return 'carrier';
    if (node.feature_type === 'logit') return 'logit';
    if (node.feature_type.includes('error')) return 'error';
    if (node.feature_type === 'steering vector' || node.feature_type === 'embedding') return 'concept';
    return 'other';
  }

  function stream(node) {
    return node.layer === 'E' ? 0 : Number(node.layer) + 1;
  }

  function shortLabel(node) {
    if (node.feature_type === 'cross layer transcoder') {
      const [, index] = cantorUnpair(node.feature);
      const last = state.data.metadata.prompt_tokens.length - 1;
      return node.ctx_idx === last ? `#${index}` : `#${index} @${node.ctx_idx}`;
    }
    if (node.feature_type === 'logit') return (node.clerp.split('"')[1] || 'logit');
    if (node.mechintro && node.mechintro.label) return node.mechintro.label;
    return node.feature_type;
  }

  function isShown(node) {
    const q = state.data.qParams || {};
    const pinned = (q.pinnedIds || []).includes(node.node_id);
    const always = ['logit', 'embedding', 'steering vector'].includes(node.feature_type);
    return always || pinned || node.influence === null || node.influence <= state.threshold + 1e-9;
  }

  function layout(nodes, width, height) {
    const streams = [...new Set(nodes.map(stream))].sort((a, b) => a - b);
    const pad = { left: 60, right: 60, top: 40, bottom: 40 };
    const xOf = new Map(streams.map((s, i) => [s, streams.length === 1
      ? width / 2
      : pad.left + (i * (width - pad.left - pad.right)) / (streams.length - 1)]));
    const pos = new Map();
    for (const s of streams) {
      const column = nodes.filter((n) => stream(n) === s).sort((a, b) =>
        ROLE_ORDER.indexOf(roleOf(a)) - ROLE_ORDER.indexOf(roleOf(b))
        || (a.influence ?? 1) - (b.influence ?? 1));
      // a gap between groups, so that each group's box and label stand apart
      const group = (n) => state.groupOf.get(n.node_id) || roleOf(n);
      const gaps = column.map((n, k) => (k > 0 && group(n) !== group(column[k - 1]) ? 1 : 0));
      const slots = column.length + 1.5 * gaps.reduce((a, b) => a + b, 0);
      const step = (height - pad.top - pad.bottom) / Math.max(1, slots);
      let y = pad.top + step / 2;
      column.forEach((n, k) => {
        y += 1.5 * step * gaps[k];
        pos.set(n.node_id, [xOf.get(s), y]);
        y += step;
      });
    }
    return { pos, streams, xOf, pad };
  }

  function draw() {
    const data = state.data;
    const svg = document.getElementById('graph');
    const width = Math.max(600, svg.clientWidth || 900);
    const height = Math.max(400, svg.clientHeight || 640);
    svg.replaceChildren();
    svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    const nodes = data.nodes.filter(isShown);
    const { pos, streams, xOf } = layout(nodes, width, height);
    const links = data.links.filter((l) => pos.has(l.source) && pos.has(l.target));
    const top = Math.max(1e-12, ...links.map((l) => Math.abs(l.weight)));

    const axis = svgEl('g', { class: 'axis' });
    for (const s of streams) {
      const t = svgEl('text', { x: xOf.get(s), y: height - 12, 'text-anchor': 'middle' });
      const sample = nodes.find((n) => stream(n) === s);
      t.textContent = sample.feature_type === 'logit' ? 'logit'
        : sample.layer === 'E' ? 'input' : `L${sample.layer}`;
      axis.appendChild(t);
    }
    svg.appendChild(axis);

    const boxes = svgEl('g', { class: 'groups' });
    (data.qParams.supernodes || []).forEach((group, g) => {
      const [label, ...members] = group;
      const colour = GROUP_COLOURS[g % GROUP_COLOURS.length];
      const shown = members.filter((m) => pos.has(m));
      for (const s of streams) {
        const ys = shown.filter((m) => stream(state.byId.get(m)) === s).map((m) => pos.get(m)[1]);
        if (!ys.length) continue;
        const x = xOf.get(s);
        const y0 = Math.min(...ys) - 12;
        const y1 = Math.max(...ys) + 12;
        boxes.appendChild(svgEl('rect', {
          class: 'group-box', 'data-group': label, x: x - 34, y: y0, width: 68,
          height: y1 - y0, rx: 8, fill: colour, stroke: colour,
        }));
        const t = svgEl('text', { class: 'group-label', x: x - 32, y: y0 - 3, fill: colour });
        t.textContent = `${label} (${shown.length})`;
        boxes.appendChild(t);
      }
    });
    svg.appendChild(boxes);

    const linkLayer = svgEl('g', { class: 'links' });
    for (const l of [...links].sort((a, b) => Math.abs(a.weight) - Math.abs(b.weight))) {
      const [x1, y1] = pos.get(l.source);
      const [x2, y2] = pos.get(l.target);
      const dx = (x2 - x1) / 2;
      const share = Math.abs(l.weight) / top;
      const path = svgEl('path', {
        class: 'link', d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`,
        stroke: l.weight >= 0 ? POS : NEG, 'stroke-width': 0.5 + 3.5 * share,
        'stroke-opacity': 0.2 + 0.6 * share, 'data-source': l.source, 'data-target': l.target,
      });
      linkLayer.appendChild(path);
    }
    svg.appendChild(linkLayer);

    const nodeLayer = svgEl('g', { class: 'nodes' });
    for (const n of nodes) {
      const [x, y] = pos.get(n.node_id);
      const role = roleOf(n);
      const g = svgEl('g', {
        class: 'node', 'data-node-id': n.node_id, 'data-role': role,
        transform: `translate(${x},${y})`, tabindex: 0,
      });
      const fill = ROLE_COLOURS[role] || ROLE_COLOURS.other;
      if (n.feature_type === 'cross layer transcoder') {
        g.appendChild(svgEl('circle', { r: 7, fill }));
      } else if (n.feature_type.includes('error')) {
        g.appendChild(svgEl('rect', { x: -6, y: -6, width: 12, height: 12, fill, transform: 'rotate(45)' }));
      } else {
        g.appendChild(svgEl('rect', { x: -8, y: -8, width: 16, height: 16, fill }));
      }
      const label = svgEl('text', { x: 11, y: 4 });
      label.textContent = shortLabel(n);
      g.appendChild(label);
      const title = svgEl('title');
      title.textContent = n.clerp;
      g.appendChild(title);
      g.addEventListener('click', () => select(n.node_id));
      g.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') select(n.node_id); });
      nodeLayer.appendChild(g);
    }
    svg.appendChild(nodeLayer);
    highlight();
  }

  function highlight() {
    const id = state.selected;
    for (const p of document.querySelectorAll('#graph .link')) {
      const touches = p.dataset.source === id || p.dataset.target === id;
      p.classList.toggle('faded', id !== null && !touches);
    }
    for (const g of document.querySelectorAll('#graph .node')) {
      g.classList.toggle('selected', g.dataset.nodeId === id);
    }
  }

  function legend() {
    const box = document.getElementById('legend');
    box.replaceChildren();
    for (const role of ROLE_ORDER) {
      if (!state.data.nodes.some((n) => roleOf(n) === role)) continue;
      const item = el('span', { class: 'legend-item' });
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = ROLE_COLOURS[role];
      item.append(swatch, document.createTextNode(role));
      box.appendChild(item);
    }
    box.appendChild(el('span', { class: 'legend-item' }, 'links: blue +, red −'));
  }

  function linkList(title, links, end) {
    const wrap = el('div');
    wrap.appendChild(el('div', { class: 'section-title' }, title));
    const list = el('ol');
    for (const l of [...links].sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8)) {
      const other = state.byId.get(l[end]);
      const item = el('li');
      const a = el('a', { href: '#' }, other ? other.clerp : l[end]);
      a.addEventListener('click', (ev) => { ev.preventDefault(); select(l[end]); });
      item.append(a, document.createTextNode(` ${fmt(l.weight)}`));
      list.appendChild(item);
    }
    wrap.appendChild(list);
    return wrap;
  }

  function featureUrl(node) {
    const meta = state.data.metadata;
    let folder = null;
    if (meta.scan && meta.scan.startsWith('custom-')) folder = (meta.transcoder_list || [])[Number(node.layer)];
    else if (meta.scan && meta.scan.startsWith('./')) folder = meta.scan;
    return folder ? `${folder}/${node.feature}.json` : null;
  }

  function tokenSpan(text, act, max, peak) {
    const span = el('span', { class: peak ? 'tok peak' : 'tok' }, text);
    if (act > 0) span.style.background = `rgba(255, 127, 14, ${Math.min(1, act / (max || 1)).toFixed(3)})`;
    span.title = fmt(act);
    return span;
  }

  async function showExamples(node, box) {
    const url = featureUrl(node);
    if (!url) {
      box.appendChild(el('p', { class: 'hint' }, 'This graph names no local feature data.'));
      return;
    }
    let feature;
    try {
      feature = await getJSON(url);
    } catch (err) {
      // to_viewer_json(..., features=...) writes them; the demo does for its graph's features
      box.appendChild(el('p', { class: 'hint' }, `No examples were written for this feature (${err.message}).`));
      return;
    }
    if (state.selected !== node.node_id) return;
    const examples = el('div', { class: 'examples', 'data-feature': String(node.feature) });
    examples.appendChild(el('div', { class: 'section-title' },
      `${feature.transcoder_id} #${feature.index} · fires on ${fmt(100 * feature.activation_frequency)}% of tokens · max ${fmt(feature.act_max)}`));
    const logits = el('div', { class: 'logits' });
    for (const [name, tokens] of [['promotes', feature.top_logits], ['suppresses', feature.bottom_logits]]) {
      if (!tokens || !tokens.length) continue;
      const row = el('div', {}, `${name}: `);
      for (const t of tokens) row.appendChild(el('span', { class: 'tok' }, t));
      logits.appendChild(row);
    }
    examples.appendChild(logits);
    for (const section of feature.examples_quantiles) {
      examples.appendChild(el('div', { class: 'section-title' }, section.quantile_name));
      if (!section.examples.length) examples.appendChild(el('div', { class: 'hint' }, 'never fires here'));
      for (const ex of section.examples) {
        const line = el('div', { class: 'example' });
        ex.tokens.forEach((t, i) => line.appendChild(
          tokenSpan(t, ex.tokens_acts_list[i], feature.act_max, i === ex.train_token_ind)));
        line.appendChild(el('span', { class: 'hint' }, `  ${fmt(ex.tokens_acts_list[ex.train_token_ind])}`));
        examples.appendChild(line);
      }
    }
    box.appendChild(examples);
  }

  function select(id) {
    state.selected = id;
    highlight();
    const node = state.byId.get(id);
    const box = document.getElementById('detail');
    box.replaceChildren();
    if (!node) return;
    box.appendChild(el('h2', {}, node.clerp));
    const tokens = state.data.metadata.prompt_tokens;
    const ours = node.mechintro || {};
    const facts = [
      ['node', node.node_id],
      ['role', roleOf(node)],
      ['layer', node.layer],
      ['at token', `${node.ctx_idx} ${JSON.stringify(tokens[node.ctx_idx] ?? '')}`],
      ['activation', fmt(node.activation)],
      ['cumulative influence', fmt(node.influence)],
      ['attribution to the root', fmt(ours.influence)],
    ];
    if (node.feature_type === 'logit') facts.push(['token id', node.feature], ['probability', fmt(node.token_prob)]);
    const table = el('table', { class: 'facts' });
    for (const [k, v] of facts) {
      const row = el('tr');
      row.append(el('td', {}, k), el('td', {}, String(v)));
      table.appendChild(row);
    }
    box.appendChild(table);
    const links = state.data.links;
    box.appendChild(linkList('strongest inputs', links.filter((l) => l.target === id), 'source'));
    box.appendChild(linkList('strongest outputs', links.filter((l) => l.source === id), 'target'));
    if (node.feature_type === 'cross layer transcoder') showExamples(node, box);
  }

  async function load(slug) {
    const data = await getJSON(`./graph_data/${encodeURIComponent(slug)}.json`);
    state.data = data;
    state.byId = new Map(data.nodes.map((n) => [n.node_id, n]));
    state.groupOf = new Map();
    for (const [label, ...members] of data.qParams.supernodes || []) {
      for (const m of members) state.groupOf.set(m, label);
    }
    const prompt = document.getElementById('prompt');
    prompt.textContent = data.metadata.prompt;
    const root = data.nodes.find((n) => n.is_target_logit);
    const target = (data.metadata.mechintro || {}).root;
    document.querySelector('h1').textContent = `${slug}` + (target ? ` · root: ${target}` : '');
    legend();
    draw();
    select(data.qParams.clickedId || (root && root.node_id) || null);
    document.body.dataset.ready = 'true';
  }

  async function init() {
    const status = document.getElementById('status');
    try {
      const { graphs } = await getJSON('./data/graph-metadata.json');
      if (!graphs.length) throw new Error('graph-metadata.json lists no graph');
      const wanted = new URLSearchParams(location.search).get('slug');
      const slug = graphs.some((g) => g.slug === wanted) ? wanted : graphs[0].slug;
      const select = document.getElementById('slug');
      for (const g of graphs) select.appendChild(el('option', { value: g.slug }, g.slug));
      select.value = slug;
      select.addEventListener('change', () => load(select.value));
      const slider = document.getElementById('threshold');
      slider.addEventListener('input', () => {
        state.threshold = Number(slider.value);
        document.getElementById('threshold-value').textContent = state.threshold.toFixed(2);
        draw();
      });
      await load(slug);
    } catch (err) {
      status.textContent = `could not load the graph: ${err.message}`;
      document.body.dataset.error = err.message;
    }
  }

  window.addEventListener('DOMContentLoaded', init);
})();
