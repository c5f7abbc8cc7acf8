// tests/integration/sigv4_crosscheck.mjs — signs N randomized S3 requests
// with stageline's C signer (tests/harness/sigv4sign, src/store/sigv4.c) and
// with @smithy/signature-v4 (the signer inside @aws-sdk/client-s3), and
// compares the results: Authorization header (and so the signature) for
// header signing, the whole query string for presigned URLs.
//
//   node tests/integration/sigv4_crosscheck.mjs --harness build/.../sigv4sign \
//        [--n 2000] [--seed 1] [--report 20]
//
// stdout: one JSON line {"compared", "sign", "presign", "mismatches",
// "seed"}. Every mismatch is reported on stderr (the first --report ones in
// full: the input and both canonical requests). Exit 0 when there is none.
//
// Wire convention — both signers get the SAME request as sent on the wire:
//   * The object key is generated decoded (spaces, multi-byte UTF-8, ~ + ! *
//     ' ( ) and a literal "%"), then each '/'-separated segment is encoded
//     with RFC 3986 rules (encodeURIComponent plus ! ' ( ) * -> %XX; '~'
//     stays) — what @aws-sdk/client-s3's serializer puts in the path. That
//     encoded path goes verbatim to both: the C signer as `path` (it
//     percent-decodes and re-encodes each segment once, SIGV4_S3), smithy as
//     request.path with uriEscapePath: false (client-s3 sets
//     signingEscapePath: false, so smithy signs the path as given).
//   * The query is generated as decoded (name, value|null) pairs. The C
//     signer gets the wire string (each name and value RFC 3986-encoded,
//     '&'-joined, a null value written as a bare name); smithy gets the
//     decoded object {name: value | [values]} (null -> "", repeated names
//     -> an array), which it encodes with the same rules.
//   * Headers: smithy takes an object, so names are unique case-
//     insensitively; names smithy never signs (user-agent, expect, proxy-*,
//     ...) and `date` (smithy drops it) are not generated. smithy adds
//     x-amz-date and x-amz-security-token itself; the C signer signs exactly
//     the list it is given, so its list carries them explicitly.
//     x-amz-content-sha256 is a header for both (applyChecksum: false, so
//     smithy takes the payload hash from it).
//   * Sloppy variant (~15%): C gets an equivalent but non-canonical wire
//     form of the same path and query (lowercase hex, raw ! ' ( ) * and
//     UTF-8, %7E for '~'); a server decodes and re-encodes, so C must
//     still produce what smithy signs for the RFC 3986 form.
//   * Presign: a GET with only `host` signed and UNSIGNED-PAYLOAD (smithy
//     gets a non-buffer body for that), no X-Amz-Content-Sha256 parameter.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import process from 'node:process'

const require = createRequire(import.meta.url)
const { SignatureV4, getCanonicalHeaders, getCanonicalQuery } = require('@smithy/signature-v4')
const { Sha256 } = require('@aws-crypto/sha256-js')

// ---------------------------------------------------------------- options
const opt = { harness: process.env.SIGV4SIGN, n: 2000, seed: 1, report: 20 }
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i]
  const v = process.argv[++i]
  if (a === '--harness') opt.harness = v
  else if (a === '--n') opt.n = Number(v)
  else if (a === '--seed') opt.seed = Number(v)
  else if (a === '--report') opt.report = Number(v)
  else {
    process.stderr.write(`sigv4_crosscheck: unknown argument ${a}\n`)
    process.exit(2)
  }
}
if (!opt.harness) {
  process.stderr.write('sigv4_crosscheck: --harness (or SIGV4SIGN) is required\n')
  process.exit(2)
}

// ---------------------------------------------------------------- PRNG
function mulberry32(a) {
  return () => {
    a = (a + 0x6d2b79f5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
const rnd = mulberry32(opt.seed)
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1))
const pick = (arr) => arr[Math.floor(rnd() * arr.length)]
const chance = (p) => rnd() < p
const times = (n, f) => Array.from({ length: n }, (_, i) => f(i))

// RFC 3986: what AWS SDKs and smithy's escapeUri use
const esc = (s) =>
  encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)

// A different but equivalent wire form ("sloppy" encoding some clients
// send): lowercase hex, sub-delimiters ! ' ( ) * left raw, '~' as %7E,
// non-ASCII left as raw UTF-8. Servers decode and re-encode, so the C
// signer must canonicalize it to what smithy signs for the RFC 3986 form.
const lowerHex = (s) => s.replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase())
const sloppyEsc = (s) =>
  [...s]
    .map((ch) => {
      if ("!'()*".includes(ch) || ch.codePointAt(0) > 0x7f) return chance(0.5) ? ch : lowerHex(esc(ch))
      if (ch === '~') return '%7E'
      return chance(0.3) ? lowerHex(esc(ch)) : esc(ch)
    })
    .join('')

// ---------------------------------------------------------------- generators
const ALNUM = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'
const KEY_CHARS = [
  ...ALNUM, ...ALNUM, ' ', ' ', '~', '+', '!', '*', "'", '(', ')', '%', '-', '_', '.', '=',
  '&', '$', '@', ',', ';', ':', '#', '?', '[', ']', '"', '<', '>', '^', '`', '{', '}', '|',
  '\\', 'é', 'ü', 'ß', 'ø', '日', '本', '語', '€', '😀', '🚀', 'Ω',
]
const LITERAL_PCT = ['%2F', '%20', '%41', '%', '%%', '%zz', '100%']

function segment() {
  if (chance(0.04)) return pick(['.', '..', ''])
  let s = times(int(1, 12), () => pick(KEY_CHARS)).join('')
  if (chance(0.15)) s += pick(LITERAL_PCT)
  return s
}

// [path for smithy (RFC 3986), path on the wire for C (the same, or sloppy)]
function wirePath(bucket, sloppy) {
  const r = rnd()
  if (r < 0.03) return ['/', '/']
  if (r < 0.06) return [`/${bucket}`, `/${bucket}`]
  if (r < 0.09) return [`/${bucket}/`, `/${bucket}/`]
  const segs = times(int(1, 4), segment)
  const tail = chance(0.08) ? '/' : ''
  return [`/${bucket}/${segs.map(esc).join('/')}${tail}`,
    `/${bucket}/${segs.map(sloppy ? sloppyEsc : esc).join('/')}${tail}`]
}

const QNAMES = [
  'prefix', 'delimiter', 'list-type', 'continuation-token', 'max-keys', 'uploads', 'uploadId',
  'partNumber', 'versionId', 'x-id', 'response-content-type', 'response-content-disposition',
  'tagging', 'acl', 'start-after', 'a', 'A', 'b', 'a b', 'ü', 'k~', 'k+1', 'n!', "q'", 'x(1)',
  'star*', 'pct%', 'eq=', 'amp&', 'Z', '日本',
]
const QVALS = [
  '', 'a', 'abc', 'a b', 'a  b', 'a+b', 'a!b', "it's", '(x)', 'x*', '~u', 'a/b/c', '%', '%41',
  '100%', 'a=b', 'a&b', 'é', '日本語', '😀', 'x y+z', '#frag', '?q', ' lead', 'trail ', 'UPPER',
]
function queryPairs(forPresign) {
  if (chance(0.35)) return []
  const pairs = []
  const n = int(1, 5)
  for (let i = 0; i < n; i++) {
    const name = chance(0.2) && pairs.length ? pick(pairs)[0] : pick(QNAMES) // repeats
    let value
    if (chance(0.12)) value = null // bare name
    else if (chance(0.2)) value = times(int(1, 8), () => pick(KEY_CHARS)).join('')
    else value = pick(QVALS)
    pairs.push([name, value])
  }
  if (forPresign) return pairs.filter(([k]) => !/^x-amz-/i.test(k))
  return pairs
}
const wireQuery = (pairs, e = esc) =>
  pairs.map(([k, v]) => (v === null ? e(k) : `${e(k)}=${e(v)}`)).join('&')
function queryObject(pairs) {
  const q = {}
  for (const [k, v] of pairs) {
    const val = v ?? ''
    if (!(k in q)) q[k] = val
    else if (Array.isArray(q[k])) q[k].push(val)
    else q[k] = [q[k], val]
  }
  return q
}

const HNAMES = [
  'Content-Type', 'content-type', 'CONTENT-TYPE', 'Content-MD5', 'Content-Disposition',
  'Content-Encoding', 'Content-Language', 'Content-Length', 'Range', 'If-None-Match',
  'If-Match', 'Expires', 'x-amz-acl', 'X-Amz-Storage-Class', 'x-amz-tagging',
  'X-Amz-Meta-Author', 'x-amz-meta-foo', 'X-AMZ-META-Mixed_Case', 'x-amz-meta-a.b',
  'x-amz-meta-empty', 'X-Custom', 'x-stageline-job', 'X-Amz-Server-Side-Encryption',
]
const HVALS = [
  'text/plain', 'application/octet-stream', 'text/plain; charset=utf-8', 'a   b', '  lead',
  'trail  ', '  both   inner   runs  ', 'tab\there', '\t tabs \t mixed\t', '', '   ',
  'naïve 日本 😀', 'attachment; filename="a  b.txt"', 'bytes=0-9', '"etag-1"', 'x,y , z',
  'k=v&k2=v2', 'AES256', 'private', '1024', 'UPPER lower', '~!@#$%^&*()_+',
]
function headerList() {
  const out = []
  const seen = new Set()
  for (let i = int(0, 6); i > 0; i--) {
    const name = pick(HNAMES)
    if (seen.has(name.toLowerCase())) continue
    seen.add(name.toLowerCase())
    const value = chance(0.2) ? times(int(0, 10), () => pick([...KEY_CHARS, ' ', '\t'])).join('') : pick(HVALS)
    out.push([name, value])
  }
  return out
}

const hex = (n) => times(n, () => '0123456789abcdef'[int(0, 15)]).join('')
const B64 = ALNUM + '+/='
const REGIONS = ['us-east-1', 'eu-west-3', 'ap-southeast-2', 'us-gov-west-1', 'local']
const BUCKETS = ['stageline-test', 'examplebucket', 'a.b-c', 'bucket123']

function genRequest(id) {
  const presign = chance(0.2)
  const sloppy = chance(0.15)
  const bucket = pick(BUCKETS)
  const pairs = queryPairs(presign)
  const [path, cPath] = wirePath(bucket, sloppy)
  const host = pick(['127.0.0.1:9000', `${bucket}.s3.amazonaws.com`, 's3.eu-west-3.amazonaws.com', 'localhost'])
  const creds = {
    accessKeyId: pick(['AKIA', 'ASIA', 'AKID']) + times(16, () => pick('ABCDEFGHIJKLMNOPQRSTUVWXYZ234567')).join(''),
    secretAccessKey: times(40, () => pick(B64)).join(''),
  }
  if (chance(0.3)) creds.sessionToken = times(int(20, 200), () => pick(B64)).join('')
  return {
    id,
    presign,
    method: presign ? 'GET' : pick(['GET', 'PUT', 'HEAD', 'DELETE', 'POST']),
    sloppy,
    path,
    cPath,
    pairs,
    cQuery: wireQuery(pairs, sloppy ? sloppyEsc : esc),
    host,
    headers: headerList(),
    payload: pick([hex(64), hex(64), 'UNSIGNED-PAYLOAD', 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855']),
    region: pick(REGIONS),
    time: int(946684800, 1924991999), // 2000 .. 2030
    expires: int(1, 604800),
    creds,
  }
}

// ---------------------------------------------------------------- C side
const amzDate = (t) => new Date(t * 1000).toISOString().replace(/[-:]|\.\d{3}/g, '')
function cInput(r) {
  const base = {
    id: r.id,
    path: r.cPath,
    query: r.cQuery,
    region: r.region,
    service: 's3',
    access_key: r.creds.accessKeyId,
    secret: r.creds.secretAccessKey,
    time: r.time,
  }
  if (r.creds.sessionToken) base.session_token = r.creds.sessionToken
  if (r.presign) return { ...base, host: r.host, expires: r.expires }
  const headers = [['Host', r.host], ...r.headers, ['x-amz-date', amzDate(r.time)],
    ['x-amz-content-sha256', r.payload]]
  if (r.creds.sessionToken) headers.push(['X-Amz-Security-Token', r.creds.sessionToken])
  return { ...base, method: r.method, headers, payload_sha256: r.payload }
}

// ---------------------------------------------------------------- smithy side
async function smithySign(r) {
  const signer = new SignatureV4({
    service: 's3', region: r.region, sha256: Sha256, credentials: r.creds,
    uriEscapePath: false, applyChecksum: false,
  })
  const date = new Date(r.time * 1000)
  if (r.presign) {
    const req = {
      method: 'GET', protocol: 'http:', hostname: r.host, path: r.path,
      query: queryObject(r.pairs), headers: { host: r.host }, body: {},
    }
    const out = await signer.presign(req, { signingDate: date, expiresIn: r.expires })
    const { 'X-Amz-Signature': sig, ...rest } = out.query
    const canon = signer.createCanonicalRequest({ ...out, query: rest },
      getCanonicalHeaders(out), 'UNSIGNED-PAYLOAD')
    return { query: `${getCanonicalQuery({ query: rest })}&X-Amz-Signature=${sig}`, signature: sig, canonical_request: canon }
  }
  const headers = { host: r.host }
  for (const [k, v] of r.headers) headers[k] = v
  headers['x-amz-content-sha256'] = r.payload
  const req = { method: r.method, protocol: 'http:', hostname: r.host, path: r.path, query: queryObject(r.pairs), headers }
  const out = await signer.sign(req, { signingDate: date })
  const { authorization, ...signed } = out.headers
  const canon = signer.createCanonicalRequest({ ...out, headers: signed },
    getCanonicalHeaders({ headers: signed }), r.payload)
  return { authorization, signature: authorization.replace(/.*Signature=/, ''), canonical_request: canon }
}

// ---------------------------------------------------------------- run
const reqs = times(opt.n, genRequest)
const inputs = reqs.map(cInput)
const run = spawnSync(opt.harness, [], {
  input: inputs.map((x) => JSON.stringify(x)).join('\n') + '\n',
  maxBuffer: 1 << 30,
  encoding: 'utf8',
})
if (run.status !== 0) {
  process.stderr.write(`sigv4_crosscheck: ${opt.harness} exited ${run.status} ${run.signal ?? ''}\n${run.stderr}\n`)
  process.exit(1)
}
if (run.stderr) process.stderr.write(run.stderr)
const cOut = run.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l))
if (cOut.length !== reqs.length) {
  process.stderr.write(`sigv4_crosscheck: harness answered ${cOut.length} of ${reqs.length} lines\n`)
  process.exit(1)
}

let mismatches = 0, nsign = 0, npresign = 0, nsloppy = 0
for (let i = 0; i < reqs.length; i++) {
  const r = reqs[i], c = cOut[i]
  if (c.id !== r.id) throw new Error(`harness answer ${i} has id ${c.id}`)
  const s = await smithySign(r)
  if (r.sloppy) nsloppy++
  if (r.presign) npresign++
  else nsign++
  let what = null
  if (!c.ok) what = `C signer refused it: ${c.error}`
  else if (r.presign && c.query !== s.query) what = 'presigned query differs'
  else if (!r.presign && c.authorization !== s.authorization) what = 'Authorization differs'
  if (!what) continue
  mismatches++
  if (mismatches <= opt.report) {
    process.stderr.write(
      `--- mismatch #${mismatches} (request ${r.id}, ${r.presign ? 'presign' : 'sign'}${r.sloppy ? ', sloppy wire form' : ''}): ${what}\n` +
      `input (C): ${JSON.stringify(inputs[i])}\n` +
      `smithy path: ${r.path}  query: ${JSON.stringify(queryObject(r.pairs))}\n` +
      `C       ${r.presign ? 'query' : 'authorization'}: ${r.presign ? c.query : c.authorization}\n` +
      `smithy  ${r.presign ? 'query' : 'authorization'}: ${r.presign ? s.query : s.authorization}\n` +
      `C canonical request:\n${c.canonical_request}\n` +
      `smithy canonical request:\n${s.canonical_request}\n`)
  }
}
process.stdout.write(JSON.stringify({ compared: reqs.length, sign: nsign, presign: npresign, sloppy: nsloppy, mismatches, seed: opt.seed }) + '\n')
process.exit(mismatches ? 1 : 0)
