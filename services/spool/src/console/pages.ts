/**
 * The console's pages: server-rendered HTML (Preact components written with htm tagged templates,
 * rendered to a string: every interpolated value is escaped; no build step, no client framework).
 * The only script is /assets/console.js (overview refresh, select-all); every page works without it.
 */
import { html } from 'htm/preact';
import type { VNode } from 'preact';
import { render } from 'preact-render-to-string';
import { formatDuration } from '@backupmx/shared/rules/duration.ts';
import type { Envelope } from '@backupmx/shared/types.ts';
import type { Principal } from './access.ts';
import type { MessageView } from './message-view.ts';

type Node = VNode | string | null | false | undefined | Node[];

export interface Frame {
  principal: Principal | null;
  csrf: string;
  host: string;
  title: string;
  nav?: 'overview' | 'queue' | 'dead';
}

const stamp = (ms: number | null | undefined) => (ms === null || ms === undefined ? '–' : new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z'));
const ago = (ms: number | null | undefined, now: number) => (ms === null || ms === undefined ? '–' : `${formatDuration((now - ms) / 1000)} ago`);
const sender = (from: string) => (from === '' ? '<>' : from);

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(n < 10 * 1024 ? 1 : 0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function document(frame: Frame, body: Node, options: { refresh?: boolean } = {}): string {
  const { principal } = frame;
  const tree = html`<html lang="en">
    <head>
      <meta charset="utf-8" />
      <meta name="viewport" content="width=device-width, initial-scale=1" />
      <meta name="referrer" content="same-origin" />
      <title>${frame.title} · backupmx ${frame.host}</title>
      <link rel="stylesheet" href="/assets/console.css" />
      <script src="/assets/console.js" defer></script>
    </head>
    <body>
      <header class="top">
        <a class="brand" href="/">backupmx <span>${frame.host}</span></a>
        ${principal
          ? html`<nav>
              ${principal.role === 'operator'
                ? html`<a href="/" class=${frame.nav === 'overview' ? 'on' : ''}>Overview</a><a href="/queue" class=${frame.nav === 'queue' ? 'on' : ''}>Queue</a><a href="/dead" class=${frame.nav === 'dead' ? 'on' : ''}>Dead letters</a>`
                : html`<a href="/queue" class="on">Mail for ${principal.domain}</a>`}
            </nav>
            <form class="who" method="post" action="/logout">
              <span>${principal.user}</span>
              <input type="hidden" name="_csrf" value=${frame.csrf} />
              <button type="submit" class="link">Sign out</button>
            </form>`
          : null}
      </header>
      <main id="main" data-refresh=${options.refresh ? '5' : undefined}>${body}</main>
    </body>
  </html>`;
  return `<!doctype html>${render(tree)}`;
}

export function errorBody(status: number, message: string, back = true): VNode {
  return html`<section class="card narrow">
    <h1>${status === 403 ? 'Not allowed' : status === 404 ? 'Not found' : status === 429 ? 'Slow down' : 'Cannot do that'}</h1>
    <p class="error" role="alert">${message}</p>
    ${back ? html`<p><a href="/">Back to the start</a></p>` : null}
  </section>`;
}

export function loginBody(options: { csrf: string; error?: string | undefined; user?: string | undefined; operatorTokenSet: boolean }): VNode {
  return html`<section class="card narrow">
    <h1>Sign in</h1>
    ${options.error ? html`<p class="error" role="alert">${options.error}</p>` : null}
    <form method="post" action="/login" class="stack">
      <input type="hidden" name="_csrf" value=${options.csrf} />
      <label>User name <input name="user" autocomplete="username" required value=${options.user ?? ''} autofocus /></label>
      <label>Password <input name="password" type="password" autocomplete="current-password" required /></label>
      <button type="submit" class="primary">Sign in</button>
    </form>
    <p class="hint">
      People of a backed-up domain: your user name is <code>name@your-domain</code>.
      ${options.operatorTokenSet ? html` The operator signs in as <code>admin</code> with the ADMIN_TOKEN.` : null}
    </p>
  </section>`;
}

function badge(state: string): VNode {
  return html`<span class=${`badge ${state}`}>${state}</span>`;
}

export interface OverviewData {
  now: number;
  primaries: Array<{ target: string; state: string; since: number; lastError: string | null; latencyMs: number | null }>;
  queuedByRoute: Record<string, number>;
  held: number;
  messages: number;
  oldestQueuedAt: number | null;
  lastHour: { received: number; delivered: number; failed: number };
  dead: number | null;
}

export function overviewBody(data: OverviewData): VNode {
  const queued = Object.values(data.queuedByRoute).reduce((sum, n) => sum + n, 0);
  const down = data.primaries.filter((primary) => primary.state === 'down').length;
  return html`<div id="live">
    <h1>Overview</h1>
    <p class=${`banner ${down ? 'down' : data.primaries.length ? 'up' : 'unknown'}`} data-test="banner">
      ${down ? `${down} of ${data.primaries.length} primar${data.primaries.length === 1 ? 'y is' : 'ies are'} down: mail waits here.` : data.primaries.length ? 'Every primary is up: mail is passed on at once.' : 'No news from the health service yet.'}
      <span class="when">as of ${stamp(data.now)}</span>
    </p>
    <section class="tiles">
      <div class="tile"><b data-test="waiting">${data.messages}</b><span>messages waiting</span></div>
      <div class="tile"><b>${queued}</b><span>deliveries queued</span></div>
      <div class="tile"><b>${data.held}</b><span>held</span></div>
      <div class="tile"><b>${data.oldestQueuedAt === null ? '–' : formatDuration((data.now - data.oldestQueuedAt) / 1000)}</b><span>oldest queued</span></div>
      <div class="tile"><b>${data.lastHour.received}</b><span>accepted, last hour</span></div>
      <div class="tile"><b>${data.lastHour.delivered}</b><span>delivered, last hour${data.lastHour.failed ? ` (${data.lastHour.failed} failed)` : ''}</span></div>
      <div class="tile"><b>${data.dead ?? '?'}</b><span><a href="/dead">dead letters</a></span></div>
    </section>
    <section class="card">
      <h2>Primaries</h2>
      <table class="grid">
        <thead><tr><th>Target</th><th>State</th><th>Since</th><th>Last error</th><th>Probe</th></tr></thead>
        <tbody>
          ${data.primaries.length === 0 ? html`<tr><td colspan="5">No probe result yet.</td></tr>` : null}
          ${data.primaries.map(
            (primary) => html`<tr data-test="primary">
              <td data-label="Target"><code>${primary.target}</code></td>
              <td data-label="State">${badge(primary.state)}</td>
              <td data-label="Since">${stamp(primary.since)} <small>(${ago(primary.since, data.now)})</small></td>
              <td data-label="Last error">${primary.lastError ?? '–'}</td>
              <td data-label="Probe">${primary.latencyMs === null ? '–' : `${primary.latencyMs} ms`}</td>
            </tr>`,
          )}
        </tbody>
      </table>
    </section>
    <section class="card">
      <h2>Spool by route</h2>
      <table class="grid">
        <thead><tr><th>Route (next hop)</th><th>Queued deliveries</th></tr></thead>
        <tbody>
          ${queued === 0 ? html`<tr><td colspan="2">Nothing queued.</td></tr>` : null}
          ${Object.entries(data.queuedByRoute).map(([route, count]) => html`<tr><td data-label="Route"><code>${route}</code></td><td data-label="Queued">${count}</td></tr>`)}
          ${queued ? html`<tr class="total"><td data-label="">Total</td><td data-label="Queued">${queued}</td></tr>` : null}
        </tbody>
      </table>
    </section>
  </div>`;
}

export interface Row {
  id: string;
  receivedAt: number;
  size: number;
  from: string;
  deliveries: Array<{ recipient: string; state: string; lastReply: string | null }>;
}

export interface QueueData {
  now: number;
  principal: Principal;
  csrf: string;
  query: Record<string, string>;
  error?: string;
  total: number;
  offset: number;
  limit: number;
  rows: Row[];
  domains: string[];
}

const qs = (query: Record<string, string>, extra: Record<string, string> = {}) => {
  const params = new URLSearchParams({ ...query, ...extra });
  for (const [key, value] of [...params]) if (value === '') params.delete(key);
  return params.size ? `?${params}` : '';
};

function filterForm(data: QueueData): VNode {
  const q = data.query;
  const operator = data.principal.role === 'operator';
  const option = (value: string, label: string, current: string | undefined) => html`<option value=${value} selected=${(current ?? '') === value}>${label}</option>`;
  return html`<form method="get" action="/queue" class="filters">
    ${operator
      ? html`<label>State <select name="state">${option('', 'any', q.state)}${option('waiting', 'waiting', q.state)}${option('queued', 'queued', q.state)}${option('held', 'held', q.state)}${option('delivered', 'delivered', q.state)}${option('failed', 'failed', q.state)}</select></label>
          <label>Domain <input name="domain" list="domains" value=${q.domain ?? ''} placeholder="example.com" /></label>
          <datalist id="domains">${data.domains.map((domain) => html`<option value=${domain} />`)}</datalist>`
      : null}
    <label>Sender <input name="sender" value=${q.sender ?? ''} placeholder="part of the address" /></label>
    <label>Recipient <input name="recipient" value=${q.recipient ?? ''} placeholder="part of the address" /></label>
    <label>Older than <input name="age" value=${q.age ?? ''} placeholder="1h" size="5" /></label>
    <label>Sort <select name="sort">${option('', 'newest first', q.sort)}${option('oldest', 'oldest first', q.sort)}</select></label>
    <button type="submit">Filter</button>
    <a href="/queue" class="button subtle">Clear</a>
  </form>`;
}

const filterHidden = (query: Record<string, string>) =>
  Object.entries(query)
    .filter(([key, value]) => ['state', 'domain', 'sender', 'recipient', 'age', 'before'].includes(key) && value !== '')
    .map(([key, value]) => html`<input type="hidden" name=${key} value=${value} />`);

export function queueBody(data: QueueData): VNode {
  const operator = data.principal.role === 'operator';
  const first = data.total === 0 ? 0 : data.offset + 1;
  const last = data.offset + data.rows.length;
  return html`<div>
    <h1>${operator ? 'Queue' : `Mail waiting for ${(data.principal as { domain: string }).domain}`}</h1>
    ${operator
      ? null
      : html`<p class="hint" data-test="waiting-explained">
          "Waiting" means: your mail server could not be reached, so the backup MX accepted this mail and keeps it. It is passed
          on to your server as soon as it answers again, and then disappears from this list (delivered mail is not kept here).
          You can read and download it meanwhile.
        </p>`}
    ${filterForm(data)}
    ${data.error ? html`<p class="error" role="alert">${data.error}</p>` : null}
    <form method="post" action="/queue/action" class="queue">
      <input type="hidden" name="_csrf" value=${data.csrf} />
      ${filterHidden(data.query)}
      <p class="count" data-test="count">${data.total === 0 ? 'No message matches.' : `${first}–${last} of ${data.total} message${data.total === 1 ? '' : 's'}`}</p>
      ${operator && data.total > 0
        ? html`<div class="actions">
            <span>Selected:</span>
            <button name="do" value="retry:selected">Retry</button>
            <button name="do" value="hold:selected">Hold</button>
            <button name="do" value="release:selected">Release</button>
            <button name="do" value="delete:selected" class="danger" data-confirm="Delete the selected messages for good?">Delete</button>
            <span class="sep">All ${data.total} matching:</span>
            <button name="do" value="retry:filter">Retry all</button>
            <button name="do" value="hold:filter">Hold all</button>
            <button name="do" value="release:filter">Release all</button>
            <button name="do" value="delete:filter" class="danger">Delete all</button>
          </div>`
        : null}
      <table class="grid messages">
        <thead>
          <tr>
            ${operator ? html`<th><input type="checkbox" data-select-all aria-label="select all" /></th>` : null}
            <th>Queue ID</th><th>Arrival</th><th>Age</th><th>Size</th><th>Sender</th><th>Recipients</th>
          </tr>
        </thead>
        <tbody>
          ${data.rows.map((row) => {
            const held = row.deliveries.some((delivery) => delivery.state === 'held');
            return html`<tr data-id=${row.id} class=${held ? 'held' : ''}>
              ${operator ? html`<td class="pick"><input type="checkbox" name="id" value=${row.id} aria-label=${`select ${row.id}`} /></td>` : null}
              <td data-label="Queue ID"><a href=${`/queue/${row.id}`}><code>${row.id}</code></a>${held ? html` <span class="badge held" title="held: not attempted until released">held</span>` : null}</td>
              <td data-label="Arrival">${stamp(row.receivedAt)}</td>
              <td data-label="Age">${formatDuration((data.now - row.receivedAt) / 1000)}</td>
              <td data-label="Size">${bytes(row.size)}</td>
              <td data-label="Sender" class="addr">${sender(row.from)}</td>
              <td data-label="Recipients">
                <ul class="rcpts">
                  ${row.deliveries.map((delivery) => html`<li><span class="addr">${delivery.recipient}</span> ${badge(delivery.state)}${delivery.lastReply && delivery.state !== 'delivered' ? html`<small class="reply">${delivery.lastReply}</small>` : null}</li>`)}
                </ul>
              </td>
            </tr>`;
          })}
        </tbody>
      </table>
    </form>
    <nav class="pages">
      ${data.offset > 0 ? html`<a href=${`/queue${qs(data.query, { offset: String(Math.max(0, data.offset - data.limit)) })}`}>← newer</a>` : null}
      ${last < data.total ? html`<a href=${`/queue${qs(data.query, { offset: String(last) })}`}>older →</a>` : null}
    </nav>
    ${operator
      ? html`<form method="post" action="/flush" class="card flush">
          <input type="hidden" name="_csrf" value=${data.csrf} />
          <label>Flush a domain: deliver everything queued for its primary now, ignoring backoff
            <select name="domain"><option value="">every domain</option>${data.domains.map((domain) => html`<option value=${domain}>${domain}</option>`)}</select></label>
          <button type="submit">Flush</button>
        </form>`
      : null}
  </div>`;
}

export function confirmBody(options: { csrf: string; action: string; count: number; before: number; query: Record<string, string> }): VNode {
  const described = Object.entries(options.query)
    .filter(([key, value]) => ['state', 'domain', 'sender', 'recipient', 'age'].includes(key) && value !== '')
    .map(([key, value]) => `${key} ${key === 'age' ? 'over' : '='} ${value}`)
    .join(', ');
  return html`<section class="card narrow">
    <h1>${options.action[0]?.toUpperCase()}${options.action.slice(1)} ${options.count} message${options.count === 1 ? '' : 's'}?</h1>
    <p data-test="confirm-text">
      This will ${options.action} <b>${options.count}</b> message${options.count === 1 ? '' : 's'} matching ${described || 'no filter (every message)'},
      received up to ${stamp(options.before)}. Mail that arrives from now on is not touched.
      ${options.action === 'delete' ? html`<br /><b>Deleted mail is gone for good; no report goes to the senders.</b>` : null}
    </p>
    <form method="post" action="/queue/action" class="stack">
      <input type="hidden" name="_csrf" value=${options.csrf} />
      ${filterHidden({ ...options.query, before: new Date(options.before).toISOString() })}
      <input type="hidden" name="confirmed" value="yes" />
      <button name="do" value=${`${options.action}:filter`} class=${options.action === 'delete' ? 'danger' : 'primary'}>${options.action[0]?.toUpperCase()}${options.action.slice(1)} ${options.count} message${options.count === 1 ? '' : 's'}</button>
      <a href=${`/queue${qs(options.query)}`} class="button subtle">Cancel</a>
    </form>
  </section>`;
}

export function resultBody(options: { text: string; back: string }): VNode {
  return html`<section class="card narrow">
    <h1>Done</h1>
    <p class="ok" role="status" data-test="result">${options.text}</p>
    <p><a href=${options.back} class="button">Back</a></p>
  </section>`;
}

export interface MessageData {
  now: number;
  principal: Principal;
  csrf: string;
  id: string;
  from: string;
  size: number;
  receivedAt: number;
  envelope: Envelope;
  deliveries: Array<{ recipient: string; route: string; state: string; attempts: number; nextAttemptAt: number; lastReply: string | null; lastNextHop: string | null }>;
  attempts: Array<{ recipient: string; at: number; nextHop: string | null; result: string; reply: string }>;
  traceUrl: string | null;
  view: MessageView | null;
}

function dsnOf(envelope: Envelope, recipient: string): string {
  const dsn = envelope.dsn?.[recipient];
  const parts = [dsn?.notify ? `NOTIFY=${dsn.notify.join(',')}` : '', dsn?.orcpt ? `ORCPT=${dsn.orcpt}` : ''].filter(Boolean);
  return parts.join(' ');
}

export function messageBody(data: MessageData): VNode {
  const operator = data.principal.role === 'operator';
  const { envelope, view } = data;
  const mailParams = [envelope.ret ? `RET=${envelope.ret}` : '', envelope.envid ? `ENVID=${envelope.envid}` : '', envelope.body8bit ? 'BODY=8BITMIME' : '', envelope.smtputf8 ? 'SMTPUTF8' : ''].filter(Boolean).join(' ');
  return html`<div>
    <p><a href="/queue">← ${operator ? 'Queue' : 'All waiting mail'}</a></p>
    <h1 class="subject">${view?.subject ?? '(no subject)'}</h1>
    <div class="toolbar">
      ${view ? html`<a class="button" href=${`/queue/${data.id}/raw`} download=${`${data.id}.eml`} data-test="raw">Download .eml</a>` : null}
      ${operator
        ? html`<form method="post" action=${`/queue/${data.id}/action`} class="inline">
            <input type="hidden" name="_csrf" value=${data.csrf} />
            <button name="do" value="retry">Retry</button>
            <button name="do" value="hold">Hold</button>
            <button name="do" value="release">Release</button>
            <button name="do" value="delete" class="danger" data-confirm="Delete this message for good?">Delete</button>
          </form>`
        : null}
      ${operator && data.traceUrl ? html`<a class="button subtle" href=${data.traceUrl} rel="noreferrer" target="_blank">Trace</a>` : null}
    </div>
    <section class="card">
      <h2>Envelope</h2>
      <dl class="facts">
        <dt>Queue ID</dt><dd><code data-test="queue-id">${data.id}</code></dd>
        <dt>From (MAIL FROM)</dt><dd class="addr">${sender(envelope.mailFrom)}</dd>
        <dt>To (RCPT TO)</dt><dd class="addr">${envelope.rcptTo.join(', ')}</dd>
        <dt>Arrived</dt><dd>${stamp(data.receivedAt)} (${ago(data.receivedAt, data.now)})</dd>
        <dt>Size</dt><dd>${bytes(data.size)}</dd>
        ${mailParams ? html`<dt>Parameters</dt><dd><code>${mailParams}</code></dd>` : null}
        ${operator && envelope.clientAddress ? html`<dt>Sent by</dt><dd>${envelope.clientHelo ?? '?'} [${envelope.clientAddress}]</dd>` : null}
      </dl>
    </section>
    <section class="card">
      <h2>Recipients</h2>
      <table class="grid">
        <thead><tr><th>Recipient</th><th>State</th><th>Route</th><th>Attempts</th><th>Next attempt</th><th>Last reply</th></tr></thead>
        <tbody>
          ${data.deliveries.map(
            (delivery) => html`<tr data-test="delivery">
              <td data-label="Recipient" class="addr">${delivery.recipient}${dsnOf(envelope, delivery.recipient) ? html`<br /><small><code>${dsnOf(envelope, delivery.recipient)}</code></small>` : null}</td>
              <td data-label="State">${badge(delivery.state)}</td>
              <td data-label="Route"><code>${delivery.route}</code></td>
              <td data-label="Attempts">${delivery.attempts}</td>
              <td data-label="Next attempt">${delivery.state === 'queued' ? stamp(delivery.nextAttemptAt) : '–'}</td>
              <td data-label="Last reply">${delivery.lastReply ?? '–'}${delivery.lastNextHop ? html` <small>(${delivery.lastNextHop})</small>` : null}</td>
            </tr>`,
          )}
        </tbody>
      </table>
      <h3>Attempts</h3>
      ${data.attempts.length === 0
        ? html`<p class="hint">None yet.</p>`
        : html`<table class="grid">
            <thead><tr><th>Time</th><th>Recipient</th><th>Next hop</th><th>Result</th><th>Reply</th></tr></thead>
            <tbody>
              ${data.attempts.map(
                (attempt) => html`<tr>
                  <td data-label="Time">${stamp(attempt.at)}</td>
                  <td data-label="Recipient" class="addr">${attempt.recipient}</td>
                  <td data-label="Next hop">${attempt.nextHop ?? '–'}</td>
                  <td data-label="Result">${badge(attempt.result)}</td>
                  <td data-label="Reply">${attempt.reply}</td>
                </tr>`,
              )}
            </tbody>
          </table>`}
    </section>
    ${view
      ? html`<section class="card">
          <h2>Message</h2>
          ${view.html !== null
            ? html`<iframe class="mail" title="message (HTML, no scripts, no remote content)" sandbox="allow-popups allow-popups-to-escape-sandbox" referrerpolicy="no-referrer" src=${`/queue/${data.id}/html`} data-test="html-frame"></iframe>
                <p class="hint">Shown without scripts or remote content (images only from the message itself); links open in a new tab.</p>`
            : null}
          ${view.text !== null && view.html === null ? html`<pre class="body" data-test="text">${view.text}</pre>` : null}
          ${view.text !== null && view.html !== null ? html`<details><summary>Plain-text version</summary><pre class="body" data-test="text">${view.text}</pre></details>` : null}
          ${view.attachments.length
            ? html`<h3>Attachments</h3>
                <ul class="files">
                  ${view.attachments.map(
                    (attachment, index) => html`<li>
                      <a href=${`/queue/${data.id}/attachment/${index}`} download=${attachment.name} data-test="attachment">${attachment.name}</a>
                      <small>${attachment.type}, ${bytes(attachment.size)}${attachment.inline ? ', shown inline' : ''}</small>
                    </li>`,
                  )}
                </ul>`
            : null}
          <details><summary>Header section</summary><pre class="headers" data-test="headers">${view.headers}</pre></details>
        </section>`
      : html`<section class="card"><p class="hint">The message itself is no longer kept: every recipient has been delivered or has failed.</p></section>`}
  </div>`;
}

export interface DeadRow {
  id: string;
  envelope: { mailFrom: string; rcptTo: string[] } | null;
  size: number;
  receivedAt: number | null;
  deadAt: number | null;
  reason: string | null;
}

export function deadBody(options: { csrf: string; total: number; rows: DeadRow[]; error?: string | undefined }): VNode {
  return html`<div>
    <h1>Dead letters</h1>
    <p class="hint">Messages the spool could not read (no header section, a broken envelope). Nothing is dropped: fix the cause, then replay them into the spool.</p>
    ${options.error ? html`<p class="error" role="alert">${options.error}</p>` : null}
    <p class="count">${options.total === 0 ? 'The dead-letter queue is empty.' : `${options.total} dead letter${options.total === 1 ? '' : 's'}${options.rows.length < options.total ? `, the first ${options.rows.length} shown` : ''}`}</p>
    <table class="grid">
      <thead><tr><th>ID</th><th>Died</th><th>Reason</th><th>Size</th><th>Envelope</th><th></th></tr></thead>
      <tbody>
        ${options.rows.map(
          (row) => html`<tr>
            <td data-label="ID"><a href=${`/dead/${encodeURIComponent(row.id)}`}><code>${row.id}</code></a></td>
            <td data-label="Died">${stamp(row.deadAt)}</td>
            <td data-label="Reason">${row.reason ?? '–'}</td>
            <td data-label="Size">${bytes(row.size)}</td>
            <td data-label="Envelope" class="addr">${row.envelope ? `${sender(row.envelope.mailFrom)} → ${row.envelope.rcptTo.join(', ')}` : '(no readable envelope)'}</td>
            <td><form method="post" action=${`/dead/${encodeURIComponent(row.id)}/replay`} class="inline"><input type="hidden" name="_csrf" value=${options.csrf} /><button>Replay</button></form></td>
          </tr>`,
        )}
      </tbody>
    </table>
  </div>`;
}

export function deadLetterBody(options: { csrf: string; row: DeadRow }): VNode {
  const { row } = options;
  return html`<div>
    <p><a href="/dead">← Dead letters</a></p>
    <h1>Dead letter <code>${row.id}</code></h1>
    <section class="card">
      <dl class="facts">
        <dt>Envelope sender</dt><dd class="addr">${row.envelope ? sender(row.envelope.mailFrom) : '(not readable)'}</dd>
        <dt>Recipients</dt><dd class="addr">${row.envelope ? row.envelope.rcptTo.join(', ') : '(not readable)'}</dd>
        <dt>Received</dt><dd>${stamp(row.receivedAt)}</dd>
        <dt>Dead-lettered</dt><dd>${stamp(row.deadAt)}</dd>
        <dt>Reason</dt><dd>${row.reason ?? '–'}</dd>
        <dt>Size</dt><dd>${bytes(row.size)}</dd>
      </dl>
      <form method="post" action=${`/dead/${encodeURIComponent(row.id)}/replay`} class="inline">
        <input type="hidden" name="_csrf" value=${options.csrf} />
        <button class="primary">Replay into the spool</button>
      </form>
    </section>
  </div>`;
}
