// The store thread's entry (store-thread.ts starts it). Plain JavaScript on purpose: it turns on
// Node's compile cache before any TypeScript is loaded, so that a thread started from a warm cache
// never loads the type stripper (a WebAssembly module of about 20 MiB in each thread that strips
// types; issue 9). Where there is no compile cache (Deno, or a cache directory that cannot be
// written), the thread simply strips as the main thread does.
import module from 'node:module';

if (typeof module.enableCompileCache === 'function') module.enableCompileCache();
await import('./store-thread-main.ts');
