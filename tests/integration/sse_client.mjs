#!/usr/bin/env node
// tests/integration/sse_client.mjs — follow one job's events with the
// `eventsource` npm package (a browser-compatible EventSource), for
// tests/integration/test_sse_clients.py.
//
//   node sse_client.mjs URL [--timeout SECONDS] [--min-requests N]
//
// Listens for lifecycle, stage, snapshot, progress, reset and end; closes
// the EventSource on `end` (EventSource would otherwise reconnect by itself
// when the server closes). Any other server-side close (a daemon restart)
// is left to EventSource's own reconnect, which must send Last-Event-ID.
//
// stdout: one JSON object per line, in order:
//   {"t":"request","n":N,"last_event_id":"7"|null}   each HTTP request made
//   {"t":"open","n":N}
//   {"t":"event","n":N,"event":"stage","id":"7"|null,"data":{...}}
//   {"t":"error","n":N,"ready_state":0|2,"code":...,"message":...}
//   {"t":"summary","ok":bool,"problems":[...],"requests":N,"durable":[1,2,...],
//    "ready_state":2,"reason":"end"|"timeout"|"failed"}
// Exit status: 0 when the checks below pass, 1 when one fails, 2 on usage.
//
// Checks: durable events (lifecycle, stage) carry an id and the others none;
// the durable ids over all connections are 1..N (no gap, no duplicate);
// every request after the first carries Last-Event-ID = the last id seen
// before it; at most one snapshot per connection, no reset; `end` came with
// last_seq = N; at least --min-requests requests were made.

import {EventSource} from 'eventsource'

const DURABLE = new Set(['lifecycle', 'stage'])
const TYPES = ['lifecycle', 'stage', 'snapshot', 'progress', 'reset', 'end']

function usage(msg) {
	process.stderr.write(`sse_client.mjs: ${msg}\nusage: node sse_client.mjs URL [--timeout S] [--min-requests N]\n`)
	process.exit(2)
}

const argv = process.argv.slice(2)
let url = null
let timeoutS = 60
let minRequests = 1
for (let i = 0; i < argv.length; i++) {
	const a = argv[i]
	if (a === '--timeout') timeoutS = Number(argv[++i])
	else if (a === '--min-requests') minRequests = Number(argv[++i])
	else if (a.startsWith('--')) usage(`unknown option ${a}`)
	else if (url === null) url = a
	else usage('one URL only')
}
if (!url) usage('no URL')
if (!(timeoutS > 0) || !(minRequests >= 1)) usage('bad --timeout or --min-requests')

function out(obj) {
	process.stdout.write(JSON.stringify(obj) + '\n')
}

let n = 0 // the current request (connection attempt), 1-based
const requests = [] // Last-Event-ID sent with each request (null: none)
const durable = [] // ids of the durable events, in arrival order
const problems = []
const snapshotsPer = new Map()
let lastId = null
let endData = null

// EventSource sends the requests through this fetch: record each request's
// Last-Event-ID (the package's own header, not one we add).
function recordingFetch(input, init) {
	n += 1
	const h = new Headers(init?.headers || {})
	const lei = h.get('last-event-id')
	requests.push(lei)
	out({t: 'request', n, last_event_id: lei})
	if (n > 1 && lei !== lastId) {
		problems.push(`request ${n} sent Last-Event-ID ${JSON.stringify(lei)}, want ${JSON.stringify(lastId)}`)
	}
	return fetch(input, init)
}

const es = new EventSource(url, {fetch: recordingFetch})

let finished = false
function finish(reason) {
	if (finished) return
	finished = true
	clearTimeout(timer)
	es.close()
	if (reason !== 'end') problems.push(`stopped by ${reason} before event: end`)
	const want = durable.map((_, i) => i + 1)
	if (JSON.stringify(durable) !== JSON.stringify(want)) {
		problems.push(`durable ids ${JSON.stringify(durable)} are not 1..${durable.length}`)
	}
	if (endData && endData.last_seq !== durable.length) {
		problems.push(`end.last_seq ${endData.last_seq} but ${durable.length} durable events seen`)
	}
	if (requests.length < minRequests) {
		problems.push(`${requests.length} request(s), want at least ${minRequests}`)
	}
	if (es.readyState !== EventSource.CLOSED) problems.push(`readyState ${es.readyState} after close()`)
	out({
		t: 'summary',
		ok: problems.length === 0,
		problems,
		requests: requests.length,
		last_event_ids: requests,
		durable,
		ready_state: es.readyState,
		reason,
	})
	process.exitCode = problems.length === 0 ? 0 : 1
	// undici may keep an idle socket around; nothing else is pending
	setImmediate(() => process.exit(process.exitCode))
}

es.onopen = () => out({t: 'open', n})

es.onerror = (ev) => {
	out({t: 'error', n, ready_state: es.readyState, code: ev.code ?? null, message: ev.message ?? null})
	// CLOSED here means EventSource gave up (a non-200 answer, a wrong
	// Content-Type): it will not reconnect.
	if (es.readyState === EventSource.CLOSED) {
		problems.push(`EventSource failed for good on request ${n}: ${ev.code ?? ''} ${ev.message ?? ''}`)
		finish('failed')
	}
}

for (const type of TYPES) {
	es.addEventListener(type, (ev) => {
		if (finished) return
		let data = null
		try {
			data = JSON.parse(ev.data)
		} catch {
			problems.push(`event ${type} on request ${n}: data is not JSON: ${ev.data.slice(0, 200)}`)
		}
		const id = ev.lastEventId === '' ? null : ev.lastEventId
		out({t: 'event', n, event: type, id, data})
		if (DURABLE.has(type)) {
			if (id === null) problems.push(`durable ${type} event without id on request ${n}`)
			else {
				durable.push(Number(id))
				lastId = id
			}
		} else if (id !== null) {
			problems.push(`${type} event with id ${id} on request ${n}`)
		}
		if (type === 'snapshot') {
			snapshotsPer.set(n, (snapshotsPer.get(n) || 0) + 1)
			if (snapshotsPer.get(n) > 1) problems.push(`request ${n} got more than one snapshot`)
		}
		if (type === 'reset') problems.push(`reset on request ${n}: ${ev.data}`)
		if (type === 'end') {
			endData = data
			finish('end')
		}
	})
}

const timer = setTimeout(() => finish('timeout'), timeoutS * 1000)
