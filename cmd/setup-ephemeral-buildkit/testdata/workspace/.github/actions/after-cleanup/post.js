// Lists every path left under RUNNER_TEMP into $E2E_RESULTS/after-cleanup.txt.
'use strict';
const fs = require('fs');
const path = require('path');

function walk(dir, out) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    out.push(full);
    if (entry.isDirectory()) {
      walk(full, out);
    }
  }
  return out;
}

const left = walk(process.env.RUNNER_TEMP, []);
fs.writeFileSync(path.join(process.env.E2E_RESULTS, 'after-cleanup.txt'), left.join('\n') + '\n');
console.log(`after-cleanup: ${left.length} path(s) under RUNNER_TEMP`);
