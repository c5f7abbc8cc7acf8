// Small DOM helpers: elements are built with h(), text always through
// textContent (never innerHTML), so nothing the API returns can inject
// markup; the CSP forbids inline script and style anyway.

type Attrs = Record<string, string | number | boolean | null | undefined | ((ev: Event) => void)>;
type Child = Node | string | number | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
	tag: K,
	attrs: Attrs = {},
	...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
	const el = document.createElement(tag);
	setAttrs(el, attrs);
	append(el, children);
	return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";
export function s<K extends keyof SVGElementTagNameMap>(
	tag: K,
	attrs: Attrs = {},
	...children: (Child | Child[])[]
): SVGElementTagNameMap[K] {
	const el = document.createElementNS(SVG_NS, tag);
	setAttrs(el, attrs);
	append(el, children);
	return el;
}

function setAttrs(el: Element, attrs: Attrs): void {
	for (const [k, v] of Object.entries(attrs)) {
		if (v === null || v === undefined || v === false) continue;
		if (typeof v === "function") el.addEventListener(k.replace(/^on/, ""), v);
		else el.setAttribute(k, v === true ? "" : String(v));
	}
}

function append(el: Element, children: (Child | Child[])[]): void {
	for (const c of children.flat()) {
		if (c === null || c === undefined || c === false) continue;
		el.append(c instanceof Node ? c : document.createTextNode(String(c)));
	}
}

/** Element.append that skips null, undefined and false (and flattens arrays). */
export function add(el: Element, ...children: (Child | Child[])[]): void {
	append(el, children);
}

export function clear(el: Element): void {
	while (el.firstChild) el.removeChild(el.firstChild);
}

export function fmtMs(ms: number | null | undefined): string {
	if (ms === null || ms === undefined) return "—";
	if (ms < 1000) return `${ms} ms`;
	if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
	const m = Math.floor(ms / 60000);
	return `${m} min ${Math.round((ms % 60000) / 1000)} s`;
}

export function fmtTime(ts: string | null | undefined): string {
	if (!ts) return "—";
	const d = new Date(ts);
	return Number.isNaN(d.getTime()) ? ts : d.toLocaleString(undefined, { hour12: false });
}

export function fmtBytes(n: number | null | undefined): string {
	if (n === null || n === undefined) return "—";
	if (n < 1024) return `${n} B`;
	if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
	return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export function badge(status: string): HTMLSpanElement {
	return h("span", { class: `badge st-${status}` }, status);
}

export function progressBar(value: number, label: string): HTMLDivElement {
	const pct = Math.round(Math.max(0, Math.min(1, value)) * 100);
	const fill = h("div", { class: "fill" });
	fill.style.width = `${pct}%`;
	return h(
		"div",
		{
			class: "progress",
			role: "progressbar",
			"aria-label": label,
			"aria-valuemin": 0,
			"aria-valuemax": 100,
			"aria-valuenow": pct,
		},
		fill,
		h("span", { class: "pct" }, `${pct}%`),
	);
}

/** A collapsible, pretty-printed JSON viewer. */
export function jsonViewer(title: string, value: unknown, open = false): HTMLDetailsElement {
	const text = value === undefined ? "(absent)" : JSON.stringify(value, null, 2);
	return h(
		"details",
		{ class: "json", open },
		h("summary", {}, title),
		h("pre", { tabindex: 0, "aria-label": title }, text),
	);
}
