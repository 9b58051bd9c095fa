import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { createRequire } from 'node:module';
import { describe, it } from 'node:test';
import { authenticate } from 'mailauth';
import { type HeaderScanState, originalProcessChunk, processChunk } from '../services/ingress/src/mailauth-header-scan.ts';

/**
 * The header scan that replaces mailauth's byte-by-byte one (issue 9: ingress CPU) must split every
 * message where mailauth's own does: same header section, same body bytes, whatever the line ends
 * and wherever the sender's chunks break.
 */
function run(scan: typeof processChunk, message: Buffer, cuts: number[]) {
  const seen = { headers: [] as string[], body: [] as string[] };
  const parser: HeaderScanState = {
    state: 'header',
    stateBytes: [],
    headerBytes: 0,
    headerChunks: [],
    async emitHeaders(chunk?: Buffer) {
      this.state = 'body';
      if (chunk) this.headerChunks.push(chunk);
      seen.headers.push(Buffer.concat(this.headerChunks).toString('latin1'));
    },
    async nextChunk(chunk: Buffer) {
      seen.body.push(chunk.toString('latin1'));
    },
  };
  return (async () => {
    let from = 0;
    for (const cut of [...cuts, message.length]) {
      await scan.call(parser, message.subarray(from, cut));
      from = cut;
    }
    return { headers: seen.headers, body: seen.body.join(''), headerBytes: parser.headerBytes, state: parser.state, pending: Buffer.concat(parser.headerChunks).toString('latin1') };
  })();
}

const MESSAGES = {
  crlf: 'From: a@origin.test\r\nSubject: one\r\n folded\r\n\r\nbody line\r\n\r\nsecond\r\n',
  lf: 'From: a@origin.test\nSubject: two\n\nbody\n',
  'bare LF after CRLF': 'From: a@origin.test\r\n\nbody\r\n',
  'CR LF CR LF inside a field value': 'Subject: x\r\r\nX: y\r\n\r\nbody',
  'empty header section (CRLF first)': '\r\nbody only\r\n',
  'empty header section (LF first)': '\nbody only\n',
  'header only, no empty line': 'Subject: no body\r\nX-A: b\r\n',
  'lone CR lines': 'A: b\r\r\rC: d\r\n\r\n\r\nafter\r\n',
};

describe('mailauth header scan: the header section ends where mailauth says', () => {
  for (const [name, text] of Object.entries(MESSAGES)) {
    it(`${name}: same split as mailauth's own scan, for every way the message may be cut in two or three`, async () => {
      const message = Buffer.from(text, 'latin1');
      for (let a = 0; a <= message.length; a++) {
        for (const b of [a, Math.min(message.length, a + 1), Math.min(message.length, a + 2)]) {
          const cuts = [a, b];
          assert.deepEqual(await run(processChunk, message, cuts), await run(originalProcessChunk, message, cuts), `cut at ${cuts.join(', ')}`);
        }
      }
    });
  }

  it('is what authenticate() uses, and its verdict on a DKIM-signed message still reads the body (body hash checked)', async () => {
    // A signature whose body hash (bh=) cannot match: mailauth reports that only once it has hashed the body after the header section.
    const signed = Buffer.from(
      'DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=origin.test; s=sel; h=from:subject; bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAA\r\nFrom: a@origin.test\r\nSubject: s\r\n\r\nbody\r\n',
      'latin1',
    );
    const resolver = async (name: string, type: string) => {
      if (type === 'TXT' && name === 'sel._domainkey.origin.test') return [['v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwnBBR5ER9R5PmxZLOIfG0ecSeBjHf+bnQoUmoEgFhYZMbvQjL1ZzUTDNKVZzzUGjTzRl6Ghux0avECv8x7XxRxr1DAPPu4d2tQbdfDnzfCP3GjwkiXGmQcI4LrdB9Vu4SsgDtkScp+R6JxY3yxZ4yuVyJ7lFBjoq7UzzXJIEkfZg0eZiiVdYQXfrnUw2xoGZ3yDQMEgcWQq3xPHCKbJcqh0VYQqtWDbA2K8fl98lL6uoc6efb1rVxSc0oR2tSDpEiWP8rrsd4vMR0tzDLlIF5RQ3pB1EebnN0GU55ypgezNUhdJ1q1vBvMr9jBOHHsWn9Aml5yS0K0zpZjDb4Lj7mQIDAQAB']];
      const error = Object.assign(new Error(`no ${type} for ${name}`), { code: 'ENOTFOUND' });
      throw error;
    };
    const result = await authenticate(signed, { ip: '127.0.0.1', helo: 'origin.test', sender: 'a@origin.test', mta: 'backup.test', resolver: resolver as never, disableBimi: true });
    const dkim = result.dkim.results[0];
    assert.equal(dkim?.status.result, 'neutral', JSON.stringify(result.dkim.results));
    assert.match(String(dkim?.status.comment), /body hash did not verify/);
    const { MessageParser } = createRequire(import.meta.url)('mailauth/lib/dkim/message-parser.js') as { MessageParser: { prototype: { processChunk: unknown } } };
    assert.equal(MessageParser.prototype.processChunk, processChunk, 'the parser mailauth verifies with scans with ours');
  });
});
