import type { Buffer } from 'node:buffer';
/** Reading a password for `backupmx hash-password`: never from argv (process lists, shell history). */

export interface PasswordInput extends AsyncIterable<Buffer | string> {
  isTTY?: boolean;
  setRawMode?: (raw: boolean) => unknown;
  on(event: 'data', listener: (chunk: Buffer | string) => void): unknown;
  off(event: 'data', listener: (chunk: Buffer | string) => void): unknown;
  resume(): unknown;
  pause(): unknown;
}

type Out = { write(text: string): unknown };

/** One line typed at a terminal without echo (raw mode): Enter ends it, Backspace deletes, Ctrl-C / Ctrl-D give up. */
function typed(input: PasswordInput, prompt: string, err: Out): Promise<string> {
  err.write(prompt);
  return new Promise((resolve, reject) => {
    let text = '';
    const finish = (error: Error | null) => {
      input.off('data', onData);
      input.setRawMode?.(false);
      input.pause();
      err.write('\n');
      if (error) reject(error);
      else resolve(text);
    };
    const onData = (chunk: Buffer | string) => {
      for (const char of String(chunk)) {
        if (char === '\r' || char === '\n') return finish(null);
        if (char === '\u0003' || char === '\u0004') return finish(new Error('no password given'));
        if (char === '\u007f' || char === '\b') text = text.slice(0, -1);
        else if (char >= ' ') text += char;
      }
    };
    input.setRawMode?.(true);
    input.on('data', onData);
    input.resume();
  });
}

/** From a terminal: asked twice, must match. Otherwise: the first line of stdin. */
export async function readPassword(input: PasswordInput, err: Out): Promise<string> {
  if (input.isTTY) {
    const first = await typed(input, 'Password: ', err);
    const again = await typed(input, 'Again: ', err);
    if (first !== again) throw new Error('the two passwords differ');
    return first;
  }
  let text = '';
  for await (const chunk of input) {
    text += String(chunk);
    if (text.includes('\n')) break;
  }
  return text.split(/\r?\n/)[0] ?? '';
}
