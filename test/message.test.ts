import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { describe, it } from 'node:test';
import { countReceived, headerSection, parseHeaders } from '../shared/src/mail/message.ts';
import { newQueueId } from '../shared/src/rules/queue-id.ts';

const crlf = (...lines: string[]) => Buffer.from(lines.join('\r\n'));
const lf = (...lines: string[]) => Buffer.from(lines.join('\n'));

describe('header section', () => {
  it('ends at the first empty line (CRLF)', () => {
    assert.equal(headerSection(crlf('Subject: a', 'From: b@example.test', '', 'body', '', 'more')).toString(), 'Subject: a\r\nFrom: b@example.test\r\n\r\n');
  });

  it('ends at the first empty line (LF only)', () => {
    assert.equal(headerSection(lf('Subject: a', 'From: b@example.test', '', 'body', '', 'more')).toString(), 'Subject: a\nFrom: b@example.test\n\n');
  });

  it('is the whole message when there is no body', () => {
    const raw = crlf('Subject: a', 'From: b@example.test', '');
    assert.equal(headerSection(raw).toString(), raw.toString());
  });

  it('does not mistake a blank line in the body for the end of the header section', () => {
    const raw = crlf('Subject: a', '', 'line\n\nline');
    assert.equal(headerSection(raw).toString(), 'Subject: a\r\n\r\n');
  });
});

describe('parseHeaders', () => {
  it('parses a normal header section', () => {
    const headers = parseHeaders(crlf('Subject: Hello', 'From: a@example.test', '', 'body'));
    assert.ok(headers);
    assert.equal(headers.getFirst('subject'), 'Hello');
  });

  it('returns null for a message that does not start with a header field', () => {
    for (const raw of [
      crlf('', 'Subject: after a blank line', '', 'body'),
      lf('From sender@example.test Sat Nov 28 09:00:00 2026', 'Subject: mbox', '', 'body'),
      crlf(' continuation first: x', 'Subject: y', '', 'body'),
      crlf('hello there', '', 'Received: from x'),
      crlf(': no name', '', 'body'),
      Buffer.from(''),
    ]) {
      assert.equal(parseHeaders(raw), null, JSON.stringify(raw.toString()));
    }
  });
});

describe('countReceived', () => {
  it('counts every Received header field', () => {
    assert.equal(countReceived(crlf('Received: from a by b; Sat, 28 Nov 2026 09:00:00 +0000', 'received: from c by d; Sat, 28 Nov 2026 09:00:01 +0000', 'RECEIVED: from e by f; Sat, 28 Nov 2026 09:00:02 +0000', 'Subject: x', '', 'body')), 3);
  });

  it('counts no Received when there is none', () => {
    assert.equal(countReceived(crlf('Subject: x', 'From: a@example.test', '', 'body')), 0);
  });

  it('counts a folded Received header once', () => {
    const raw = crlf(
      'Received: from client.origin.test ([192.0.2.1])',
      '\tby backup.example.test (backupmx) with ESMTP id 1',
      '\tfor <user@example.test>; Sat, 28 Nov 2026 09:22:52 +0000',
      'Received: from a',
      '  by b; Sat, 28 Nov 2026 09:22:50 +0000',
      'Subject: x',
      '',
      'body',
    );
    assert.equal(countReceived(raw), 2);
  });

  it('ignores Received: lines in the body', () => {
    const raw = crlf('Received: from a by b; Sat, 28 Nov 2026 09:00:00 +0000', 'Subject: forwarded', '', 'Received: from c by d; x', 'Received: from e by f; y', '', 'Received: from g');
    assert.equal(countReceived(raw), 1);
  });

  it('does not count look-alike fields', () => {
    assert.equal(countReceived(crlf('X-Received: by 2002:a05::1', 'ARC-Received: x', 'Received-SPF: pass', 'Subject: x', '', '')), 0);
  });

  it('works on LF-only messages', () => {
    assert.equal(countReceived(lf('Received: from a', '\tby b; Sat, 28 Nov 2026 09:00:00 +0000', 'Received: from c by d; x', 'Subject: x', '', 'Received: in body')), 2);
  });

  it('counts nothing for a message that is not mail', () => {
    assert.equal(countReceived(crlf('not a header', 'Received: from a', '', 'body')), 0);
  });
});

describe('queue ids', () => {
  it('are unique over 10000 calls', () => {
    const ids = new Set(Array.from({ length: 10_000 }, () => newQueueId()));
    assert.equal(ids.size, 10_000);
  });

  it('are unique within one millisecond', () => {
    const now = Date.now();
    const ids = new Set(Array.from({ length: 1000 }, () => newQueueId(now)));
    assert.equal(ids.size, 1000);
  });

  it('use only digits and upper-case letters, at a fixed length', () => {
    for (let i = 0; i < 1000; i++) {
      const id = newQueueId();
      assert.match(id, /^[0-9A-Z]{17}$/, id);
    }
    assert.match(newQueueId(0), /^[0-9A-Z]{17}$/);
  });

  it('sort in time order', () => {
    const start = Date.UTC(2026, 10, 28, 9, 0, 0);
    const times = [0, 1, 31, 32, 1000, start, start + 1, start + 31, start + 32, start + 1023, start + 1024, start + 86_400_000, Date.UTC(2100, 0, 1)];
    const ids = times.map((now) => newQueueId(now));
    assert.deepEqual([...ids].sort(), ids);
    assert.equal(new Set(ids).size, ids.length);
  });
});
