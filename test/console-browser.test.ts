/**
 * The web console in a real browser: Debian's Chromium driven by playwright-core, against `npm start`
 * (one process) with a primary that is down, mail sent with nodemailer. Screenshots of the overview,
 * the queue and a message at 1280 and 390 px go to test-results/console/.
 */
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import MailComposer from 'nodemailer/lib/mail-composer/index.js';
import nodemailer from 'nodemailer';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { hashPassword } from '../services/spool/src/console/password.ts';
import { ROOT, spawnService, waitReady, type Service } from './support/processes.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const TOKEN = 'console-admin-token-0123456789';
const CAROL_PASSWORD = 'carols-emergency-password';
const SHOTS = join(ROOT, 'test-results', 'console');
/** A 1x1 PNG, the message's own inline image. */
const PIXEL = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==', 'base64');

const skip = existsSync(CHROMIUM) ? false : `SKIPPED: no Chromium at ${CHROMIUM} (apt-get install -y chromium; .ci/run does)`;

/** Compose a message with nodemailer (MIME, attachments), send those exact bytes, return them and the queue id. */
async function send(port: number, envelope: { from: string; to: string[] }, mail: ConstructorParameters<typeof MailComposer>[0]) {
  const raw = await new MailComposer({ ...mail, from: envelope.from, to: envelope.to.join(', ') }).compile().build();
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true });
  try {
    const info = await transport.sendMail({ envelope, raw });
    const id = /queued as ([0-9A-Z]+)/.exec(info.response)?.[1];
    assert.ok(id, info.response);
    return { id, raw };
  } finally {
    transport.close();
  }
}

describe('web console in Chromium against npm start with the primary down', { skip }, () => {
  const dir = tempDir();
  let system: Service;
  let base: string;
  let smtpPort: number;
  let context: BrowserContext;
  let images: Server;
  const imageRequests: string[] = [];
  const mail: Record<string, { id: string; raw: Buffer }> = {};
  const attachment = randomBytes(5000);
  const api = async (path: string) => (await fetch(`${base}/api${path}`, { headers: { authorization: `Bearer ${TOKEN}` } })).json() as Promise<Record<string, unknown>>;
  const heldIn = async (query: string) => ((await api(`/queue?state=held&${query}`)) as { total: number }).total;

  async function shoot(page: Page, name: string) {
    for (const width of [1280, 390]) {
      await page.setViewportSize({ width, height: width === 390 ? 844 : 900 });
      await page.screenshot({ path: join(SHOTS, `${name}-${width}.png`), fullPage: true });
    }
    await page.setViewportSize({ width: 1280, height: 900 });
  }

  async function signIn(page: Page, user: string, password: string) {
    await page.goto(`${base}/login`);
    await page.fill('input[name=user]', user);
    await page.fill('input[name=password]', password);
    await page.click('button[type=submit]');
  }

  before(async () => {
    mkdirSync(SHOTS, { recursive: true });
    images = createServer((req, res) => {
      imageRequests.push(req.url ?? '');
      res.writeHead(200, { 'content-type': 'image/png' }).end(PIXEL);
    });
    await new Promise<void>((resolve) => images.listen(0, '127.0.0.1', resolve));
    const remote = `http://127.0.0.1:${(images.address() as AddressInfo).port}`;

    const config = join(dir.path, 'backupmx.yaml');
    writeFileSync(config, `domains:\n  example.org:\n    VIEWERS:\n      carol: '${await hashPassword(CAROL_PASSWORD)}'\n`);
    smtpPort = await freePort();
    system = spawnService(
      'console-all',
      'all',
      {
        BACKUPMX_CONFIG: config,
        RELAY_DOMAINS: 'example.test, example.org',
        PRIMARY: `127.0.0.1:${await freePort()}`, // nothing listens: the primary is down
        SMTP_HOST: '127.0.0.1',
        SMTP_PORT: String(smtpPort),
        HTTP_HOST: '127.0.0.1',
        HTTP_PORT: String(await freePort()),
        SMTP_HOSTNAME: 'backup.example.test',
        DATA_DIR: join(dir.path, 'data'),
        PROBE_INTERVAL: '300ms',
        PROBE_TIMEOUT: '1s',
        ADMIN_TOKEN: TOKEN,
        SENDER_AUTH: 'false',
      },
      join(dir.path, 'logs'),
    );
    await waitReady(system);
    base = `http://127.0.0.1:${system.httpPort}`;

    for (let index = 0; index < 4; index++) {
      mail[`test${index}`] = await send(smtpPort, { from: `sender${index}@origin.test`, to: [`user${index}@example.test`] }, { subject: `Status report ${index}`, text: `Report number ${index}.\nAll systems nominal.` });
    }
    mail.carol = await send(
      smtpPort,
      { from: 'lawyer@origin.test', to: ['carol@example.org', 'bob@example.test'] },
      { subject: 'Signed contract (urgent)', text: 'Hello Carol,\nthe signed contract is attached.\nRegards', attachments: [{ filename: 'contract.bin', content: attachment, contentType: 'application/octet-stream' }] },
    );
    mail.html = await send(
      smtpPort,
      { from: 'newsletter@origin.test', to: ['carol@example.org'] },
      {
        subject: 'Crafted HTML',
        text: 'plain version',
        html: [
          `<meta http-equiv="refresh" content="0;url=${remote}/refresh">`,
          `<link rel="stylesheet" href="${remote}/style.css">`,
          `<style>@import url(${remote}/import.css); body { background: url(${remote}/bg.png) }</style>`,
          '<script>window.pwned = "script"; parent.pwned = "script"</script>',
          `<p id="hello" style="background:url(${remote}/inline-bg.png)">Hello from the newsletter</p>`,
          `<img id="remote" src="${remote}/pixel.png" alt="tracking pixel">`,
          '<img id="own" src="cid:own-image@origin.test" alt="own image">',
          '<img src="x" onerror="window.pwned = \'onerror\'">',
          '<a id="js" href="javascript:window.pwned=\'link\'">click me</a>',
          `<iframe src="${remote}/frame"></iframe>`,
        ].join('\n'),
        attachments: [{ filename: 'own.png', content: PIXEL, contentType: 'image/png', cid: 'own-image@origin.test' }],
      },
    );

    context = await chromium.launchPersistentContext(join(dir.path, 'chromium-profile'), {
      executablePath: CHROMIUM,
      headless: true,
      acceptDownloads: true,
      viewport: { width: 1280, height: 900 },
      args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic'],
    });
  });

  after(async () => {
    await context?.close();
    await system?.stop('SIGKILL');
    await new Promise((resolve) => images?.close(resolve));
    dir.remove();
  });

  it('the operator signs in; the overview shows the primary down and the waiting mail, and refreshes itself', async () => {
    const page = await context.newPage();
    await page.goto(base);
    assert.match(page.url(), /\/login$/, 'not signed in: the sign-in form');
    await signIn(page, 'admin', TOKEN);
    assert.equal(new URL(page.url()).pathname, '/');
    assert.equal(await page.locator('[data-test=waiting]').textContent(), '6');
    await page.evaluate(() => Object.assign(window, { stayed: true }));
    // The health monitor needs a few probes to call the primary down; the page learns it without a reload.
    await page.locator('.banner.down').waitFor({ timeout: 20_000 });
    assert.equal(await page.evaluate(() => (window as unknown as { stayed?: boolean }).stayed), true, 'no full page reload');
    assert.match((await page.locator('[data-test=primary] .badge').textContent()) ?? '', /down/);
    assert.match((await page.locator('[data-test=primary]').textContent()) ?? '', /ECONNREFUSED/);
    const cookie = (await context.cookies(base)).find((candidate) => candidate.name === 'backupmx_session');
    assert.equal(cookie?.httpOnly, true);
    assert.equal(cookie?.sameSite, 'Strict');
    assert.ok(!page.url().includes(TOKEN) && !(await page.content()).includes(TOKEN), 'the token is in no URL and no page');
    await shoot(page, 'overview');
    await page.close();
  });

  it('lists the queue, narrows it by domain, holds every message of a filter after a confirmation, releases, retries and deletes', async () => {
    const page = await context.newPage();
    await page.goto(`${base}/queue`);
    assert.equal(await page.locator('table.messages tbody tr').count(), 6);
    assert.match((await page.locator('[data-test=count]').textContent()) ?? '', /of 6 messages/);
    await shoot(page, 'queue');

    await page.fill('input[name=domain]', 'example.org');
    await page.click('form.filters button[type=submit]');
    assert.equal(await page.locator('table.messages tbody tr').count(), 2, 'two messages have a recipient at example.org');
    await page.goto(`${base}/queue?domain=example.test`);
    assert.equal(await page.locator('table.messages tbody tr').count(), 5);

    await page.click('button[value="hold:filter"]');
    assert.match((await page.locator('[data-test=confirm-text]').textContent()) ?? '', /hold 5 messages matching domain = example\.test/);
    assert.equal(await heldIn('domain=example.test'), 0, 'nothing happens before the confirmation');
    await page.click('button[value="hold:filter"]');
    // As Postfix's postsuper -h, a hold is of whole messages: the one to carol and bob is held for both.
    assert.match((await page.locator('[data-test=result]').textContent()) ?? '', /^Held: 5 messages \(6 deliveries\)\.$/);
    assert.equal(await heldIn('domain=example.test'), 5, 'every matching message is held in the store');
    assert.equal(await heldIn('domain=example.org'), 1, 'the message shared with example.org');

    await page.goto(`${base}/queue?state=held`);
    assert.equal(await page.locator('tr.held').count(), 5, 'held messages are marked');
    await page.check(`input[name=id][value="${mail.test0?.id}"]`);
    await page.check(`input[name=id][value="${mail.test1?.id}"]`);
    await page.click('button[value="release:selected"]');
    assert.match((await page.locator('[data-test=result]').textContent()) ?? '', /^Released: 2 messages/);
    assert.equal(await heldIn('domain=example.test'), 3);

    await page.goto(`${base}/queue`);
    await page.check(`input[name=id][value="${mail.test0?.id}"]`);
    await page.click('button[value="retry:selected"]');
    assert.match((await page.locator('[data-test=result]').textContent()) ?? '', /^Made due now: 1 message \(1 delivery\)\.$/);

    await page.goto(`${base}/queue/${mail.test3?.id}`);
    page.once('dialog', (dialog) => void dialog.accept());
    await page.click('button[value=delete]');
    assert.match((await page.locator('[data-test=result]').textContent()) ?? '', /^Deleted: 1 message/);
    const gone = await fetch(`${base}/api/queue/${mail.test3?.id}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(gone.status, 404, 'deleted from the store');
    await page.close();
  });

  it('shows a message: its text, an attachment byte for byte, the raw message as sent', async () => {
    const page = await context.newPage();
    await page.goto(`${base}/queue/${mail.carol?.id}`);
    assert.equal(await page.locator('h1.subject').textContent(), 'Signed contract (urgent)');
    assert.match((await page.locator('[data-test=text]').textContent()) ?? '', /the signed contract is attached/);
    assert.equal(await page.locator('[data-test=delivery]').count(), 2, 'the operator sees both recipients');
    const [file] = await Promise.all([page.waitForEvent('download'), page.click('[data-test=attachment]')]);
    assert.equal(file.suggestedFilename(), 'contract.bin');
    assert.ok(readFileSync(await file.path()).equals(attachment), 'the attachment, byte for byte');
    const [eml] = await Promise.all([page.waitForEvent('download'), page.click('[data-test=raw]')]);
    assert.equal(eml.suggestedFilename(), `${mail.carol?.id}.eml`);
    const raw = readFileSync(await eml.path());
    assert.match(raw.toString('latin1'), new RegExp(`^Received: from [^]*id ${mail.carol?.id}`), 'our Received header on top');
    // nodemailer sends lines with CRLF (RFC 5321), whatever the composer's text had.
    const sent = Buffer.from((mail.carol?.raw as Buffer).toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');
    assert.ok(raw.subarray(raw.length - sent.length).equals(sent), 'below it, the bytes that were sent');
    assert.match((await page.locator('[data-test=headers]').textContent({ timeout: 1000 })) ?? '', /Subject: Signed contract \(urgent\)/);
    await shoot(page, 'message');
    await page.close();
  });

  it('runs no script of an HTML message and loads nothing remote; the message\'s own image shows', async () => {
    const page = await context.newPage();
    await page.goto(`${base}/queue/${mail.html?.id}`);
    await page.waitForLoadState('load'); // the load event waits for the frame
    await page.waitForTimeout(2000); // time for a refresh, a pixel, a style sheet to be fetched if anything let them
    assert.deepEqual(imageRequests, [], 'the remote server got no request');
    assert.equal(await page.evaluate(() => (window as unknown as { pwned?: string }).pwned), undefined, 'no script reached the console page');
    const inner = page.frames().find((candidate) => candidate.url().endsWith(`/queue/${mail.html?.id}/html`));
    assert.ok(inner, 'the frame shows the message and stayed on it (no meta refresh)');
    // Playwright runs its code through the DevTools protocol, which the sandbox does not stop; the message's own scripts it does.
    const facts: Record<string, unknown> = await inner.evaluate(() => ({
      pwned: (window as unknown as { pwned?: string }).pwned,
      scripts: document.querySelectorAll('script').length,
      hello: document.body.textContent?.includes('Hello from the newsletter') ?? false,
      remoteSrc: document.querySelector('img[alt="tracking pixel"]')?.getAttribute('src') ?? null,
      own: (document.querySelector('img[alt="own image"]') as HTMLImageElement | null)?.naturalWidth ?? 0,
      jsHref: document.querySelector('a')?.getAttribute('href') ?? null,
    }));
    assert.deepEqual(facts, { pwned: undefined, scripts: 0, hello: true, remoteSrc: null, own: 1, jsHref: null });
    const frameHtml = await (await page.request.get(`${base}/queue/${mail.html?.id}/html`)).text();
    assert.match(frameHtml, /<p style="background:none">Hello from the newsletter<\/p>/, 'the frame holds the message text');
    assert.match(frameHtml, /<img alt="own image" src="data:image\/png;base64,[A-Za-z0-9+/=]+" \/>/, "the message's own image, inline");
    const frameBody = frameHtml.slice(frameHtml.indexOf('<body>'));
    for (const bad of ['<script', 'pwned', 'onerror', '<meta', '<link', '<style', '<iframe', 'javascript:', '127.0.0.1:']) assert.ok(!frameBody.includes(bad), bad);
    const frameResponse = await page.request.get(`${base}/queue/${mail.html?.id}/html`);
    assert.match(frameResponse.headers()['content-security-policy'] ?? '', /^default-src 'none'; img-src data:; .*sandbox/);
    assert.match(await page.locator('[data-test=html-frame]').getAttribute('sandbox') ?? '', /^allow-popups allow-popups-to-escape-sandbox$/);
    assert.deepEqual(imageRequests, []);
    await page.close();
  });

  it('refuses a form post without the CSRF token, and every page has a Content Security Policy', async () => {
    const page = await context.newPage();
    await page.goto(`${base}/queue`);
    const refused = await page.request.post(`${base}/queue/action`, { form: { do: 'hold:selected', id: mail.test0?.id as string }, headers: { origin: base } });
    assert.equal(refused.status(), 403);
    assert.match(await refused.text(), /CSRF token missing or wrong/);
    assert.equal(await heldIn(`recipient=user0@`), 0, 'not held');
    const token = await page.locator('input[name=_csrf]').first().inputValue();
    const wrong = await page.request.post(`${base}/queue/action`, { form: { do: 'hold:selected', id: mail.test0?.id as string, _csrf: `${token.slice(0, -1)}x` } });
    assert.equal(wrong.status(), 403);
    const login = await page.request.post(`${base}/login`, { form: { user: 'admin', password: TOKEN } });
    assert.equal(login.status(), 403, 'the sign-in form needs its token too');
    for (const path of ['/', '/queue', `/queue/${mail.carol?.id}`, '/dead', '/login']) {
      const response = await page.request.get(`${base}${path}`, { maxRedirects: 0 });
      assert.match(response.headers()['content-security-policy'] ?? '', /^default-src 'self';script-src 'self';/, path);
    }
    await page.close();
  });

  it('a domain viewer sees only their domain\'s waiting mail, reads it, and can do nothing else; wrong passwords are refused and slowed', async () => {
    const viewer = await chromium.launchPersistentContext(join(dir.path, 'chromium-viewer'), {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic'],
    });
    try {
      const page = await viewer.newPage();
      await signIn(page, 'carol@example.org', CAROL_PASSWORD);
      assert.equal(new URL(page.url()).pathname, '/queue');

      assert.match((await page.locator('h1').textContent()) ?? '', /Mail waiting for example\.org/);
      assert.match((await page.locator('[data-test=waiting-explained]').textContent()) ?? '', /disappears from this list/);
      const listed = await page.locator('table.messages tbody tr').evaluateAll((rows) => rows.map((row) => row.getAttribute('data-id')));
      assert.deepEqual(new Set(listed), new Set([mail.carol?.id, mail.html?.id]));
      assert.equal(await page.locator('button[value="hold:filter"]').count(), 0, 'no actions');
      assert.ok(!(await page.content()).includes('bob@example.test'), 'not the other domain\'s recipient');

      await page.goto(`${base}/queue/${mail.carol?.id}`);
      assert.equal(await page.locator('[data-test=delivery]').count(), 1, 'only carol');
      const [file] = await Promise.all([page.waitForEvent('download'), page.click('[data-test=attachment]')]);
      assert.ok(readFileSync(await file.path()).equals(attachment));

      for (const path of [`/queue/${mail.test1?.id}`, `/queue/${mail.test1?.id}/raw`, `/queue/${mail.test1?.id}/attachment/0`, '/queue/0000NOSUCHID0000', '/dead', '/dead/X']) {
        assert.equal((await page.request.get(`${base}${path}`)).status(), 403, path);
      }
      const token = await page.locator('input[name=_csrf]').first().inputValue();
      const heldBefore = await heldIn('domain=example.org');
      for (const [path, form] of [
        ['/queue/action', { do: 'hold:filter', domain: 'example.org', confirmed: 'yes' }],
        ['/queue/action', { do: 'delete:selected', id: mail.carol?.id as string }],
        [`/queue/${mail.carol?.id}/action`, { do: 'hold' }],
        ['/flush', { domain: 'example.org' }],
        [`/dead/X/replay`, {}],
      ] as const) {
        const response = await page.request.post(`${base}${path}`, { form: { ...form, _csrf: token } });
        assert.equal(response.status(), 403, `${path} ${JSON.stringify(form)}`);
      }
      assert.equal(await heldIn('domain=example.org'), heldBefore, 'nothing was held');
      assert.equal((await page.request.get(`${base}/api/queue`)).status(), 401, 'the session is no key to the admin API');
      await page.setViewportSize({ width: 390, height: 844 });
      await page.goto(`${base}/queue`);
      await page.screenshot({ path: join(SHOTS, 'viewer-queue-390.png'), fullPage: true });

      await page.click('.who button');
      assert.match(page.url(), /\/login$/);
      assert.equal((await page.request.get(`${base}/queue`, { maxRedirects: 0 })).status(), 303, 'signed out');

      // Wrong passwords are refused; after five from this address, even the right one must wait.
      const guesser = await viewer.newPage();
      const other = base;
      const guess = async (password: string) => {
        await guesser.goto(`${other}/login`);
        await guesser.fill('input[name=user]', 'carol@example.org');
        await guesser.fill('input[name=password]', password);
        const [response] = await Promise.all([guesser.waitForResponse((r) => r.request().method() === 'POST'), guesser.click('button[type=submit]')]);
        return { status: response.status(), retryAfter: response.headers()['retry-after'], error: await guesser.locator('.error').textContent() };
      };
      assert.deepEqual(await guess('not the password'), { status: 401, retryAfter: undefined, error: 'Wrong user name or password.' });
      for (let failure = 2; failure <= 5; failure++) assert.equal((await guess(`guess ${failure}`)).status, 401);
      const slowed = await guess(CAROL_PASSWORD);
      assert.equal(slowed.status, 429);
      assert.ok(Number(slowed.retryAfter) >= 10 && Number(slowed.retryAfter) <= 15, `Retry-After ${slowed.retryAfter}`);
      assert.match(slowed.error ?? '', /^Too many failed sign-ins from your address: try again in \d+ s\.$/);
      assert.ok(!(await guesser.content()).includes(CAROL_PASSWORD), 'the password is not echoed into the page');

    } finally {
      await viewer.close();
    }
  });
});
