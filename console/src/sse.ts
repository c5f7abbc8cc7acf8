// Server-Sent Events over fetch(). EventSource cannot send an
// Authorization header and the daemon takes the key only there (never in
// a URL), so this reads the text/event-stream body itself: the WHATWG
// parsing rules (event, data, id, retry, comments), reconnection after the
// server's `retry:` delay with `Last-Event-ID` set to the last id seen, and
// an explicit stop. A 401/403/404 stops for good (a reconnect cannot fix
// it); anything else — a dropped connection, a 5xx — reconnects.
import { authHeaders, toApiError, type ApiError } from "./api";

export interface SseEvent {
	type: string;
	data: string;
	id: string | null;
}

export type SseState = "connecting" | "open" | "reconnecting" | "closed" | "failed";

export interface SseHandlers {
	onEvent(ev: SseEvent): void;
	onState?(state: SseState, detail?: string): void;
	onFatal?(err: ApiError): void;
}

export class SseClient {
	lastEventId: string | null = null;
	connections = 0;
	private retryMs = 3000;
	private abort: AbortController | null = null;
	private stopped = false;
	private timer: number | undefined;

	constructor(
		private readonly url: string,
		private readonly handlers: SseHandlers,
	) {}

	start(): void {
		this.stopped = false;
		void this.connect();
	}

	/** Ends the stream for good (no reconnect). */
	stop(): void {
		this.stopped = true;
		window.clearTimeout(this.timer);
		this.abort?.abort();
		this.abort = null;
		this.handlers.onState?.("closed");
	}

	private schedule(why: string): void {
		if (this.stopped) return;
		this.handlers.onState?.("reconnecting", why);
		window.clearTimeout(this.timer);
		this.timer = window.setTimeout(() => void this.connect(), this.retryMs);
	}

	private async connect(): Promise<void> {
		if (this.stopped) return;
		const ac = new AbortController();
		this.abort = ac;
		this.handlers.onState?.(this.connections === 0 ? "connecting" : "reconnecting");
		const headers = authHeaders({ Accept: "text/event-stream" });
		if (this.lastEventId !== null) headers["Last-Event-ID"] = this.lastEventId;
		let res: Response;
		try {
			res = await fetch(this.url, { headers, signal: ac.signal, cache: "no-store" });
		} catch (e) {
			if (!ac.signal.aborted) this.schedule(String(e));
			return;
		}
		if (!res.ok || !res.body) {
			const err = await toApiError(res);
			if ([401, 403, 404].includes(res.status)) {
				this.stopped = true;
				this.handlers.onState?.("failed", err.describe());
				this.handlers.onFatal?.(err);
			} else {
				this.schedule(err.describe());
			}
			return;
		}
		this.connections++;
		this.handlers.onState?.("open");
		try {
			await this.read(res.body, ac.signal);
		} catch (e) {
			if (ac.signal.aborted) return;
		}
		if (this.abort === ac) this.abort = null;
		this.schedule("the stream ended");
	}

	private async read(body: ReadableStream<Uint8Array>, signal: AbortSignal): Promise<void> {
		const reader = body.getReader();
		const dec = new TextDecoder();
		signal.addEventListener("abort", () => void reader.cancel().catch(() => {}), { once: true });
		let buf = "";
		let type = "";
		let data: string[] = [];
		let hasData = false;
		let id: string | null = null;
		for (;;) {
			const { value, done } = await reader.read();
			if (done || this.stopped) return;
			buf += dec.decode(value, { stream: true });
			let nl: number;
			while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
				const line = buf.slice(0, nl);
				buf = buf.slice(nl + (buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1));
				if (line === "") {
					if (id !== null) this.lastEventId = id;
					if (hasData) this.handlers.onEvent({ type: type || "message", data: data.join("\n"), id });
					type = "";
					data = [];
					hasData = false;
					id = null;
					if (this.stopped) return;
					continue;
				}
				if (line.startsWith(":")) continue;
				const c = line.indexOf(":");
				const field = c < 0 ? line : line.slice(0, c);
				let val = c < 0 ? "" : line.slice(c + 1);
				if (val.startsWith(" ")) val = val.slice(1);
				if (field === "event") type = val;
				else if (field === "data") {
					data.push(val);
					hasData = true;
				} else if (field === "id" && !val.includes("\0")) id = val;
				else if (field === "retry" && /^\d+$/.test(val)) this.retryMs = Number(val);
			}
		}
	}
}

/** Follows a text endpoint (`?follow=1` logs): appends chunks as they
 * come, and calls done when the response ends. */
export async function followText(
	url: string,
	onChunk: (text: string) => void,
	signal: AbortSignal,
): Promise<{ status: number; error?: ApiError }> {
	let res: Response;
	try {
		res = await fetch(url, { headers: authHeaders({ Accept: "text/plain" }), signal, cache: "no-store" });
	} catch {
		return { status: 0 };
	}
	if (!res.ok || !res.body) return { status: res.status, error: await toApiError(res) };
	const reader = res.body.getReader();
	const dec = new TextDecoder();
	signal.addEventListener("abort", () => void reader.cancel().catch(() => {}), { once: true });
	try {
		for (;;) {
			const { value, done } = await reader.read();
			if (done) break;
			onChunk(dec.decode(value, { stream: true }));
		}
	} catch {
		return { status: 0 };
	}
	return { status: res.status };
}
