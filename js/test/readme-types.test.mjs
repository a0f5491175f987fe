// The code of README.md, compiled as TypeScript with `tsc --strict` against the package's
// declarations (index.d.ts and the generated pkg/ types): the JS quick start, pasted into
// a .ts file, must compile as it is (with Node's types, since it is a Node script), and
// the typed-handler example must compile in a browser app set up as Vite's `vanilla-ts`
// template is. Needs the package built (scripts/build-web.sh).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { tempDir } from './server.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const readme = readFileSync(join(root, 'README.md'), 'utf8');

/** The first ```<lang> block after the heading `heading`. */
function codeBlock(heading, lang) {
  const section = readme.indexOf(`\n${heading}\n`);
  assert.notEqual(section, -1, `README.md has a heading "${heading}"`);
  const match = readme.slice(section).match(new RegExp('^```' + lang + '\\n([\\s\\S]*?)^```$', 'm'));
  assert.ok(match, `README.md has a \`\`\`${lang} block under "${heading}"`);
  return match[1];
}

/** Runs `tsc -p` on `code` saved as main.ts, with `compilerOptions`; fails with tsc's errors. */
function typeCheck(code, compilerOptions) {
  const dir = tempDir();
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
  writeFileSync(join(dir, 'main.ts'), code);
  const tsconfig = {
    compilerOptions: {
      strict: true,
      noEmit: true,
      skipLibCheck: false,
      // The package by name, as an app that installed it resolves it.
      paths: { 'distributed-events': [join(root, 'index.d.ts')] },
      ...compilerOptions,
    },
    files: ['main.ts'],
  };
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify(tsconfig, null, 2));
  try {
    execFileSync(join(root, 'node_modules/.bin/tsc'), ['-p', dir], { encoding: 'utf8' });
  } catch (error) {
    assert.fail(`tsc --strict refuses README.md's code:\n${error.stdout}${error.stderr}\nthe code:\n${code}`);
  }
}

test('the JS quick start compiles as TypeScript (--strict), with Node types', () => {
  typeCheck(codeBlock('## Quick start', 'js'), {
    target: 'es2022',
    module: 'nodenext',
    moduleResolution: 'nodenext',
    lib: ['es2022'],
    types: ['node'],
    // As @tsconfig/node20 has it; test/fixtures/consumer.ts checks the declarations themselves.
    skipLibCheck: true,
    typeRoots: [join(root, 'node_modules/@types')],
  });
});

test("the typed-handler example compiles in a browser app configured as Vite's vanilla-ts template", () => {
  // create-vite 7's vanilla-ts tsconfig.json, but `types: ["vite/client"]` (no Vite here).
  typeCheck(codeBlock('## TypeScript', 'ts'), {
    target: 'ES2022',
    useDefineForClassFields: true,
    module: 'ESNext',
    lib: ['ES2022', 'DOM', 'DOM.Iterable'],
    types: [],
    skipLibCheck: true,
    moduleResolution: 'bundler',
    allowImportingTsExtensions: true,
    verbatimModuleSyntax: true,
    moduleDetection: 'force',
    noUnusedLocals: true,
    noUnusedParameters: true,
    erasableSyntaxOnly: true,
    noFallthroughCasesInSwitch: true,
    noUncheckedSideEffectImports: true,
  });
});
