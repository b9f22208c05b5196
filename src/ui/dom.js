// Building the page's elements. Everything the API answers reaches the page as text
// (text nodes, textContent, attribute values set with setAttribute) — never as HTML — so
// nothing a participant, a client or an error message says can become markup or script.

/**
 * An element. `props`: `class` (a string or a list), `on<event>` handlers, and attributes
 * (set with setAttribute; null/undefined/false leave one out). Children: nodes, or anything
 * else, which becomes a text node (null, undefined and false are skipped; arrays are flattened).
 * @param {string} tag
 * @param {Record<string, unknown>} [props]
 * @param {...unknown} children
 * @returns {HTMLElement}
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') {
      for (const name of Array.isArray(value) ? value : [value]) if (name) el.classList.add(String(name));
    } else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces what `el` holds. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** A class name from a value the API sent (a state, a status): letters, digits and dashes only. */
export const token = (value) => String(value).toLowerCase().replace(/[^a-z0-9-]/g, '-');

/** A coloured badge for a transaction or branch state (`state-committed`, `state-in-doubt`, …). */
export function stateBadge(state, label = state) {
  return h('span', { class: ['state', `state-${token(state)}`] }, label);
}

// ---- time --------------------------------------------------------------------------------

const localTime = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
});

/** "4 s ago", "12 min ago", "in 20 s". */
export function age(ms, now = Date.now()) {
  const seconds = Math.round((now - ms) / 1000);
  const abs = Math.abs(seconds);
  const text = abs < 60 ? `${abs} s` : abs < 3600 ? `${Math.round(abs / 60)} min` : abs < 172800 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86400)} d`;
  return seconds >= 0 ? `${text} ago` : `in ${text}`;
}

/**
 * A timestamp in the browser's local time with its age ("2026-12-02 14:03:07 · 12 s ago"); the
 * age is kept current by refreshAges(). An unparsable or missing value shows as "—".
 */
export function when(iso) {
  const ms = typeof iso === 'string' ? Date.parse(iso) : NaN;
  if (Number.isNaN(ms)) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: iso, title: iso, 'data-ms': ms }, h('span', { class: 'local' }, localTime.format(ms)), ' · ', h('span', { class: 'age' }, age(ms)));
}

/** Brings every age on the page up to date. */
export function refreshAges(now = Date.now()) {
  for (const el of document.querySelectorAll('time[data-ms]')) {
    const ageEl = el.querySelector('.age');
    if (ageEl !== null) ageEl.textContent = age(Number(el.getAttribute('data-ms')), now);
  }
}

// ---- errors ------------------------------------------------------------------------------

/** An API error as the operator reads it: its catalogue code, the HTTP status, the message. */
export function errorLine(err) {
  const code = typeof err?.code === 'string' ? err.code : 'ERROR';
  const status = typeof err?.status === 'number' && err.status > 0 ? ` ${err.status}` : '';
  const message = typeof err?.message === 'string' ? err.message : String(err);
  return h('p', { class: 'error', role: 'alert' }, h('code', { class: 'code' }, code), status === '' ? '' : h('span', { class: 'status' }, status), ' ', message);
}

/** Shows the error in `el` (a panel's error slot), or clears it. */
export function showError(el, err) {
  if (err === undefined || err === null) {
    el.replaceChildren();
    el.hidden = true;
  } else {
    fill(el, errorLine(err));
    el.hidden = false;
  }
}

/** A definition list from [label, value] pairs (pairs whose value is undefined are left out). */
export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(([, value]) => value !== undefined).map(([label, value]) => [h('dt', {}, label), h('dd', {}, value)]));
}

/** 12345 → "12,345"; a fraction with one decimal. */
export function number(value, digits = 0) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return '—';
  return value.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function bytes(value) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let v = value;
  let unit = 0;
  while (v >= 1024 && unit < units.length - 1) {
    v /= 1024;
    unit++;
  }
  return `${number(v, unit === 0 ? 0 : 1)} ${units[unit]}`;
}
