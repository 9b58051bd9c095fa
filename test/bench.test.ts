import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { describe, it } from 'node:test';
import { postfixUnavailable } from '../bench/postfix.ts';
import { ROOT } from './support/processes.ts';

const find = (tool: string) => [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/bin'].map((d) => join(d, tool)).find((p) => existsSync(p)) ?? null;
const missing = postfixUnavailable(find);
const skip = missing ? `SKIPPED: Postfix cannot run as a backup MX here: ${missing}` : false;

function bench(argv: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(ROOT, 'bench', 'run.ts'), ...argv], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('exit', (code) => resolve({ code, output }));
  });
}

describe('npm run bench side by side with Postfix', { skip }, () => {
  it('runs Postfix and one process on the same small load and prints both rows with the ratios', async () => {
    const { code, output } = await bench(['--messages', '50', '--sessions', '5', '--rounds', '1', '--mode', 'one']);
    assert.equal(code, 0, output);
    const summary = output.slice(output.indexOf('median of 1 round'));
    assert.notEqual(output.indexOf('median of 1 round'), -1, output);
    const postfix = summary.split('\n').find((line) => line.startsWith('postfix '));
    const ours = summary.split('\n').find((line) => line.startsWith('one-process '));
    assert.ok(postfix, `no Postfix row in:\n${summary}`);
    assert.ok(ours, `no one-process row in:\n${summary}`);
    // accept and flush each as a ratio against Postfix, e.g. "1.23x"
    assert.equal(ours.match(/\b\d+\.\d\dx\b/g)?.length, 2, ours);
    // what the accept and the flush cost in CPU per message, for both rows (MTA / broker [/ primary])
    assert.match(summary, /accept CPU ms\/msg: MTA \/ broker +flush CPU ms\/msg: MTA \/ broker \/ primary/, summary);
    for (const row of [postfix, ours]) assert.match(row, /\d+\.\d\d \/ - +\d+\.\d\d \/ - \/ \d+\.\d\d/, row);
    assert.match(output, /\[postfix\] accept: 50 in /);
    assert.match(output, /\[postfix\] flush: 50 in /);
    assert.match(output, /\[one-process\] flush: 50 in /);
    assert.doesNotMatch(output, /WARNING/);
  });
});

describe('npm run bench without Postfix', () => {
  it('says in one line when Postfix is left out, and prints our figures alone', async () => {
    const { code, output } = await bench(['--messages', '20', '--sessions', '5', '--mode', 'one', '--without-postfix']);
    assert.equal(code, 0, output);
    assert.equal(output.split('\n').filter((line) => line.startsWith('postfix: not run:')).length, 1, output);
    assert.doesNotMatch(output, /\[postfix\]/);
    assert.match(output, /^one-process /m);
  });
});
