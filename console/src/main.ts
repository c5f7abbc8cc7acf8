// stageline web console: a page per hash route —
//   #/                       jobs (filters, keyset pages, live statuses)
//   #/jobs/<id>              a job: DAG, timeline, stages, events, log
//   #/jobs/<id>/stages/<s>   the same with the stage's drill-down open
// It talks only to the public API and its SSE streams (docs/console.md).
import "./style.css";
import * as api from "./api";
import { ApiError, type Job, type JobSummary, type Stage, type Task, type TaskAttempt } from "./api";
import { add, badge, clear, fmtBytes, fmtMs, fmtTime, h, jsonViewer, progressBar, s } from "./dom";
import { followText, SseClient, type SseEvent, type SseState } from "./sse";

const main = document.getElementById("main") as HTMLElement;
const alerts = document.getElementById("alerts") as HTMLElement;
const statusRegion = document.getElementById("status") as HTMLElement;
const whoami = document.getElementById("whoami") as HTMLElement;
const signout = document.getElementById("signout") as HTMLButtonElement;

const JOB_STATUSES = ["pending", "queued", "running", "completed", "failed", "cancelled"] as const;
const SETTLED_JOB = new Set(["completed", "failed", "cancelled"]);
const SETTLED_TASK = new Set(["completed", "failed", "skipped", "cancelled"]);

/** What the current page must undo when the route changes (streams, timers). */
let disposers: (() => void)[] = [];
function onDispose(fn: () => void): void {
	disposers.push(fn);
}
function disposePage(): void {
	for (const d of disposers.splice(0)) {
		try {
			d();
		} catch {
			/* a page's cleanup must not stop the next page */
		}
	}
}

function announce(msg: string): void {
	statusRegion.textContent = msg;
}

function showError(msg: string): void {
	clear(alerts);
	alerts.append(
		h(
			"div",
			{ class: "alert" },
			h("span", { class: "alert-text" }, msg),
			h("button", { type: "button", class: "link", onclick: () => clear(alerts), "aria-label": "Dismiss" }, "×"),
		),
	);
}

function errorText(e: unknown): string {
	return e instanceof ApiError ? e.describe() : e instanceof Error ? e.message : String(e);
}

function confirmDialog(text: string, okLabel: string): Promise<boolean> {
	const dlg = document.getElementById("confirm") as HTMLDialogElement;
	(document.getElementById("confirm-text") as HTMLElement).textContent = text;
	(document.getElementById("confirm-ok") as HTMLButtonElement).textContent = okLabel;
	dlg.returnValue = "";
	dlg.showModal();
	return new Promise((resolve) => {
		dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
	});
}

// --- the key -----------------------------------------------------------------

let loginMessage = "";

api.setUnauthorizedHandler((e) => {
	api.forgetKey();
	loginMessage = e.describe();
	route();
});

function renderLogin(): void {
	whoami.textContent = "";
	signout.hidden = true;
	const input = h("input", {
		id: "api-key",
		name: "api-key",
		type: "password",
		autocomplete: "off",
		spellcheck: "false",
		"aria-describedby": "key-help",
		required: true,
	});
	const err = h("p", { id: "key-error", class: "error", role: "alert" }, loginMessage);
	const form = h(
		"form",
		{ class: "card login", "aria-labelledby": "login-title" },
		h("h1", { id: "login-title" }, "Sign in with an API key"),
		h("label", { for: "api-key" }, "API key"),
		input,
		h(
			"p",
			{ id: "key-help", class: "muted" },
			"A key of your project (sl_…), made with `stageline keys create`. It is kept in this tab's session storage only and sent in the Authorization header.",
		),
		err,
		h(
			"div",
			{ class: "row" },
			h("button", { type: "submit", class: "primary" }, "Open the console"),
			h("button", { type: "button", id: "no-key", onclick: () => void tryKey("") }, "Continue without a key"),
		),
	);
	form.addEventListener("submit", (ev) => {
		ev.preventDefault();
		void tryKey(input.value.trim());
	});
	async function tryKey(key: string): Promise<void> {
		api.saveKey(key);
		err.textContent = "Checking the key…";
		try {
			await api.listJobs({ limit: 1 });
			loginMessage = "";
			route();
		} catch (e) {
			api.forgetKey();
			err.textContent =
				e instanceof ApiError && e.status === 401
					? key
						? "The API key was not accepted (401 Unauthorized): it is unknown, mistyped, revoked or expired. Check it and try again."
						: "This server requires an API key (401 Unauthorized)."
					: errorText(e);
			input.focus();
		}
	}
	main.append(form);
	input.focus();
}

// --- jobs --------------------------------------------------------------------

function hashQuery(): URLSearchParams {
	const hash = location.hash.replace(/^#/, "");
	const q = hash.indexOf("?");
	return new URLSearchParams(q >= 0 ? hash.slice(q + 1) : "");
}

async function renderJobs(): Promise<void> {
	const q = hashQuery();
	const status = q.get("status") ?? "";
	const pipeline = q.get("pipeline") ?? "";
	const cursor = q.get("cursor") ?? "";
	const limit = Math.min(200, Math.max(1, Number(q.get("limit")) || 25));

	const statusSel = h(
		"select",
		{ id: "f-status", name: "status" },
		h("option", { value: "" }, "any"),
		JOB_STATUSES.map((st) => h("option", { value: st, selected: st === status }, st)),
	);
	const pipeSel = h("select", { id: "f-pipeline", name: "pipeline" }, h("option", { value: "" }, "any"));
	if (pipeline) pipeSel.append(h("option", { value: pipeline, selected: true }, pipeline));
	const form = h(
		"form",
		{ class: "filters", role: "search", "aria-label": "Filter jobs" },
		h("div", {}, h("label", { for: "f-status" }, "Status"), statusSel),
		h("div", {}, h("label", { for: "f-pipeline" }, "Pipeline"), pipeSel),
		h("button", { type: "submit" }, "Apply"),
	);
	form.addEventListener("submit", (ev) => {
		ev.preventDefault();
		const p = new URLSearchParams();
		if (q.get("limit")) p.set("limit", String(limit));
		if (statusSel.value) p.set("status", statusSel.value);
		if (pipeSel.value) p.set("pipeline", pipeSel.value);
		location.hash = `#/?${p.toString()}`;
	});
	const live = h("span", { id: "live", class: "live" }, "connecting…");
	const tbody = h("tbody", {});
	const table = h(
		"div",
		{ class: "scroll" },
		h(
			"table",
			{ class: "jobs" },
			h("caption", {}, "Jobs, newest first"),
			h(
				"thead",
				{},
				h(
					"tr",
					{},
					["Job", "Pipeline", "Status", "Progress", "Current stage", "Created"].map((c) =>
						h("th", { scope: "col" }, c),
					),
				),
			),
			tbody,
		),
	);
	const pager = h("nav", { class: "pager", "aria-label": "Pages" });
	main.append(h("div", { class: "title-row" }, h("h1", {}, "Jobs"), live), form, table, pager);

	api.listPipelines().then(
		(pl) => {
			for (const p of pl.data)
				if (p.name !== pipeline) pipeSel.append(h("option", { value: p.name }, p.name));
		},
		() => {},
	);

	const rows = new Map<string, HTMLTableRowElement>();
	function row(j: JobSummary): HTMLTableRowElement {
		const tr = h(
			"tr",
			{ "data-job-id": j.id },
			h("td", {}, h("a", { href: `#/jobs/${j.id}`, class: "mono" }, j.id)),
			h("td", {}, j.pipeline),
			h("td", { class: "status" }, badge(j.status)),
			h("td", {}, progressBar(j.progress, `progress of job ${j.id}`)),
			h("td", { class: "current" }, j.current_stage ?? "—"),
			h("td", {}, fmtTime(j.created_at)),
		);
		rows.set(j.id, tr);
		return tr;
	}

	async function load(): Promise<void> {
		const query: api.ListQuery = { limit };
		if (status) query.status = status as api.JobStatus;
		if (pipeline) query.pipeline = pipeline;
		if (cursor) query.cursor = cursor;
		const page = await api.listJobs(query);
		clear(tbody);
		rows.clear();
		if (page.data.length === 0)
			tbody.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No jobs match.")));
		for (const j of page.data) tbody.append(row(j));
		clear(pager);
		if (cursor) {
			const p = new URLSearchParams(q);
			p.delete("cursor");
			pager.append(h("a", { href: `#/?${p.toString()}`, class: "button" }, "First page"));
		}
		if (page.next_cursor) {
			const p = new URLSearchParams(q);
			p.set("cursor", page.next_cursor);
			pager.append(h("a", { href: `#/?${p.toString()}`, class: "button", id: "next-page" }, "Next page"));
		}
	}
	try {
		await load();
	} catch (e) {
		showError(errorText(e));
		return;
	}

	// Live: the project stream's lifecycle events change the rows' statuses;
	// a new job on the first page reloads it.
	let reload: number | undefined;
	const sse = new SseClient(api.streams.projectEvents(), {
		onEvent(ev: SseEvent) {
			if (ev.type !== "lifecycle" && ev.type !== "stage") return;
			const e = JSON.parse(ev.data) as {
				job_id: string;
				kind: string;
				stage: string | null;
				status_to: string | null;
			};
			const tr = rows.get(e.job_id);
			if (tr && ev.type === "lifecycle" && e.status_to) {
				const cell = tr.querySelector("td.status") as HTMLElement;
				clear(cell);
				cell.append(badge(e.status_to));
				if (status && e.status_to !== status) tr.classList.add("stale");
			} else if (tr && e.kind === "job.module.spawn" && e.stage) {
				(tr.querySelector("td.current") as HTMLElement).textContent = e.stage;
			} else if (!tr && !cursor && e.kind === "job.lifecycle.enqueue") {
				window.clearTimeout(reload);
				reload = window.setTimeout(() => void load().catch(() => {}), 300);
			}
		},
		onState(st: SseState, detail?: string) {
			live.textContent = st === "open" ? "live" : st;
			live.title = detail ?? "";
			live.className = `live ${st}`;
		},
	});
	sse.start();
	onDispose(() => {
		sse.stop();
		window.clearTimeout(reload);
	});
}

// --- one job -----------------------------------------------------------------

interface DurableEvent {
	id: number;
	seq: number;
	ts: string;
	kind: string;
	job_id: string;
	task_id: string | null;
	stage: string | null;
	status_from: string | null;
	status_to: string | null;
	reason: string | null;
	data: Record<string, unknown>;
}

class JobPage {
	job: Job | null = null;
	tasks = new Map<string, Task>();
	taskSig = new Map<string, string>();
	lastSeq = 0;
	duplicates = 0;
	gaps = 0;
	ended = false;
	sse: SseClient | null = null;
	refreshTimer: number | undefined;
	tickTimer: number | undefined;
	logAbort: AbortController | null = null;
	stageLogAbort: AbortController | null = null;
	drillStage: string | null;
	drillSig = "";
	resume: HTMLDetailsElement | null = null;
	resumeSel: HTMLSelectElement | null = null;
	resumeDrill: string | null = null;

	readonly header = h("section", { class: "card job-head", "aria-labelledby": "job-title" });
	readonly actions = h("section", { class: "card actions", "aria-labelledby": "actions-title" });
	readonly dag = h("section", { class: "card", "aria-labelledby": "dag-title" });
	readonly timeline = h("section", { class: "card", "aria-labelledby": "tl-title" });
	readonly stagesBox = h("section", { class: "card", "aria-labelledby": "stages-title" });
	readonly drill = h("section", { class: "card drill", id: "drill", "aria-labelledby": "drill-title" });
	readonly eventsList = h("ol", { id: "events", class: "events", "data-duplicates": 0, "data-gaps": 0 });
	readonly conn = h("span", { id: "conn", class: "live", "data-connections": 0 }, "connecting…");
	readonly log = h("pre", { id: "pipeline-log", class: "log", tabindex: 0, "aria-label": "pipeline.log" });

	constructor(
		readonly id: string,
		drillStage: string | null,
	) {
		this.drillStage = drillStage;
	}

	async mount(): Promise<void> {
		main.append(
			h("p", {}, h("a", { href: "#/" }, "← Jobs")),
			this.header,
			this.actions,
			h("div", { class: "grid2" }, this.dag, this.stagesBox),
			this.timeline,
			this.drill,
			h(
				"div",
				{ class: "grid2" },
				h(
					"section",
					{ class: "card", "aria-labelledby": "events-title" },
					h("div", { class: "title-row" }, h("h2", { id: "events-title" }, "Events"), this.conn),
					h("div", { class: "scroll-y" }, this.eventsList),
				),
				h(
					"section",
					{ class: "card", "aria-labelledby": "log-title" },
					h("h2", { id: "log-title" }, "Pipeline log"),
					this.log,
				),
			),
		);
		this.drill.hidden = true;
		try {
			this.job = await api.getJob(this.id);
		} catch (e) {
			clear(main);
			main.append(h("h1", {}, "Job"), h("p", { class: "error" }, errorText(e)), h("a", { href: "#/" }, "Back to jobs"));
			return;
		}
		this.renderAll();
		this.startStream();
		this.followLog();
		this.tickTimer = window.setInterval(() => {
			if (this.job && !SETTLED_JOB.has(this.job.status)) this.renderTimeline();
		}, 1000);
		onDispose(() => this.dispose());
		void this.refreshTasks();
	}

	dispose(): void {
		this.sse?.stop();
		window.clearTimeout(this.refreshTimer);
		window.clearInterval(this.tickTimer);
		this.logAbort?.abort();
		this.stageLogAbort?.abort();
	}

	setDrill(stage: string | null): void {
		this.drillStage = stage;
		this.drillSig = "";
		this.renderDrill();
	}

	startStream(): void {
		this.sse?.stop();
		this.ended = false;
		const sse = new SseClient(api.streams.jobEvents(this.id), {
			onEvent: (ev) => this.onEvent(ev),
			onState: (st, detail) => {
				this.conn.textContent = this.ended ? "ended" : st === "open" ? "live" : st;
				this.conn.title = detail ?? "";
				this.conn.className = `live ${this.ended ? "closed" : st}`;
				this.conn.setAttribute("data-connections", String(sse.connections));
			},
			onFatal: (e) => showError(e.describe()),
		});
		if (this.lastSeq > 0) sse.lastEventId = String(this.lastSeq);
		this.sse = sse;
		sse.start();
	}

	onEvent(ev: SseEvent): void {
		switch (ev.type) {
			case "lifecycle":
			case "stage": {
				const e = JSON.parse(ev.data) as DurableEvent;
				if (e.seq <= this.lastSeq) {
					this.duplicates++;
					this.eventsList.setAttribute("data-duplicates", String(this.duplicates));
					return;
				}
				if (this.lastSeq > 0 && e.seq !== this.lastSeq + 1) {
					this.gaps++;
					this.eventsList.setAttribute("data-gaps", String(this.gaps));
				}
				this.lastSeq = e.seq;
				this.eventsList.append(
					h(
						"li",
						{ "data-seq": e.seq, "data-kind": e.kind },
						h("span", { class: "mono seq" }, `#${e.seq}`),
						" ",
						h("span", { class: "kind" }, e.kind),
						e.stage ? ` ${e.stage}` : "",
						e.status_to ? ` → ${e.status_to}` : "",
						e.reason ? ` (${e.reason})` : "",
					),
				);
				this.eventsList.parentElement?.scrollTo({ top: 1e9 });
				if (this.job && e.stage) {
					const st = this.job.stages.find((x) => x.stage === e.stage);
					if (st && e.status_to) st.status = e.status_to as Stage["status"];
				} else if (this.job && e.status_to && ev.type === "lifecycle") {
					this.job.status = e.status_to as Job["status"];
				}
				this.scheduleRefresh();
				break;
			}
			case "progress": {
				const e = JSON.parse(ev.data) as { stage: string; data: { progress: number; message?: string } };
				const st = this.job?.stages.find((x) => x.stage === e.stage);
				if (st) {
					st.progress = e.data.progress;
					this.renderStages();
					this.renderTimeline();
				}
				break;
			}
			case "snapshot":
				this.job = JSON.parse(ev.data) as Job;
				this.renderAll();
				void this.refreshTasks();
				break;
			case "reset": {
				const e = JSON.parse(ev.data) as { reason: string };
				announce(`The event stream was reset (${e.reason}); showing a fresh snapshot.`);
				break;
			}
			case "end":
				this.ended = true;
				this.sse?.stop();
				this.conn.textContent = "ended";
				this.scheduleRefresh(0);
				break;
		}
	}

	scheduleRefresh(delay = 250): void {
		window.clearTimeout(this.refreshTimer);
		this.refreshTimer = window.setTimeout(() => void this.refresh(), delay);
	}

	async refresh(): Promise<void> {
		try {
			this.job = await api.getJob(this.id);
		} catch (e) {
			if (!(e instanceof ApiError && e.status === 401)) showError(errorText(e));
			return;
		}
		this.renderAll();
		await this.refreshTasks();
	}

	/** Reads the attempts of each stage whose status or attempt changed. */
	async refreshTasks(): Promise<void> {
		const job = this.job;
		if (!job) return;
		const want = job.stages.filter(
			(st) => st.attempt > 0 && this.taskSig.get(st.stage) !== `${st.status}/${st.attempt}/${st.timing.run_ms}`,
		);
		await Promise.all(
			want.map(async (st) => {
				try {
					const t = await api.getTask(this.id, st.task_id);
					this.tasks.set(st.stage, t);
					this.taskSig.set(st.stage, `${st.status}/${st.attempt}/${st.timing.run_ms}`);
				} catch {
					/* the next event refreshes it */
				}
			}),
		);
		this.renderTimeline();
		this.renderDrill();
	}

	renderAll(): void {
		this.renderHeader();
		this.renderActions();
		this.renderDag();
		this.renderStages();
		this.renderTimeline();
		this.renderDrill();
	}

	renderHeader(): void {
		const j = this.job!;
		clear(this.header);
		this.header.setAttribute("data-status", j.status);
		add(
			this.header,
			h("div", { class: "title-row" }, h("h1", { id: "job-title" }, `Job ${j.id}`), badge(j.status)),
			h(
				"dl",
				{ class: "facts" },
				fact("Pipeline", j.pipeline),
				fact("Current stage", h("span", { id: "current-stage" }, j.current_stage ?? "—")),
				fact("Attempt", String(j.attempt)),
				fact("Created", fmtTime(j.created_at)),
				fact("Started", fmtTime(j.started_at)),
				fact("Completed", fmtTime(j.completed_at)),
				fact("Duration", fmtMs(j.duration_ms)),
				fact("Waited", fmtMs(j.total_wait_ms)),
			),
			progressBar(j.progress, "job progress"),
			j.error
				? h("p", { class: "error" }, `${j.error.category} error ${j.error.code}: ${j.error.message}`)
				: null,
		);
	}

	renderActions(): void {
		const j = this.job!;
		clear(this.actions);
		const cancellable = !SETTLED_JOB.has(j.status);
		const retrySel = h(
			"select",
			{ id: "retry-stage" },
			h("option", { value: "" }, "the first failed stage"),
			j.stages.map((st) => h("option", { value: st.stage }, st.stage)),
		);
		if (this.drillStage) retrySel.value = this.drillStage;
		const resume = this.resumeBox();
		// follow the stage opened below, but keep a choice made since
		if (this.drillStage && this.drillStage !== this.resumeDrill) {
			this.resumeSel!.value = this.drillStage;
			this.resumeDrill = this.drillStage;
		}
		this.actions.append(
			h("h2", { id: "actions-title" }, "Actions"),
			h(
				"div",
				{ class: "row wrap" },
				h(
					"button",
					{ type: "button", id: "cancel-btn", class: "danger", disabled: !cancellable, onclick: () => void this.cancel() },
					"Cancel job",
				),
				h(
					"div",
					{ class: "inline" },
					h("label", { for: "retry-stage" }, "Retry from"),
					retrySel,
					h(
						"button",
						{
							type: "button",
							id: "retry-btn",
							disabled: !SETTLED_JOB.has(j.status),
							onclick: () => void this.retry(retrySel.value),
						},
						"Retry",
					),
				),
			),
			resume,
		);
	}

	/** The resubmit form, built once per page so that what the user typed
	 * survives the re-renders live events cause. Opening it the first time
	 * fills in the job's input and upload (GET /v1/jobs/{id}/input). */
	resumeBox(): HTMLDetailsElement {
		if (this.resume) return this.resume;
		const j = this.job!;
		const resumeSel = h("select", { id: "resume-stage" }, j.stages.map((st) => h("option", { value: st.stage }, st.stage)));
		this.resumeSel = resumeSel;
		const inputArea = h("textarea", { id: "resume-input", rows: 3, spellcheck: "false" });
		const paramsArea = h("textarea", { id: "resume-params", rows: 3, spellcheck: "false" });
		paramsArea.value = JSON.stringify(j.params ?? {});
		const uploadBox = h("input", { type: "checkbox", id: "resume-upload" });
		const uploadId = h("code", { id: "resume-upload-id" });
		const uploadRow = h(
			"div",
			{ class: "inline", hidden: true },
			uploadBox,
			h("label", { for: "resume-upload" }, "Send its upload again: "),
			uploadId,
		);
		const resumeForm = h(
			"form",
			{ class: "resume" },
			h("div", {}, h("label", { for: "resume-stage" }, "Resubmit as a new job from stage"), resumeSel),
			h("div", {}, h("label", { for: "resume-params" }, "Params (JSON object)"), paramsArea),
			h(
				"div",
				{},
				h("label", { for: "resume-input" }, "Input (JSON; the job's input is filled in, empty = none)"),
				inputArea,
			),
			uploadRow,
			h("button", { type: "submit", id: "resume-btn" }, "Resubmit with resume_from"),
		);
		resumeForm.addEventListener("submit", (ev) => {
			ev.preventDefault();
			const upload = uploadBox.checked && uploadId.textContent ? uploadId.textContent : undefined;
			void this.resubmit(resumeSel.value, paramsArea.value, inputArea.value, upload);
		});
		const box = h("details", { class: "resume-box" }, h("summary", {}, "Resubmit with resume_from…"), resumeForm);
		let asked = false;
		box.addEventListener("toggle", () => {
			if (!box.open || asked) return;
			asked = true;
			inputArea.setAttribute("aria-busy", "true");
			api.getJobInput(this.id)
				.then((got) => {
					if (inputArea.value === "" && got.input !== null) inputArea.value = JSON.stringify(got.input, null, 2);
					if (got.upload) {
						uploadId.textContent = got.upload;
						uploadBox.checked = true;
						uploadRow.hidden = false;
					}
					inputArea.setAttribute("data-loaded", "true");
				})
				.catch((e: unknown) => {
					asked = false;
					showError(`The job's input could not be read: ${errorText(e)}`);
				})
				.finally(() => inputArea.removeAttribute("aria-busy"));
		});
		this.resume = box;
		return box;
	}

	async cancel(): Promise<void> {
		if (!(await confirmDialog(`Cancel job ${this.id}? Its running stages are stopped.`, "Cancel job"))) return;
		try {
			await api.cancelJob(this.id);
			announce("Cancel requested.");
		} catch (e) {
			showError(errorText(e));
		}
		this.scheduleRefresh(0);
	}

	async retry(fromStage: string): Promise<void> {
		const what = fromStage ? `from stage “${fromStage}” (and every stage that depends on it)` : "from its first failed stage";
		if (!(await confirmDialog(`Retry job ${this.id} ${what}?`, "Retry"))) return;
		try {
			await api.retryJob(this.id, fromStage ? { from_stage: fromStage } : {});
			announce("Retry started.");
			clear(alerts);
			if (this.ended || !this.sse) this.startStream();
			this.followLog();
		} catch (e) {
			showError(errorText(e));
		}
		this.scheduleRefresh(0);
	}

	async resubmit(stage: string, paramsText: string, inputText: string, upload?: string): Promise<void> {
		let params: Record<string, unknown> | undefined;
		let input: unknown;
		try {
			params = paramsText.trim() ? (JSON.parse(paramsText) as Record<string, unknown>) : undefined;
			input = inputText.trim() ? JSON.parse(inputText) : undefined;
		} catch (e) {
			showError(`Not JSON: ${errorText(e)}`);
			return;
		}
		if (!(await confirmDialog(`Submit a new ${this.job!.pipeline} job that reuses this job's stages before “${stage}”?`, "Submit")))
			return;
		const body: api.JobCreate = { pipeline: this.job!.pipeline, resume_from: { job_id: this.id, stage } };
		if (params) body.params = params as api.JobCreate["params"];
		if (input !== undefined) body.input = input;
		if (upload) body.upload = upload;
		try {
			const j = await api.createJob(body);
			announce(`Job ${j.id} submitted.`);
			location.hash = `#/jobs/${j.id}`;
		} catch (e) {
			showError(errorText(e));
		}
	}

	/** The DAG from depends_on: columns by depth, arrows from dependency to dependent. */
	renderDag(): void {
		const j = this.job!;
		clear(this.dag);
		this.dag.append(h("h2", { id: "dag-title" }, "Pipeline graph"));
		const depth = new Map<string, number>();
		const byName = new Map(j.stages.map((st) => [st.stage, st]));
		const depthOf = (name: string, seen = new Set<string>()): number => {
			const d = depth.get(name);
			if (d !== undefined) return d;
			if (seen.has(name)) return 0;
			seen.add(name);
			const st = byName.get(name);
			const v = st && st.depends_on.length ? 1 + Math.max(...st.depends_on.map((x) => depthOf(x, seen))) : 0;
			depth.set(name, v);
			return v;
		};
		const cols: Stage[][] = [];
		for (const st of j.stages) (cols[depthOf(st.stage)] ??= []).push(st);
		const W = 132, H = 44, GX = 44, GY = 16;
		const pos = new Map<string, { x: number; y: number }>();
		cols.forEach((col, c) => col.forEach((st, r) => pos.set(st.stage, { x: 8 + c * (W + GX), y: 8 + r * (H + GY) })));
		const width = 16 + cols.length * (W + GX) - GX;
		const height = 16 + Math.max(1, ...cols.map((c) => c.length)) * (H + GY) - GY;
		const svg = s("svg", {
			class: "dag",
			viewBox: `0 0 ${width} ${height}`,
			role: "group",
			"aria-label": "Stages and their dependencies",
		});
		svg.append(
			s(
				"defs",
				{},
				s(
					"marker",
					{ id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
					s("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }),
				),
			),
		);
		for (const st of j.stages) {
			const to = pos.get(st.stage)!;
			for (const dep of st.depends_on) {
				const from = pos.get(dep);
				if (!from) continue;
				const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2;
				const mx = (x1 + x2) / 2;
				svg.append(s("path", { class: "edge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`, "marker-end": "url(#arrow)" }));
			}
		}
		for (const st of j.stages) {
			const p = pos.get(st.stage)!;
			const node = s(
				"g",
				{
					class: `node st-${st.status}${this.drillStage === st.stage ? " selected" : ""}`,
					transform: `translate(${p.x},${p.y})`,
					tabindex: 0,
					role: "link",
					"data-stage": st.stage,
					"aria-label": `Stage ${st.stage}: ${st.status}. Open its details.`,
				},
				s("rect", { width: W, height: H, rx: 6 }),
				s("text", { x: 8, y: 18, class: "name" }, st.stage.length > 16 ? st.stage.slice(0, 15) + "…" : st.stage),
				s("text", { x: 8, y: 34, class: "sub" }, st.status === "running" ? `running ${Math.round(st.progress * 100)}%` : st.status),
			);
			const open = () => (location.hash = `#/jobs/${this.id}/stages/${encodeURIComponent(st.stage)}`);
			node.addEventListener("click", open);
			node.addEventListener("keydown", (ev) => {
				if ((ev as KeyboardEvent).key === "Enter" || (ev as KeyboardEvent).key === " ") {
					ev.preventDefault();
					open();
				}
			});
			svg.append(node);
		}
		// as wide as it needs up to the panel's width, scaled down below that
		svg.style.maxWidth = `${width}px`;
		this.dag.append(svg);
	}

	renderStages(): void {
		const j = this.job!;
		clear(this.stagesBox);
		this.stagesBox.append(
			h("h2", { id: "stages-title" }, "Stages"),
			h(
				"div",
				{ class: "scroll" },
				h(
					"table",
					{ class: "stages" },
					h(
						"thead",
						{},
						h("tr", {}, ["Stage", "Status", "Progress", "Attempt", "Waited", "Ran"].map((c) => h("th", { scope: "col" }, c))),
					),
					h(
						"tbody",
						{},
						j.stages.map((st) =>
							h(
								"tr",
								{ "data-stage": st.stage, "data-status": st.status },
								h("td", {}, h("a", { href: `#/jobs/${this.id}/stages/${encodeURIComponent(st.stage)}` }, st.stage)),
								h("td", {}, badge(st.status), st.skip_reason ? h("span", { class: "muted" }, ` ${st.skip_reason}`) : null),
								h("td", {}, progressBar(st.progress, `progress of stage ${st.stage}`)),
								h("td", {}, String(st.attempt)),
								h("td", {}, fmtMs(st.wait_ms)),
								h("td", {}, fmtMs(st.duration_ms)),
							),
						),
					),
				),
			),
		);
	}

	/** The Gantt: one row per stage, one bar group per attempt split into
	 * wait / fetch / run / upload; a running attempt grows until now. */
	renderTimeline(): void {
		const j = this.job;
		if (!j) return;
		clear(this.timeline);
		const now = Date.now();
		let t0 = Date.parse(j.created_at);
		let t1 = j.completed_at && SETTLED_JOB.has(j.status) ? Date.parse(j.completed_at) : now;
		const segs: { stage: string; cls: string; a: number; b: number; label: string; progress?: number }[] = [];
		for (const st of j.stages) {
			const task = this.tasks.get(st.stage);
			const attempts: TaskAttempt[] = task ? task.attempts : [];
			for (const at of attempts) {
				const start = Date.parse(at.started_at);
				const tag = `${st.stage} attempt ${at.attempt}`;
				if (at.wait_ms) segs.push({ stage: st.stage, cls: "wait", a: start - at.wait_ms, b: start, label: `${tag}: waited ${fmtMs(at.wait_ms)}` });
				if (at.ended_at === null) {
					const live = st.status === "running" && st.attempt === at.attempt;
					segs.push({
						stage: st.stage,
						cls: live ? "running" : "run",
						a: start,
						b: now,
						label: `${tag}: running for ${fmtMs(now - start)}`,
						progress: live ? st.progress : undefined,
					});
					continue;
				}
				const end = Date.parse(at.ended_at);
				if (at.fetch_ms === null && at.run_ms === null) {
					segs.push({ stage: st.stage, cls: `run out-${at.outcome}`, a: start, b: end, label: `${tag}: ${at.outcome} after ${fmtMs(end - start)}` });
					continue;
				}
				let t = start;
				for (const [cls, ms] of [
					["fetch", at.fetch_ms],
					["run", at.run_ms],
					["upload", at.upload_ms],
				] as const) {
					if (ms === null) continue;
					const extra = cls === "run" && at.outcome !== "completed" ? ` out-${at.outcome}` : "";
					segs.push({ stage: st.stage, cls: cls + extra, a: t, b: t + ms, label: `${tag}: ${cls} ${fmtMs(ms)}${extra ? ` (${at.outcome})` : ""}` });
					t += ms;
				}
			}
			// Not yet in the attempts (or no attempt yet): what the stage row says.
			const known = attempts.some((a) => a.attempt === st.attempt);
			if (st.status === "ready" && st.ready_at) {
				segs.push({ stage: st.stage, cls: "wait", a: Date.parse(st.ready_at), b: now, label: `${st.stage}: waiting for ${fmtMs(now - Date.parse(st.ready_at))}` });
			} else if (st.status === "running" && st.started_at && !known) {
				const a = Date.parse(st.started_at);
				if (st.ready_at) segs.push({ stage: st.stage, cls: "wait", a: Date.parse(st.ready_at), b: a, label: `${st.stage}: waited` });
				segs.push({ stage: st.stage, cls: "running", a, b: now, label: `${st.stage}: running`, progress: st.progress });
			} else if (!task && st.started_at && st.completed_at) {
				segs.push({ stage: st.stage, cls: "run", a: Date.parse(st.started_at), b: Date.parse(st.completed_at), label: `${st.stage}: ran ${fmtMs(st.duration_ms)}` });
			}
		}
		for (const sg of segs) {
			t0 = Math.min(t0, sg.a);
			t1 = Math.max(t1, sg.b);
		}
		const span = Math.max(1, t1 - t0);
		const pct = (t: number) => `${(Math.max(0, t - t0) / span) * 100}%`;
		const rows = j.stages.map((st) => {
			const track = h("div", { class: "track" });
			for (const sg of segs.filter((x) => x.stage === st.stage)) {
				const el = h("div", { class: `seg seg-${sg.cls}`, title: sg.label, role: "img", "aria-label": sg.label });
				el.style.left = pct(sg.a);
				el.style.width = `max(2px, ${(Math.max(0, sg.b - sg.a) / span) * 100}%)`;
				if (sg.progress !== undefined) {
					const f = h("div", { class: "seg-progress" });
					f.style.width = `${Math.round(sg.progress * 100)}%`;
					el.append(f);
				}
				track.append(el);
			}
			return h(
				"div",
				{ class: "tl-row", "data-stage": st.stage },
				h("a", { class: "tl-label", href: `#/jobs/${this.id}/stages/${encodeURIComponent(st.stage)}` }, st.stage),
				track,
			);
		});
		this.timeline.append(
			h("div", { class: "title-row" }, h("h2", { id: "tl-title" }, "Timeline"), h("span", { class: "muted" }, `${fmtMs(span)} shown`)),
			h(
				"ul",
				{ class: "legend", "aria-label": "Legend" },
				["wait", "fetch", "run", "upload", "running"].map((c) => h("li", {}, h("span", { class: `swatch seg-${c}` }), c)),
			),
			h("div", { class: "timeline", id: "timeline" }, rows),
		);
	}

	renderDrill(): void {
		const name = this.drillStage;
		const st = this.job?.stages.find((x) => x.stage === name);
		if (!name || !st) {
			this.drill.hidden = true;
			this.stageLogAbort?.abort();
			return;
		}
		const task = this.tasks.get(name);
		const sig = `${name}/${st.status}/${st.attempt}/${task ? task.attempts.length : -1}/${task?.attempts.at(-1)?.outcome ?? ""}`;
		if (sig === this.drillSig) return;
		const first = !this.drillSig.startsWith(`${name}/`);
		this.drillSig = sig;
		this.drill.hidden = false;
		clear(this.drill);
		const closeBtn = h("a", { href: `#/jobs/${this.id}`, class: "button" }, "Close");
		add(
			this.drill,
			h("div", { class: "title-row" }, h("h2", { id: "drill-title", tabindex: -1 }, `Stage ${st.stage}`), badge(st.status), closeBtn),
			h(
				"dl",
				{ class: "facts" },
				fact("Module", st.module),
				fact("Engine", st.engine_id ?? "—"),
				fact("Attempt", String(st.attempt)),
				fact("Retries", String(st.retries)),
				fact("Required", st.required ? "yes" : "no"),
				fact("Depends on", st.depends_on.join(", ") || "—"),
				fact("Ready", fmtTime(st.ready_at)),
				fact("Started", fmtTime(st.started_at)),
				fact("Completed", fmtTime(st.completed_at)),
				fact("Waited", fmtMs(st.wait_ms)),
				fact("Fetch / run / upload", `${fmtMs(st.timing.fetch_ms)} / ${fmtMs(st.timing.run_ms)} / ${fmtMs(st.timing.upload_ms)}`),
				st.skip_reason ? fact("Skipped", st.skip_reason) : null,
			),
			st.error ? h("p", { class: "error" }, `${st.error.category} error ${st.error.code}: ${st.error.message}`) : null,
			h(
				"div",
				{ class: "row wrap" },
				h(
					"button",
					{
						type: "button",
						id: "drill-retry",
						disabled: !this.job || !SETTLED_JOB.has(this.job.status),
						onclick: () => void this.retry(st.stage),
					},
					`Retry the job from ${st.stage}`,
				),
			),
			h("h3", {}, "Attempts"),
			attemptsTable(task),
		);
		const artBox = h("div", { id: "artifacts", "aria-busy": "true" }, h("p", { class: "muted" }, "Loading artifacts…"));
		const logPre = h("pre", { id: "stage-log", class: "log", tabindex: 0, "aria-label": `stage.log of ${st.stage}` });
		this.drill.append(h("h3", {}, "Artifacts"), artBox, h("h3", {}, "Stage log"), logPre);
		void this.loadArtifacts(st, artBox, st.attempt);
		this.followStageLog(st, logPre);
		if (first) {
			(this.drill.querySelector("#drill-title") as HTMLElement | null)?.focus({ preventScroll: true });
			this.drill.scrollIntoView({ block: "start" });
		}
	}

	async loadArtifacts(st: Stage, box: HTMLElement, attempt: number): Promise<void> {
		if (st.attempt === 0) {
			clear(box);
			box.removeAttribute("aria-busy");
			box.append(h("p", { class: "muted" }, "The stage has not run yet."));
			return;
		}
		let art: api.TaskArtifacts;
		try {
			art = await api.getArtifacts(this.id, st.task_id, attempt);
		} catch (e) {
			clear(box);
			box.append(h("p", { class: "error" }, errorText(e)));
			return;
		}
		clear(box);
		box.removeAttribute("aria-busy");
		if (art.attempts > 1) {
			const sel = h(
				"select",
				{ id: "artifact-attempt" },
				Array.from({ length: art.attempts }, (_, i) => h("option", { value: i + 1, selected: i + 1 === art.attempt }, `attempt ${i + 1}`)),
			);
			sel.addEventListener("change", () => void this.loadArtifacts(st, box, Number(sel.value)));
			box.append(h("div", { class: "inline" }, h("label", { for: "artifact-attempt" }, "Show"), sel));
		}
		box.append(
			jsonViewer("Input (input.json)", art.input, false),
			jsonViewer("Output (output.json)", art.output, true),
			jsonViewer("Manifest (manifest.json)", art.manifest, false),
		);
		if (art.truncated.length) box.append(h("p", { class: "muted" }, `Too large to show inline: ${art.truncated.join(", ")} (use the links).`));
		const links = Object.entries(art.links).filter(([, l]) => l !== null) as [string, { url: string }][];
		if (links.length)
			box.append(
				h(
					"p",
					{ class: "row wrap" },
					links.map(([k, l]) => h("a", { href: l.url, rel: "noreferrer", download: "", "data-link": k }, `${k} ↓`)),
				),
			);
		box.append(
			h(
				"div",
				{ class: "scroll" },
				h(
					"table",
					{ class: "files", id: "files" },
					h("caption", {}, `Files of attempt ${art.attempt}`),
					h("thead", {}, h("tr", {}, ["Name", "Type", "Format", "Role", "Size", "SHA-256", "Download"].map((c) => h("th", { scope: "col" }, c)))),
					h(
						"tbody",
						{},
						art.files.length === 0 ? h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No files.")) : null,
						art.files.map((f) =>
							h(
								"tr",
								{ "data-file": f.name ?? "", "data-path": f.path ?? "" },
								h("td", {}, f.name ?? "—"),
								h("td", {}, f.type),
								h("td", {}, f.format ?? "—"),
								h("td", {}, f.role),
								h("td", { "data-bytes": f.size_bytes }, fmtBytes(f.size_bytes)),
								h("td", { class: "mono", title: f.sha256 ?? "" }, f.sha256 ? f.sha256.slice(0, 12) + "…" : "—"),
								h(
									"td",
									{},
									f.url
										? h("a", { href: f.url, rel: "noreferrer", download: "", class: "download" }, `Download ${f.name ?? "file"}`)
										: h("span", { class: "muted" }, "no link"),
								),
							),
						),
					),
				),
			),
		);
	}

	followStageLog(st: Stage, pre: HTMLPreElement): void {
		this.stageLogAbort?.abort();
		if (st.attempt === 0) {
			pre.textContent = "(no log yet: the stage has not started)";
			return;
		}
		const ac = new AbortController();
		this.stageLogAbort = ac;
		pre.textContent = "";
		void followText(api.streams.taskLog(this.id, st.task_id), (t) => {
			pre.append(t);
			pre.scrollTop = pre.scrollHeight;
		}, ac.signal).then((r) => {
			if (ac.signal.aborted) return;
			if (r.status === 404) pre.textContent = "(no log stored yet)";
			else if (r.error) pre.textContent = `(${r.error.describe()})`;
		});
	}

	followLog(): void {
		this.logAbort?.abort();
		const ac = new AbortController();
		this.logAbort = ac;
		const run = async (): Promise<void> => {
			this.log.textContent = "";
			const r = await followText(api.streams.jobLog(this.id), (t) => {
				this.log.append(t);
				this.log.scrollTop = this.log.scrollHeight;
			}, ac.signal);
			if (ac.signal.aborted) return;
			if (r.error && r.status !== 404) {
				this.log.textContent = `(${r.error.describe()})`;
				return;
			}
			// It ends when the job settles (or the connection drops): read
			// again while the job is not settled, or after a retry.
			window.setTimeout(() => {
				if (!ac.signal.aborted && this.job && !SETTLED_JOB.has(this.job.status)) {
					void run();
				}
			}, 1000);
		};
		void run();
	}
}

function fact(k: string, v: string | Node): (HTMLElement | string)[] {
	return [h("dt", {}, k), h("dd", {}, v)];
}

function attemptsTable(task: Task | undefined): HTMLElement {
	if (!task || task.attempts.length === 0) return h("p", { class: "muted" }, "No attempts yet.");
	return h(
		"div",
		{ class: "scroll" },
		h(
			"table",
			{ class: "attempts", id: "attempts" },
			h(
				"thead",
				{},
				h(
					"tr",
					{},
					["#", "Outcome", "Started", "Ended", "Wait", "Fetch", "Run", "Upload", "Exit", "Error"].map((c) => h("th", { scope: "col" }, c)),
				),
			),
			h(
				"tbody",
				{},
				task.attempts.map((a) =>
					h(
						"tr",
						{ "data-attempt": a.attempt, "data-outcome": a.outcome ?? "running" },
						h("td", {}, String(a.attempt)),
						h("td", {}, a.outcome ? badge(a.outcome) : badge("running")),
						h("td", {}, fmtTime(a.started_at)),
						h("td", {}, fmtTime(a.ended_at)),
						h("td", {}, fmtMs(a.wait_ms)),
						h("td", {}, fmtMs(a.fetch_ms)),
						h("td", {}, fmtMs(a.run_ms)),
						h("td", {}, fmtMs(a.upload_ms)),
						h("td", {}, a.exit_code !== null ? String(a.exit_code) : a.signal !== null ? `signal ${a.signal}` : "—"),
						h(
							"td",
							{ class: "err" },
							a.error ? [h("strong", {}, `${a.error.category}`), ` ${a.error.code}: ${a.error.message}`] : "—",
						),
					),
				),
			),
		),
	);
}

// --- routing -----------------------------------------------------------------

let current: JobPage | null = null;

function route(): void {
	const hash = location.hash.replace(/^#/, "") || "/";
	const path = hash.split("?")[0] ?? "/";
	const m = /^\/jobs\/([0-9a-fA-F-]{36})(?:\/stages\/([^/]+))?$/.exec(path);
	// Opening or closing a stage of the job on screen keeps the page (and its streams).
	if (m && current && current.id === m[1] && api.savedKey() !== null) {
		current.setDrill(m[2] ? decodeURIComponent(m[2]) : null);
		current.renderDag();
		current.renderActions();
		if (!m[2]) current.dag.scrollIntoView({ block: "nearest" });
		return;
	}
	disposePage();
	current = null;
	clear(main);
	clear(alerts);
	if (api.savedKey() === null) {
		renderLogin();
		return;
	}
	const key = api.savedKey() ?? "";
	whoami.textContent = key ? `key ${key.split("_")[1] ?? ""}…` : "no key";
	signout.hidden = false;
	if (m) {
		current = new JobPage(m[1]!, m[2] ? decodeURIComponent(m[2]) : null);
		void current.mount();
	} else {
		void renderJobs();
	}
	main.focus({ preventScroll: true });
}

signout.addEventListener("click", () => {
	api.forgetKey();
	loginMessage = "";
	route();
});
window.addEventListener("hashchange", route);
route();
