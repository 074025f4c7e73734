// Tests of the shim (index.js) against a fake binary: run with `node --test dist/`.
'use strict';

const test = require('node:test');
const assert = require('node:assert');
const childProcess = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const shim = require('./index.js');

const GO_ARCH = { x64: 'amd64', arm64: 'arm64' }[process.arch];
const supported = process.platform === 'linux' && GO_ARCH !== undefined;

// FAKE_BINARY behaves by its first argument.
const FAKE_BINARY = `#!/bin/sh
case "$1" in
exit)
  exit "$2" ;;
echo)
  shift
  printf 'args:'
  for a in "$@"; do printf ' [%s]' "$a"; done
  printf '\\nenv: [%s]\\n' "$SEB_TEST_VALUE" ;;
wait)
  sleep 30 >/dev/null 2>&1 &
  pid=$!
  trap 'kill $pid; echo got-INT; exit 42' INT
  trap 'kill $pid; echo got-TERM; exit 43' TERM
  echo ready
  wait $pid
  echo "no signal"
  exit 1 ;;
die)
  kill -TERM $$ ;;
esac
`;

// makeDist copies the shim into a temporary dist/ and, unless binaryMode is null, adds the fake
// binary for this architecture with that mode.
function makeDist(t, binaryMode = 0o755) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'seb-shim-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.copyFileSync(path.join(__dirname, 'index.js'), path.join(dir, 'index.js'));
  const binary = path.join(dir, `setup-ephemeral-buildkit-linux-${GO_ARCH}`);
  if (binaryMode !== null) {
    fs.writeFileSync(binary, FAKE_BINARY, { mode: binaryMode });
  }
  return { dir, binary };
}

// runShim runs node dist/index.js args...; onStdout may act on output as it arrives.
function runShim(dir, args, { env = {}, onStdout } = {}) {
  return new Promise((resolve, reject) => {
    const proc = childProcess.spawn(process.execPath, [path.join(dir, 'index.js'), ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (chunk) => {
      stdout += chunk;
      if (onStdout) onStdout(stdout, proc);
    });
    proc.stderr.on('data', (chunk) => {
      stderr += chunk;
    });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`shim did not finish; stdout: ${stdout}`));
    }, 20000);
    proc.on('error', reject);
    proc.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

test('binaryPath picks the binary for the architecture', (t) => {
  const { dir, binary } = makeDist(t);
  if (supported) {
    assert.deepStrictEqual(shim.binaryPath(dir, 'linux', process.arch), { path: binary });
  }
  for (const [platform, arch] of [['linux', 'ia32'], ['linux', 'ppc64'], ['darwin', 'arm64'], ['win32', 'x64']]) {
    const found = shim.binaryPath(dir, platform, arch);
    assert.match(found.error, new RegExp(`Linux amd64 and arm64 runners only; this runner is ${platform}/${arch}`));
  }
});

test('exitCode maps signals to 128 + number', () => {
  assert.strictEqual(shim.exitCode(0, null), 0);
  assert.strictEqual(shim.exitCode(3, null), 3);
  assert.strictEqual(shim.exitCode(null, 'SIGINT'), 130);
  assert.strictEqual(shim.exitCode(null, 'SIGTERM'), 143);
  assert.strictEqual(shim.exitCode(null, 'SIGKILL'), 137);
});

test('escapeData escapes workflow command data', () => {
  assert.strictEqual(shim.escapeData('100%\r\nnext'), '100%25%0D%0Anext');
});

test('propagates the exit code', { skip: !supported }, async (t) => {
  const { dir } = makeDist(t);
  for (const code of [0, 1, 7]) {
    const res = await runShim(dir, ['exit', String(code)]);
    assert.strictEqual(res.code, code);
  }
});

test('passes arguments and environment through', { skip: !supported }, async (t) => {
  const { dir } = makeDist(t);
  const res = await runShim(dir, ['echo', 'a b', '', '--flag=$HOME', 'ü'], { env: { SEB_TEST_VALUE: 'multi\nline' } });
  assert.strictEqual(res.code, 0);
  assert.strictEqual(res.stdout, 'args: [a b] [] [--flag=$HOME] [ü]\nenv: [multi\nline]\n');
});

for (const [signal, output, code] of [['SIGINT', 'got-INT', 42], ['SIGTERM', 'got-TERM', 43]]) {
  test(`forwards ${signal} to the binary`, { skip: !supported }, async (t) => {
    const { dir } = makeDist(t);
    let sent = false;
    const res = await runShim(dir, ['wait'], {
      onStdout: (stdout, proc) => {
        if (!sent && stdout.includes('ready')) {
          sent = true;
          proc.kill(signal); // the shim only, as the runner does
        }
      },
    });
    assert.ok(sent, `binary never got ready: ${res.stdout}`);
    assert.strictEqual(res.stdout, `ready\n${output}\n`);
    assert.strictEqual(res.code, code);
  });
}

test('exits with 128 + signal when a signal ends the binary', { skip: !supported }, async (t) => {
  const { dir } = makeDist(t);
  const res = await runShim(dir, ['die']);
  assert.strictEqual(res.code, 143);
});

test('a missing binary is a clear error', { skip: !supported }, async (t) => {
  const { dir, binary } = makeDist(t, null);
  const res = await runShim(dir, ['exit', '0']);
  assert.strictEqual(res.code, 1);
  assert.match(res.stdout, /^::error::/);
  assert.ok(res.stdout.includes(`${binary}, is missing`), res.stdout);
  assert.ok(res.stdout.includes('make dist'), res.stdout);
});

test('a binary that is not executable is a clear error', { skip: !supported }, async (t) => {
  const { dir, binary } = makeDist(t, 0o644);
  const res = await runShim(dir, ['exit', '0']);
  assert.strictEqual(res.code, 1);
  assert.ok(res.stdout.includes(`${binary}, is not executable`), res.stdout);
});
