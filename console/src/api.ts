// The typed client of the public API. Every type comes from
// generated/openapi.ts, which contrib/build-console generates from
// proto/openapi.yaml: a renamed field or a removed route breaks `tsc`, not
// the console's users. The API key lives in sessionStorage (this tab only)
// and goes out as `Authorization: Bearer`, never in a URL.
import type { components, paths } from "./generated/openapi";

type Schemas = components["schemas"];
export type Job = Schemas["Job"];
export type JobSummary = Schemas["JobSummary"];
export type JobPage = Schemas["JobPage"];
export type Stage = Schemas["Stage"];
export type Task = Schemas["Task"];
export type TaskAttempt = Schemas["TaskAttempt"];
export type TaskArtifacts = Schemas["TaskArtifacts"];
export type ArtifactFile = Schemas["ArtifactFile"];
export type ErrorInfo = Schemas["ErrorInfo"];
export type Problem = Schemas["Problem"];
export type Pipeline = Schemas["Pipeline"];
export type JobStatus = Schemas["JobStatus"];
export type TaskStatus = Schemas["TaskStatus"];
export type JobCreate = Schemas["JobCreate"];
export type JobRetry = Schemas["JobRetry"];
export type JobInput = Schemas["JobInput"];

type Json200<P extends keyof paths, M extends "get" | "post" | "delete"> = paths[P][M] extends {
	responses: { 200: { content: { "application/json": infer T } } };
}
	? T
	: never;
type Json2xx<P extends keyof paths, M extends "get" | "post" | "delete", C extends number> = paths[P][M] extends {
	responses: { [K in C]: { content: { "application/json": infer T } } };
}
	? T
	: never;
export type ListQuery = NonNullable<paths["/v1/jobs"]["get"]["parameters"]["query"]>;

const KEY_STORE = "stageline.api_key";

export function savedKey(): string | null {
	return sessionStorage.getItem(KEY_STORE);
}
export function saveKey(key: string): void {
	sessionStorage.setItem(KEY_STORE, key);
}
export function forgetKey(): void {
	sessionStorage.removeItem(KEY_STORE);
}

/** An answer other than 2xx, with its problem+json body when it had one. */
export class ApiError extends Error {
	constructor(
		readonly status: number,
		readonly problem: Problem | null,
		message: string,
	) {
		super(message);
	}
	/** What to show a person: the problem's title and detail, and the field errors. */
	describe(): string {
		const p = this.problem;
		if (this.status === 401)
			return "The API key was not accepted (401 Unauthorized): it is unknown, mistyped, revoked or expired. Enter a valid key.";
		if (!p) return this.message;
		let s = `${p.title}${p.detail ? `: ${p.detail}` : ""} (${p.status})`;
		if (p.errors) s += " — " + p.errors.map((e) => `${e.field}: ${e.message}`).join("; ");
		if (p.missing_scopes) s += ` — missing scope: ${p.missing_scopes.join(", ")}`;
		if (p.stages) s += ` — stages: ${p.stages.join(", ")}`;
		return s;
	}
}

/** Called on any 401 so the page can ask for another key. */
let onUnauthorized: (e: ApiError) => void = () => {};
export function setUnauthorizedHandler(fn: (e: ApiError) => void): void {
	onUnauthorized = fn;
}

export function authHeaders(extra?: Record<string, string>): Record<string, string> {
	const h: Record<string, string> = { ...(extra ?? {}) };
	const key = savedKey();
	if (key) h["Authorization"] = `Bearer ${key}`;
	return h;
}

export async function toApiError(res: Response): Promise<ApiError> {
	let problem: Problem | null = null;
	const type = res.headers.get("Content-Type") ?? "";
	if (type.startsWith("application/problem+json")) {
		try {
			problem = (await res.json()) as Problem;
		} catch {
			problem = null;
		}
	}
	const e = new ApiError(res.status, problem, `HTTP ${res.status} ${res.statusText}`);
	if (res.status === 401) onUnauthorized(e);
	return e;
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
	const init: RequestInit = { method, headers: authHeaders({ Accept: "application/json" }), cache: "no-store" };
	if (body !== undefined) {
		init.body = JSON.stringify(body);
		(init.headers as Record<string, string>)["Content-Type"] = "application/json";
	}
	const res = await fetch(path, init);
	if (!res.ok) throw await toApiError(res);
	return (await res.json()) as T;
}

const enc = encodeURIComponent;

export function listJobs(q: ListQuery): Promise<Json200<"/v1/jobs", "get">> {
	const params = new URLSearchParams();
	for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null && v !== "") params.set(k, String(v));
	const qs = params.toString();
	return call("GET", `/v1/jobs${qs ? `?${qs}` : ""}`);
}
export function listPipelines(): Promise<Json200<"/v1/pipelines", "get">> {
	return call("GET", "/v1/pipelines");
}
export function getJob(id: string): Promise<Json200<"/v1/jobs/{id}", "get">> {
	return call("GET", `/v1/jobs/${enc(id)}`);
}
export function getJobInput(id: string): Promise<Json200<"/v1/jobs/{id}/input", "get">> {
	return call("GET", `/v1/jobs/${enc(id)}/input`);
}
export function getTask(id: string, taskId: string): Promise<Json200<"/v1/jobs/{id}/tasks/{task_id}", "get">> {
	return call("GET", `/v1/jobs/${enc(id)}/tasks/${enc(taskId)}`);
}
export function getArtifacts(
	id: string,
	taskId: string,
	attempt?: number,
): Promise<Json200<"/v1/jobs/{id}/tasks/{task_id}/artifacts", "get">> {
	const q = attempt ? `?attempt=${attempt}` : "";
	return call("GET", `/v1/jobs/${enc(id)}/tasks/${enc(taskId)}/artifacts${q}`);
}
export function cancelJob(id: string): Promise<Json2xx<"/v1/jobs/{id}", "delete", 202>> {
	return call("DELETE", `/v1/jobs/${enc(id)}`);
}
export function retryJob(id: string, body: JobRetry): Promise<Json2xx<"/v1/jobs/{id}/retry", "post", 202>> {
	return call("POST", `/v1/jobs/${enc(id)}/retry`, body);
}
export function createJob(body: JobCreate): Promise<Json2xx<"/v1/jobs", "post", 201>> {
	return call("POST", "/v1/jobs", body);
}

/** The URL paths of the text and event streams (fetched with the key header by their readers). */
export const streams = {
	jobEvents: (id: string) => `/v1/jobs/${enc(id)}/events`,
	projectEvents: () => "/v1/events",
	jobLog: (id: string) => `/v1/jobs/${enc(id)}/logs?follow=1`,
	taskLog: (id: string, taskId: string) => `/v1/jobs/${enc(id)}/tasks/${enc(taskId)}/logs?follow=1`,
} satisfies Record<string, (...a: string[]) => string>;

// The stream routes must stay in the contract.
type _StreamRoutes = [
	paths["/v1/jobs/{id}/events"]["get"],
	paths["/v1/events"]["get"],
	paths["/v1/jobs/{id}/logs"]["get"],
	paths["/v1/jobs/{id}/tasks/{task_id}/logs"]["get"],
];
export type StreamRoutes = _StreamRoutes;
