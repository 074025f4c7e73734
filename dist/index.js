// setup-ephemeral-buildkit: the action's entry point for both `main` and `post`.
//
// A tiny, dependency-free shim: it starts the prebuilt Go binary for the runner's architecture,
// dist/setup-ephemeral-buildkit-linux-<amd64|arm64>, with the same arguments, environment and
// standard streams, forwards SIGINT and SIGTERM to it (on cancel the runner signals only this node
// process: SIGINT, SIGTERM 7.5 s later, SIGKILL 2.5 s after that), and exits with the binary's exit
// code, or 128 + the signal's number if a signal ended it. The binary tells main from post itself.
//
// The binaries are build outputs (`make dist`); release commits carry them.
'use strict';

const childProcess = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const ARCHITECTURES = { x64: 'amd64', arm64: 'arm64' };
const FORWARDED_SIGNALS = ['SIGINT', 'SIGTERM'];

// escapeData escapes a workflow command's message as the runner expects.
function escapeData(s) {
  return String(s).replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}

// binaryPath returns {path} of the binary for this platform and architecture, or {error} saying
// why there is none.
function binaryPath(dir, platform, arch) {
  const goArch = ARCHITECTURES[arch];
  if (platform !== 'linux' || !goArch) {
    return {
      error: `setup-ephemeral-buildkit runs on Linux amd64 and arm64 runners only; this runner is ${platform}/${arch}.`,
    };
  }
  const file = path.join(dir, `setup-ephemeral-buildkit-linux-${goArch}`);
  try {
    fs.accessSync(file, fs.constants.X_OK);
  } catch (err) {
    const why = err.code === 'ENOENT' ? 'is missing' : `is not executable (${err.code || err.message})`;
    return {
      error:
        `setup-ephemeral-buildkit: the binary for linux/${goArch}, ${file}, ${why}. ` +
        'Build it with `make dist` in a checkout of the action; release commits carry the binaries in dist/.',
    };
  }
  return { path: file };
}

// exitCode maps how the child ended to this process's exit code.
function exitCode(code, signal) {
  if (code !== null && code !== undefined) {
    return code;
  }
  const number = (signal && os.constants.signals[signal]) || 0;
  return 128 + number;
}

function main() {
  const found = binaryPath(__dirname, process.platform, process.arch);
  if (found.error) {
    process.stdout.write(`::error::${escapeData(found.error)}${os.EOL}`);
    process.exit(1);
  }

  const child = childProcess.spawn(found.path, process.argv.slice(2), {
    stdio: 'inherit',
    env: process.env,
  });

  // Installing handlers also keeps node alive on these signals until the child has exited.
  for (const signal of FORWARDED_SIGNALS) {
    process.on(signal, () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
      }
    });
  }

  child.on('error', (err) => {
    process.stdout.write(`::error::${escapeData(`setup-ephemeral-buildkit: starting ${found.path}: ${err.message}`)}${os.EOL}`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => {
    process.exit(exitCode(code, signal));
  });
}

if (require.main === module) {
  main();
}

module.exports = { binaryPath, exitCode, escapeData };
