import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

/**
 * shared/src/rules holds the pure decisions: its modules import nothing but each other and use only
 * Web-standard globals, so they run on Node, Deno and edge runtimes, with no permission granted.
 */

const RULES = fileURLToPath(new URL('../shared/src/rules/', import.meta.url));
const files = readdirSync(RULES).filter((name) => name.endsWith('.ts')).sort();

/** The source without comments and string contents (so a word in a comment or a message is no use). */
function code(source: string): string {
  return source
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/(^|[^:\\])\/\/.*$/gm, '$1')
    .replace(/`(?:[^`\\]|\\.)*`|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"/g, '""');
}

/** Every module specifier: static imports and re-exports (`import ... from`, `export ... from`, `import '...'`) and dynamic import(). */
function specifiers(source: string): string[] {
  const found: string[] = [];
  const stripped = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
  for (const match of stripped.matchAll(/\b(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g)) found.push(match[1] ?? '');
  return found;
}

/** Globals of Node or Deno that are no Web standard, or that reach the host (process, file system). */
const FORBIDDEN_GLOBALS = ['Buffer', 'process', 'require', 'module', '__dirname', '__filename', 'global', 'Deno', 'Bun', 'setImmediate'];

describe('shared/src/rules is runtime-neutral', () => {
  it('has the rules in it', () => {
    for (const name of ['address.ts', 'relay-policy.ts', 'dsn-params.ts', 'dsn-policy.ts', 'retry.ts', 'outcomes.ts', 'hysteresis.ts', 'routing.ts', 'queue-id.ts']) {
      assert.ok(files.includes(name), `${name} is missing from shared/src/rules`);
    }
  });

  for (const name of files) {
    it(`${name} imports only modules of the rules folder`, () => {
      const source = readFileSync(join(RULES, name), 'utf8');
      const outside = specifiers(source).filter((specifier) => !/^\.\/[a-z0-9-]+\.ts$/.test(specifier) || !files.includes(specifier.slice(2)));
      assert.deepEqual(outside, [], `${name} imports from outside shared/src/rules`);
    });

    it(`${name} uses no Node or Deno global`, () => {
      const body = code(readFileSync(join(RULES, name), 'utf8'));
      const used = FORBIDDEN_GLOBALS.filter((global) => new RegExp(`(?<![.\\w$])${global}(?![\\w$])`).test(body));
      assert.deepEqual(used, [], `${name} uses ${used.join(', ')}`);
    });
  }

  it('the check itself sees a node: import, an npm package, a path out of the folder and Buffer', () => {
    const bad = "import { x } from 'node:crypto';\nimport type { Y } from 'zod';\nexport { z } from '../runtime/config.ts';\nconst m = await import('./nope.ts');\n";
    assert.deepEqual(specifiers(bad), ['node:crypto', 'zod', '../runtime/config.ts', './nope.ts']);
    assert.equal(/(?<![.\w$])Buffer(?![\w$])/.test(code('const b = Buffer.from("x"); // Buffer')), true);
    assert.equal(/(?<![.\w$])Buffer(?![\w$])/.test(code('// a Buffer in a comment\nconst s = "Buffer";')), false);
  });
});
