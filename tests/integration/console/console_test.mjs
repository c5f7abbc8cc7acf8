// Browser tests of the web console (tests/integration/test_console.py runs
// this): playwright-core drives Debian's chromium headless against a real
// stagelined running the speech demo, through the test's TCP proxy (which
// can drop every connection on demand). One JSON argument:
//   {base, key, bad_key, control, shots, chromium, pipeline, input}
// Steps print "step: ..." lines; any failed check throws (exit 1).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const cfg = JSON.parse(process.argv[2]);
const step = (m) => console.log(`step: ${m}`);
const auth = { Authorization: `Bearer ${cfg.key}` };

async function api(method, p, body) {
	const init = { method, headers: { ...auth } };
	if (body !== undefined) {
		init.body = JSON.stringify(body);
		init.headers["Content-Type"] = "application/json";
	}
	const r = await fetch(cfg.base + p, init);
	const text = await r.text();
	assert.ok(r.ok, `${method} ${p}: ${r.status} ${text.slice(0, 500)}`);
	return text ? JSON.parse(text) : null;
}

async function until(what, fn, timeoutMs = 60000, everyMs = 100) {
	const end = Date.now() + timeoutMs;
	let last;
	for (;;) {
		try {
			last = await fn();
			if (last) return last;
		} catch (e) {
			last = e;
		}
		if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last})`);
		await new Promise((r) => setTimeout(r, everyMs));
	}
}

const browser = await chromium.launch({
	executablePath: cfg.chromium,
	headless: true,
	args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
const consoleErrors = [];
page.on("console", (m) => {
	if (m.type() === "error") consoleErrors.push(m.text());
});
page.on("pageerror", (e) => consoleErrors.push(String(e)));
const shot = async (name, opts = {}) => {
	const file = path.join(cfg.shots, `${name}.png`);
	await page.screenshot({ path: file, fullPage: true, ...opts });
	console.log(`screenshot: ${file}`);
};

try {
	// --- a wrong key gets a clear message, a right one opens the jobs page
	step("wrong key");
	await page.goto(cfg.base + "/console/");
	await page.getByLabel("API key", { exact: true }).fill(cfg.bad_key);
	await page.getByRole("button", { name: "Open the console" }).click();
	await page.waitForFunction(() => /not accepted \(401/.test(document.getElementById("key-error")?.textContent ?? ""));
	assert.equal(await page.evaluate(() => sessionStorage.getItem("stageline.api_key")), null);
	await shot("wrong-key");

	step("right key");
	await page.getByLabel("API key", { exact: true }).fill(cfg.key);
	await page.getByRole("button", { name: "Open the console" }).click();
	await page.getByRole("heading", { name: "Jobs" }).waitFor();
	assert.equal(await page.evaluate(() => sessionStorage.getItem("stageline.api_key")), cfg.key);
	assert.ok(!page.url().includes(cfg.key), "the key is in the URL");

	// --- jobs page: live new job and status, filter, keyset pages
	step("jobs page: a job submitted while it is open appears and goes live");
	await page.waitForFunction(() => document.getElementById("live")?.textContent === "live");
	const job = await api("POST", "/v1/jobs", { pipeline: cfg.pipeline, params: { speed: 170 }, input: cfg.input });
	await page.locator(`tr[data-job-id="${job.id}"]`).waitFor({ timeout: 15000 });
	await page.waitForFunction(
		(id) => /running|completed/.test(document.querySelector(`tr[data-job-id="${id}"] td.status`)?.textContent ?? ""),
		job.id,
		{ timeout: 30000 },
	);

	// --- the job page, live
	step("job page: the timeline fills in live");
	await page.locator(`tr[data-job-id="${job.id}"] a`).click();
	await page.locator("#timeline").waitFor();
	const seen = { running: 0, maxSegs: 0, liveProgress: false };
	let cut = false;
	let midShot = false;
	await until(
		"the job to complete in the console",
		async () => {
			const st = await page.evaluate(() => ({
				status: document.querySelector(".job-head")?.getAttribute("data-status"),
				segs: document.querySelectorAll("#timeline .seg").length,
				running: document.querySelectorAll("#timeline .seg-running").length,
				events: document.querySelectorAll("#events li").length,
				conns: Number(document.getElementById("conn")?.getAttribute("data-connections") ?? 0),
				bar: document.querySelector('.job-head [role="progressbar"]')?.getAttribute("aria-valuenow"),
			}));
			seen.maxSegs = Math.max(seen.maxSegs, st.segs);
			if (st.running) seen.running++;
			if (st.status === "running" && Number(st.bar) > 0 && Number(st.bar) < 100) seen.liveProgress = true;
			if (st.status === "running" && st.running && !midShot) {
				midShot = true;
				await shot("job-running");
			}
			// drop every connection once, mid-run: the stream must resume
			if (!cut && st.status === "running" && st.events >= 6) {
				cut = true;
				step(`dropping all connections after ${st.events} events`);
				await fetch(cfg.control + "/cut");
			}
			return st.status === "completed";
		},
		120000,
		50,
	);
	assert.ok(cut, "the job finished before a connection could be dropped");
	assert.ok(seen.running > 0, "never saw a running segment in the timeline");
	assert.ok(seen.liveProgress, "the job's progress bar never showed a value between 0 and 100 while running");

	step("after the drop: every event once, in order");
	const done = await api("GET", `/v1/jobs/${job.id}`);
	assert.equal(done.status, "completed");
	await page.waitForFunction((n) => document.querySelectorAll("#events li").length >= n, done.event_seq);
	const ev = await page.evaluate(() => ({
		seqs: [...document.querySelectorAll("#events li")].map((li) => Number(li.getAttribute("data-seq"))),
		dups: Number(document.getElementById("events").getAttribute("data-duplicates")),
		gaps: Number(document.getElementById("events").getAttribute("data-gaps")),
		conns: Number(document.getElementById("conn").getAttribute("data-connections")),
	}));
	assert.deepEqual(ev.seqs, Array.from({ length: done.event_seq }, (_, i) => i + 1), "events not 1..event_seq once each");
	assert.equal(ev.dups, 0, "the resumed stream repeated events");
	assert.equal(ev.gaps, 0, "the resumed stream skipped events");
	assert.ok(ev.conns >= 2, `the stream did not reconnect (connections ${ev.conns})`);

	step("timeline: every stage has its run segment, with fetch and upload");
	await page.waitForFunction(
		(n) => document.querySelectorAll("#timeline .tl-row").length === n &&
			[...document.querySelectorAll("#timeline .tl-row")].every((r) => r.querySelector(".seg-run")),
		done.stages.length,
		{ timeout: 15000 },
	);
	assert.ok((await page.locator("#timeline .seg-fetch").count()) >= 1);
	assert.ok((await page.locator("#timeline .seg-upload").count()) >= 1);
	assert.ok((await page.locator("svg.dag .node").count()) === done.stages.length);
	assert.ok((await page.locator("svg.dag .edge").count()) === done.stages.reduce((n, s) => n + s.depends_on.length, 0));
	await page.waitForFunction(() => (document.getElementById("pipeline-log")?.textContent ?? "").includes("COMPLETED"));
	await shot("job-completed");

	// --- drill-down: what the API says, and links that download the same bytes
	step("drill-down of a stage with files (keyboard: Enter on its DAG node)");
	const withFiles = done.stages.find((s) => s.stage === "tts") ?? done.stages[0];
	await page.locator(`svg.dag .node[data-stage="${withFiles.stage}"]`).focus();
	await page.keyboard.press("Enter");
	await page.locator("#files").waitFor();
	const art = await api("GET", `/v1/jobs/${job.id}/tasks/${withFiles.task_id}/artifacts`);
	const task = await api("GET", `/v1/jobs/${job.id}/tasks/${withFiles.task_id}`);
	const rows = await page.$$eval("#files tbody tr[data-file]", (trs) =>
		trs.map((tr) => ({
			name: tr.getAttribute("data-file"),
			path: tr.getAttribute("data-path"),
			bytes: Number(tr.querySelector("[data-bytes]").getAttribute("data-bytes")),
			href: tr.querySelector("a.download")?.getAttribute("href") ?? null,
		})),
	);
	assert.ok(art.files.length > 0, "the stage has no files");
	assert.deepEqual(
		rows.map((r) => [r.name, r.path, r.bytes]),
		art.files.map((f) => [f.name ?? "", f.path ?? "", f.size_bytes]),
	);
	for (const r of rows) {
		assert.ok(r.href && r.href.startsWith("/v1/objects/"), `no signed link for ${r.name}: ${r.href}`);
		const f = art.files.find((x) => x.path === r.path);
		const body = Buffer.from(await (await fetch(cfg.base + r.href)).arrayBuffer());
		assert.equal(createHash("sha256").update(body).digest("hex"), f.sha256, `download of ${r.name}`);
	}
	const outputText = await page.locator("details.json", { hasText: "Output (output.json)" }).locator("pre").textContent();
	assert.deepEqual(JSON.parse(outputText), art.output);
	const manifestText = await page.locator("details.json", { hasText: "Manifest (manifest.json)" }).locator("pre").textContent();
	assert.deepEqual(JSON.parse(manifestText), art.manifest);
	const attempts = await page.$$eval("#attempts tbody tr", (trs) => trs.map((tr) => tr.getAttribute("data-attempt")));
	assert.deepEqual(attempts, task.attempts.map((a) => String(a.attempt)));
	await page.waitForFunction(() => (document.getElementById("stage-log")?.textContent ?? "").includes("COMPLETED"));
	await shot("stage-drilldown");

	// --- retry from a chosen stage
	step("retry from a stage (with the confirmation dialog)");
	const retryFrom = "subtitles";
	await page.goto(`${cfg.base}/console/#/jobs/${job.id}`);
	await page.locator("#retry-stage").waitFor();
	await page.waitForFunction(() => document.querySelector(".job-head")?.getAttribute("data-status") === "completed");
	await page.selectOption("#retry-stage", retryFrom);
	await page.click("#retry-btn");
	await page.locator("dialog#confirm[open]").waitFor();
	await page.click("#confirm-ok");
	await page.waitForFunction(() => document.querySelector(".job-head")?.getAttribute("data-status") !== "completed", null, { timeout: 15000 }).catch(() => {});
	await until("the retried job to complete", async () => {
		const j = await api("GET", `/v1/jobs/${job.id}`);
		return j.status === "completed" && j.attempt === 2 && j;
	}, 90000, 200);
	const again = await api("GET", `/v1/jobs/${job.id}`);
	await page.waitForFunction(
		(n) => document.querySelector(".job-head")?.getAttribute("data-status") === "completed" &&
			document.querySelectorAll("#events li").length === n,
		again.event_seq,
		{ timeout: 30000 },
	);
	const ev2 = await page.evaluate(() => ({
		seqs: [...document.querySelectorAll("#events li")].map((li) => Number(li.getAttribute("data-seq"))),
		dups: Number(document.getElementById("events").getAttribute("data-duplicates")),
		kinds: [...document.querySelectorAll("#events li")].map((li) => li.getAttribute("data-kind")),
	}));
	assert.deepEqual(ev2.seqs, Array.from({ length: again.event_seq }, (_, i) => i + 1));
	assert.equal(ev2.dups, 0);
	assert.ok(ev2.kinds.includes("job.lifecycle.retry"), "no retry event shown");
	const sub = again.stages.find((s) => s.stage === retryFrom);
	assert.equal(sub.attempt, 2, "the retried stage did not run again");
	assert.equal(again.stages.find((s) => s.stage === "tts").attempt, 1, "a stage before it ran again");
	await page.click(`#timeline .tl-row[data-stage="${retryFrom}"] a`);
	await page.waitForFunction(() => document.querySelectorAll("#attempts tbody tr").length === 2, null, { timeout: 15000 });
	await shot("job-retried");

	// --- problem+json shown; resubmit with resume_from
	step("resubmit with resume_from: a 422 is shown, then a valid one runs");
	await page.goto(`${cfg.base}/console/#/jobs/${job.id}`);
	await page.locator(".resume-box summary").click();
	// the job's input is filled in from GET /v1/jobs/{id}/input
	await page.waitForSelector('#resume-input[data-loaded="true"]', { timeout: 10000 });
	assert.deepEqual(JSON.parse(await page.inputValue("#resume-input")), cfg.input, "the job's input was not filled in");
	assert.equal(await page.isVisible("#resume-upload"), false, "a job without an upload offers one");
	await page.selectOption("#resume-stage", "report");
	await page.fill("#resume-params", '{"speed": "fast"}');
	await page.click("#resume-btn");
	await page.click("#confirm-ok");
	await page.waitForFunction(() => /\(422\)/.test(document.getElementById("alerts")?.textContent ?? ""));
	const alertText = await page.locator("#alerts").textContent();
	assert.match(alertText, /speed/, alertText);
	await page.fill("#resume-params", '{"speed": 170}');
	await page.click("#resume-btn");
	await page.click("#confirm-ok");
	await page.waitForFunction((id) => /#\/jobs\/[0-9a-f-]{36}$/.test(location.hash) && !location.hash.includes(id), job.id);
	const newId = /#\/jobs\/([0-9a-f-]{36})$/.exec(page.url())[1];
	const resumed = await until("the resumed job to complete", async () => {
		const j = await api("GET", `/v1/jobs/${newId}`);
		return ["completed", "failed", "cancelled"].includes(j.status) && j;
	}, 60000, 200);
	assert.equal(resumed.status, "completed");
	assert.equal(resumed.stages.find((s) => s.stage === "tts").skip_reason, "reused");
	const resumedInput = await api("GET", `/v1/jobs/${newId}/input`);
	assert.deepEqual(resumedInput.input, cfg.input, "the resubmitted job did not get the input again");
	await page.waitForFunction(() => document.querySelector(".job-head")?.getAttribute("data-status") === "completed", null, { timeout: 20000 });

	// --- cancel a running job
	step("cancel a running job");
	const victim = await api("POST", "/v1/jobs", { pipeline: cfg.pipeline, input: cfg.input });
	await page.goto(`${cfg.base}/console/#/jobs/${victim.id}`);
	await page.waitForFunction(() => !document.getElementById("cancel-btn")?.disabled);
	await page.click("#cancel-btn");
	await page.click("#confirm-ok");
	await page.waitForFunction(() => document.querySelector(".job-head")?.getAttribute("data-status") === "cancelled", null, { timeout: 20000 });

	// --- keyset pages and the filter
	step("jobs page: filter by status and keyset pages");
	await page.goto(`${cfg.base}/console/#/?status=completed&limit=1`);
	await page.locator("tr[data-job-id]").first().waitFor();
	const page1 = await page.$$eval("tr[data-job-id]", (trs) => trs.map((t) => t.getAttribute("data-job-id")));
	await page.click("#next-page");
	await page.waitForFunction((first) => {
		const ids = [...document.querySelectorAll("tr[data-job-id]")].map((t) => t.getAttribute("data-job-id"));
		return ids.length > 0 && !ids.includes(first);
	}, page1[0]);
	const page2 = await page.$$eval("tr[data-job-id]", (trs) => trs.map((t) => t.getAttribute("data-job-id")));
	const listed = (await api("GET", "/v1/jobs?status=completed&limit=2")).data.map((j) => j.id);
	assert.deepEqual([...page1, ...page2], listed);
	const statuses = await page.$$eval("tr[data-job-id] td.status", (tds) => tds.map((t) => t.textContent));
	assert.ok(statuses.every((s) => s === "completed"), statuses.join());

	// --- phone width
	step("phone width");
	await page.setViewportSize({ width: 390, height: 844 });
	await page.goto(`${cfg.base}/console/#/jobs/${job.id}`);
	await page.locator("#timeline .seg-run").first().waitFor();
	const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
	assert.ok(overflow <= 1, `the page scrolls sideways at phone width (${overflow}px)`);
	await shot("job-phone");

	const cspErrors = consoleErrors.filter((e) => /Content Security Policy|Refused to/.test(e));
	assert.deepEqual(cspErrors, [], "CSP violations");
	console.log(JSON.stringify({ ok: true, job: job.id, resumed: newId, console_errors: consoleErrors.length }));
} catch (e) {
	await shot("failure").catch(() => {});
	console.error(e);
	console.error("browser console errors:", consoleErrors.slice(0, 20));
	process.exitCode = 1;
} finally {
	await browser.close();
}
