#!/usr/bin/env node
// The `backupmx` command. Plain JavaScript so that an old Node.js gets a clear line instead of a
// TypeScript syntax error; the command itself is TypeScript run by Node's type stripping.
if (!process.features?.typescript) {
  process.stderr.write(
    `backupmx: needs Node.js 24 (this is ${process.version}); run it as "npx backupmx" in the backupmx directory, or install Node.js 24\n`,
  );
  process.exit(69);
}
const { run } = await import('../src/cli/main.ts');
process.exitCode = await run(process.argv.slice(2), process.env, process.stdout, process.stderr);
