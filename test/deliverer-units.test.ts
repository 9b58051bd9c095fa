import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { toOutcomes, verdicts, type SendError } from '../shared/src/rules/outcomes.ts';
import { nextAttemptAt } from '../shared/src/rules/retry.ts';

const MINUTE = 60_000;
const DEFAULT_SCHEDULE = [1, 5, 15, 30, 60].map((minutes) => minutes * MINUTE);
const NOW = Date.UTC(2026, 10, 28, 9, 0, 0);

describe('retry schedule', () => {
  it('retries after the first step once the first attempt failed', () => {
    assert.equal(nextAttemptAt(1, DEFAULT_SCHEDULE, NOW), NOW + MINUTE);
  });

  it('walks the schedule one step per failed attempt', () => {
    assert.deepEqual(
      [1, 2, 3, 4, 5].map((attempts) => nextAttemptAt(attempts, DEFAULT_SCHEDULE, NOW) - NOW),
      [1, 5, 15, 30, 60].map((minutes) => minutes * MINUTE),
    );
  });

  it('repeats the last step beyond the end of the schedule', () => {
    for (const attempts of [6, 7, 50, 10_000]) assert.equal(nextAttemptAt(attempts, DEFAULT_SCHEDULE, NOW), NOW + 60 * MINUTE, String(attempts));
    assert.equal(nextAttemptAt(3, [30_000], NOW), NOW + 30_000);
  });

  it('treats zero attempts as the first', () => {
    assert.equal(nextAttemptAt(0, [2 * MINUTE, 10 * MINUTE], NOW), NOW + 2 * MINUTE);
  });

  it('schedules from the given time, not the clock', () => {
    assert.equal(nextAttemptAt(2, DEFAULT_SCHEDULE, 1000), 1000 + 5 * MINUTE);
  });
});

/** A recipient nodemailer refused at RCPT, shaped as nodemailer reports it. */
function rcptRejected(recipient: string, response: string): SendError {
  return Object.assign(new Error(`Recipient command failed: ${response}`), {
    code: 'EENVELOPE',
    command: 'RCPT TO',
    recipient,
    response,
    responseCode: Number(response.slice(0, 3)),
  });
}

describe('delivery verdicts', () => {
  const recipients = ['alice@example.test', 'bob@example.test', 'carol@example.test'];

  it('marks every recipient delivered with the reply to DATA', () => {
    const list = verdicts(recipients, { result: { accepted: recipients, response: '250 2.0.0 Ok: queued as 4XYZ' } });
    assert.deepEqual(
      list,
      recipients.map((recipient) => ({ recipient, result: 'delivered', reply: '250 2.0.0 Ok: queued as 4XYZ' })),
    );
  });

  it('gives each recipient refused at RCPT its own reply: 5xx failed, 4xx deferred, the rest delivered', () => {
    const list = verdicts(recipients, {
      result: {
        accepted: ['alice@example.test'],
        response: '250 2.0.0 Ok: queued as 4XYZ',
        rejectedErrors: [rcptRejected('bob@example.test', '550 5.1.1 <bob@example.test>: Recipient address rejected: User unknown'), rcptRejected('carol@example.test', '452 4.2.2 <carol@example.test>: Mailbox full')],
      },
    });
    assert.deepEqual(list, [
      { recipient: 'alice@example.test', result: 'delivered', reply: '250 2.0.0 Ok: queued as 4XYZ' },
      { recipient: 'bob@example.test', result: 'failed', reply: '550 5.1.1 <bob@example.test>: Recipient address rejected: User unknown' },
      { recipient: 'carol@example.test', result: 'deferred', reply: '452 4.2.2 <carol@example.test>: Mailbox full' },
    ]);
  });

  it('gives each recipient its own reply when all were refused', () => {
    const error: SendError = Object.assign(new Error("Can't send mail - all recipients were rejected: 452 4.5.3 Too many recipients"), {
      code: 'EENVELOPE',
      response: '452 4.5.3 Too many recipients',
      responseCode: 452,
      rejectedErrors: [
        rcptRejected('alice@example.test', '550 5.1.1 No such user'),
        rcptRejected('bob@example.test', '452 4.5.3 Too many recipients'),
        rcptRejected('carol@example.test', '553 5.7.1 Sender not allowed'),
      ],
    });
    assert.deepEqual(verdicts(recipients, { error }), [
      { recipient: 'alice@example.test', result: 'failed', reply: '550 5.1.1 No such user' },
      { recipient: 'bob@example.test', result: 'deferred', reply: '452 4.5.3 Too many recipients' },
      { recipient: 'carol@example.test', result: 'failed', reply: '553 5.7.1 Sender not allowed' },
    ]);
  });

  it('fails every recipient when DATA is refused with 5xx', () => {
    const error: SendError = Object.assign(new Error('Message failed: 554 5.7.1 Message rejected as spam'), { response: '554 5.7.1 Message rejected as spam', responseCode: 554 });
    const list = verdicts(recipients, { error });
    assert.deepEqual(list.map((verdict) => verdict.result), ['failed', 'failed', 'failed']);
    for (const verdict of list) assert.equal(verdict.reply, '554 5.7.1 Message rejected as spam');
  });

  it('defers every recipient when DATA is refused with 4xx', () => {
    const error: SendError = Object.assign(new Error('Message failed: 451 4.3.0 Try again later'), { response: '451 4.3.0 Try again later', responseCode: 451 });
    const list = verdicts(recipients, { error });
    assert.deepEqual(list.map((verdict) => verdict.result), ['deferred', 'deferred', 'deferred']);
    for (const verdict of list) assert.equal(verdict.reply, '451 4.3.0 Try again later');
  });

  it('defers every recipient with the error message when there was no reply at all', () => {
    for (const message of ['connect ECONNREFUSED 192.0.2.25:25', 'Connection timeout', 'Connection closed unexpectedly']) {
      const error: SendError = Object.assign(new Error(message), { code: 'ESOCKET' });
      assert.deepEqual(
        verdicts(recipients, { error }),
        recipients.map((recipient) => ({ recipient, result: 'deferred', reply: message })),
      );
    }
  });

  it('keeps a recipient refused at RCPT apart from a DATA failure of the others', () => {
    const error: SendError = Object.assign(new Error('Data command failed: 451 4.3.0 Try again later'), {
      response: '451 4.3.0 Try again later',
      responseCode: 451,
      rejectedErrors: [rcptRejected('bob@example.test', '550 5.1.1 No such user')],
    });
    assert.deepEqual(verdicts(recipients, { error }), [
      { recipient: 'alice@example.test', result: 'deferred', reply: '451 4.3.0 Try again later' },
      { recipient: 'bob@example.test', result: 'failed', reply: '550 5.1.1 No such user' },
      { recipient: 'carol@example.test', result: 'deferred', reply: '451 4.3.0 Try again later' },
    ]);
  });

  it('matches refused recipients case-insensitively and keeps our spelling', () => {
    const list = verdicts(['Bob@Example.TEST', 'alice@example.test'], {
      result: { response: '250 OK', rejectedErrors: [rcptRejected('bob@example.test', '550 5.1.1 No such user')] },
    });
    assert.deepEqual(list, [
      { recipient: 'Bob@Example.TEST', result: 'failed', reply: '550 5.1.1 No such user' },
      { recipient: 'alice@example.test', result: 'delivered', reply: '250 OK' },
    ]);
  });

  it('folds a multi-line reply onto one line', () => {
    const [verdict] = verdicts(['alice@example.test'], {
      result: { response: '250 OK', rejectedErrors: [rcptRejected('alice@example.test', '550-5.1.1 No such user\r\n550 5.1.1 See https://help.example')] },
    });
    assert.equal(verdict?.reply, '550-5.1.1 No such user 550 5.1.1 See https://help.example');
  });
});

describe('delivery outcomes', () => {
  const list = verdicts(['alice@example.test', 'bob@example.test', 'carol@example.test'], {
    result: {
      response: '250 2.0.0 Ok',
      rejectedErrors: [rcptRejected('bob@example.test', '550 5.1.1 No such user'), rcptRejected('carol@example.test', '450 4.2.0 Greylisted')],
    },
  });

  it('schedules only deferred recipients', () => {
    const asked: string[] = [];
    const outcomes = toOutcomes(list, (recipient) => {
      asked.push(recipient);
      return NOW + 5 * MINUTE;
    });
    assert.deepEqual(outcomes, [
      { recipient: 'alice@example.test', result: 'delivered', reply: '250 2.0.0 Ok' },
      { recipient: 'bob@example.test', result: 'failed', reply: '550 5.1.1 No such user' },
      { recipient: 'carol@example.test', result: 'deferred', reply: '450 4.2.0 Greylisted', nextAttemptAt: NOW + 5 * MINUTE },
    ]);
    assert.deepEqual(asked, ['carol@example.test']);
    assert.ok(!('nextAttemptAt' in (outcomes[0] ?? {})));
    assert.ok(!('nextAttemptAt' in (outcomes[1] ?? {})));
  });

  it('records on every outcome the next hop that gave the reply', () => {
    const outcomes = toOutcomes(list, () => NOW + MINUTE, '10.0.0.5:25');
    assert.deepEqual(outcomes.map((outcome) => [outcome.result, outcome.nextHop]), [
      ['delivered', '10.0.0.5:25'],
      ['failed', '10.0.0.5:25'],
      ['deferred', '10.0.0.5:25'],
    ]);
    assert.deepEqual(toOutcomes(list, () => NOW, null).map((outcome) => outcome.nextHop), [null, null, null], 'no target answered');
  });

  it('asks for each deferred recipient its own next attempt time', () => {
    const deferred = verdicts(['a@example.test', 'b@example.test'], { error: { message: 'Connection timeout' } });
    const attempts = new Map([['a@example.test', 1], ['b@example.test', 7]]);
    const outcomes = toOutcomes(deferred, (recipient) => nextAttemptAt(attempts.get(recipient) ?? 1, DEFAULT_SCHEDULE, NOW));
    assert.deepEqual(
      outcomes.map((outcome) => (outcome.result === 'deferred' ? outcome.nextAttemptAt : null)),
      [NOW + MINUTE, NOW + 60 * MINUTE],
    );
  });
});
