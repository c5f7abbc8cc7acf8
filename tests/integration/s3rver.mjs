// tests/integration/s3rver.mjs — a local S3 that really checks SigV4
// signatures, for the integration tests: @20minutes/s3rver 5.0.0 with the
// fixes in patches/ (docs: TOOLCHAIN §7; installed by contrib/npm-tools).
//
//   node tests/integration/s3rver.mjs --port 0 --directory /tmp/s3 \
//        --bucket stageline-test --access-key AK --secret SK
//
// Options (each also from the environment):
//   --port N          S3RVER_PORT        0 (default) = any free port
//   --directory DIR   S3RVER_DIRECTORY   required; objects are plain files
//   --bucket NAME     S3RVER_BUCKETS     repeatable / comma-separated
//   --access-key AK   S3RVER_ACCESS_KEY  default S3RVER
//   --secret SK       S3RVER_SECRET      default S3RVER
//   --exit-on-stdin-eof                  exit when stdin closes (so a test
//                                        runner that dies takes us along)
//
// Listens on 127.0.0.1 only, path-style buckets only. With a custom access
// key the built-in S3RVER/S3RVER pair is revoked, so only the configured
// pair is valid. Prints exactly one line on stdout, `ready <port>`, once it
// listens; anything else goes to stderr. SIGTERM/SIGINT: exit 0.
import { createRequire } from 'node:module'
import { mkdirSync } from 'node:fs'
import process from 'node:process'

const require = createRequire(import.meta.url)

function die(msg) {
  process.stderr.write(`s3rver.mjs: ${msg}\n`)
  process.exit(2)
}

let S3rver, AWSAccount
try {
  S3rver = require('@20minutes/s3rver')
  AWSAccount = require('@20minutes/s3rver/lib/models/account')
} catch (e) {
  die(`cannot load @20minutes/s3rver (${e.message}); run contrib/npm-tools`)
}

const env = process.env
const opt = {
  port: env.S3RVER_PORT ?? '0',
  directory: env.S3RVER_DIRECTORY,
  buckets: env.S3RVER_BUCKETS ? env.S3RVER_BUCKETS.split(',') : [],
  accessKey: env.S3RVER_ACCESS_KEY ?? 'S3RVER',
  secret: env.S3RVER_SECRET ?? 'S3RVER',
  stdinEof: false,
}
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  const val = () => {
    if (i + 1 >= argv.length) die(`${a} needs a value`)
    return argv[++i]
  }
  switch (a) {
    case '--port': opt.port = val(); break
    case '--directory': opt.directory = val(); break
    case '--bucket': opt.buckets.push(...val().split(',')); break
    case '--access-key': opt.accessKey = val(); break
    case '--secret': opt.secret = val(); break
    case '--exit-on-stdin-eof': opt.stdinEof = true; break
    default: die(`unknown argument ${a}`)
  }
}
const port = Number(opt.port)
if (!Number.isInteger(port) || port < 0 || port > 65535) die(`bad port ${opt.port}`)
if (!opt.directory) die('--directory (or S3RVER_DIRECTORY) is required')
mkdirSync(opt.directory, { recursive: true })

const { DUMMY_ACCOUNT } = AWSAccount
if (opt.accessKey !== 'S3RVER') DUMMY_ACCOUNT.revokeAccessKey('S3RVER')
DUMMY_ACCOUNT.createKeyPair(opt.accessKey, opt.secret)

const server = new S3rver({
  address: '127.0.0.1',
  port,
  directory: opt.directory,
  silent: true,
  vhostBuckets: false,
  configureBuckets: opt.buckets.filter(Boolean).map((name) => ({ name })),
})

let closing = false
function shutdown() {
  if (closing) return
  closing = true
  // keep-alive sockets would hold close() open: don't wait for them
  setTimeout(() => process.exit(0), 500).unref()
  server.close(() => process.exit(0))
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
if (opt.stdinEof) {
  process.stdin.on('end', shutdown)
  process.stdin.on('error', shutdown)
  process.stdin.resume()
}

try {
  const addr = await server.run()
  process.stdout.write(`ready ${addr.port}\n`)
} catch (e) {
  die(`cannot start: ${e.message}`)
}
