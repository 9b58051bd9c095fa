import { X509Certificate } from 'node:crypto';
import { accessSync, constants as fsConstants, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { parseDuration } from '../rules/duration.ts';
import { normalizeDomain } from '../rules/address.ts';
import { parseCidr, type Cidr } from '../rules/ip.ts';
import { parsePin, TLS_LEVELS } from '../rules/next-hop-tls.ts';
import { pemCertificates } from '../mail/peer-tls.ts';
import { tlsPairProblem } from './tls-pair.ts';
import { parsePasswordHash } from '../rules/password-hash.ts';
import { parseTarget } from '../rules/target.ts';

export { formatTarget, parseTarget, type Target } from '../rules/target.ts';

const list = (value: unknown) =>
  typeof value === 'string' ? value.split(',').map((item) => item.trim()).filter((item) => item !== '') : value;

const integer = (min: number, max: number) =>
  z.preprocess(
    (value) => (typeof value === 'string' && value.trim() !== '' ? Number(value) : value),
    z.number({ error: `expected a whole number from ${min} to ${max}` }).int(`expected a whole number from ${min} to ${max}`).min(min, `expected a whole number from ${min} to ${max}`).max(max, `expected a whole number from ${min} to ${max}`),
  );

const port = integer(0, 65535);

const duration = z.preprocess(
  (value) => (typeof value === 'number' ? value * 1000 : typeof value === 'string' ? (parseDuration(value) ?? value) : value),
  z.number({ error: 'expected a duration such as 30s, 5m, 1h or 5d' }).positive('expected a duration greater than zero'),
);

const durations = z.preprocess(
  (value) => {
    const items = list(value);
    return Array.isArray(items) ? items.map((item) => (typeof item === 'string' ? (parseDuration(item) ?? item) : item)) : items;
  },
  z.array(z.number({ error: 'expected durations such as 1m,5m,1h' }).positive(), { error: 'expected durations such as 1m,5m,1h' }).min(1, 'expected at least one duration'),
);

const domainName = z
  .string()
  .transform(normalizeDomain)
  .refine((domain) => /^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/.test(domain), {
    error: (issue) => `not a domain name: ${JSON.stringify(issue.input)}`,
  });

const targetText = z
  .string()
  .trim()
  .refine((text) => parseTarget(text) !== null, { error: (issue) => `expected host[:port], got ${JSON.stringify(issue.input)}` });

const boolean = z.preprocess(
  (value) => (typeof value === 'string' ? { true: true, yes: true, '1': true, false: false, no: false, '0': false }[value.trim().toLowerCase()] ?? value : value),
  z.boolean({ error: 'expected true or false' }),
);

/** PROXY_FROM: addresses and CIDR ranges, IPv4 and IPv6, each checked with its own message. */
const cidrList = z.preprocess(
  list,
  z.array(
    z.string().transform((text, ctx): Cidr => {
      const range = parseCidr(text);
      if ('error' in range) {
        ctx.addIssue({ code: 'custom', message: range.error });
        return z.NEVER;
      }
      return range;
    }),
  ),
);

/** A file the service must be able to read (TLS certificate and key, recipient lists). */
const readableFile = z
  .string()
  .trim()
  .min(1)
  .refine(
    (path) => {
      try {
        accessSync(path, fsConstants.R_OK);
        return true;
      } catch {
        return false;
      }
    },
    { error: (issue) => `cannot read file ${JSON.stringify(issue.input)}` },
  );

// TLS to the next hop (issue 12): PRIMARY_TLS, PRIMARY_TLS_CA, PRIMARY_TLS_PIN, globally and per domain.
const tlsLevel = z.preprocess((value) => (typeof value === 'string' ? value.trim().toLowerCase() : value), z.enum(TLS_LEVELS, { error: 'expected may, encrypt or verify' }));

/** A PEM file of CA certificates: readable, and every certificate in it parses. */
const caFile = readableFile.superRefine((path, ctx) => {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return; // already reported: cannot read file
  }
  const pems = pemCertificates(text);
  if (pems.length === 0) return void ctx.addIssue({ code: 'custom', message: `${path} holds no PEM certificate` });
  pems.forEach((pem, index) => {
    try {
      new X509Certificate(pem);
    } catch (error) {
      ctx.addIssue({ code: 'custom', message: `certificate ${index + 1} in ${path} does not parse (${(error as Error).message})` });
    }
  });
});

const tlsPins = z.preprocess(
  list,
  z.array(z.string().refine((pin) => parsePin(pin) !== null, { error: (issue) => `expected pin-sha256:<base64 SHA-256 of the public key> or cert-sha256:<hex SHA-256 of the certificate>, got ${JSON.stringify(issue.input)}` })),
);

/** A valid recipient: `user@domain` or `@domain` (every address of the domain), lower-cased. */
const recipientEntry = z
  .string()
  .trim()
  .toLowerCase()
  .refine((entry) => /^[^\s@]*@[^\s@]+$/.test(entry), { error: (issue) => `expected user@domain or @domain, got ${JSON.stringify(issue.input)}` });

/** PRIMARY: host[:port] targets tried in order, or `mx` alone (deliver by the domain's DNS MX). */
const primaryList = (empty: string) =>
  z.preprocess(
    (value) => {
      const items = list(value);
      return Array.isArray(items) ? items.map((item) => (typeof item === 'string' && item.trim().toLowerCase() === 'mx' ? 'mx' : item)) : items;
    },
    z
      .array(targetText)
      .min(1, empty)
      .refine((items) => !items.includes('mx') || items.length === 1, { error: 'mx (deliver by DNS MX) cannot be combined with other targets' }),
  );

/** A domain viewer of the web console: a user name and a password hash from `backupmx hash-password`. */
const viewers = z
  .record(
    z.string(),
    z.string().refine((text) => parsePasswordHash(text) !== null, 'expected a password hash made by `backupmx hash-password` ($scrypt$ln=...)'),
  )
  .superRefine((names, ctx) => {
    for (const name of Object.keys(names)) {
      if (!/^[A-Za-z0-9._-]{1,64}$/.test(name)) ctx.addIssue({ code: 'custom', path: [name], message: 'expected a user name of letters, digits, dot, dash or underscore' });
    }
  });

const domainSettings = z
  .strictObject({
    /** The emergency inbox: who may read this domain's waiting mail in the web console (sign in as NAME@domain). */
    VIEWERS: viewers.optional(),
    PRIMARY: primaryList('name at least one host[:port], or mx').optional(),
    /** Valid recipients, inline (issue 5); others get 550 5.1.1. */
    RECIPIENTS: z.preprocess(list, z.array(recipientEntry)).optional(),
    /** A file of valid recipients, one per line, re-read when it changes. */
    RECIPIENTS_FILE: readableFile.optional(),
    /** Ask the primary at RCPT time (callout), cached in the store. */
    VERIFY_RECIPIENTS: boolean.optional(),
    /** Recipient not in the callout cache while the primary is down: accept, or defer (450 4.2.0). */
    VERIFY_WHEN_DOWN: z.enum(['accept', 'defer'], { error: 'expected accept or defer' }).optional(),
    /** TLS to this domain's primary: may, encrypt, verify (instead of PRIMARY_TLS). */
    PRIMARY_TLS: tlsLevel.optional(),
    PRIMARY_TLS_CA: caFile.optional(),
    PRIMARY_TLS_PIN: tlsPins.optional(),
  })
  .superRefine((settings, ctx) => {
    if (settings.VERIFY_RECIPIENTS && (settings.RECIPIENTS || settings.RECIPIENTS_FILE)) {
      ctx.addIssue({ code: 'custom', path: ['VERIFY_RECIPIENTS'], message: 'cannot be combined with RECIPIENTS or RECIPIENTS_FILE' });
    }
    if (settings.VERIFY_WHEN_DOWN && !settings.VERIFY_RECIPIENTS) {
      ctx.addIssue({ code: 'custom', path: ['VERIFY_WHEN_DOWN'], message: 'only applies with VERIFY_RECIPIENTS: true' });
    }
  });

export const configSchema = z.strictObject({
  RELAY_DOMAINS: z.preprocess(list, z.array(domainName).min(1, 'list at least one domain')),
  PRIMARY: primaryList('name at least one host[:port], or mx'),
  /** `::` listens on IPv6 and IPv4 (IPv4 clients as IPv4-mapped addresses); IPv4 only where the host has no IPv6. */
  SMTP_HOST: z.string().default('::'),
  SMTP_PORT: port.default(2525),
  SMTP_HOSTNAME: z.string().min(1).default(hostname()),
  HTTP_HOST: z.string().default('0.0.0.0'),
  HTTP_PORT: port.default(8025),
  AMQP_URL: z.url({ protocol: /^amqps?$/, error: 'expected amqp://host:port/vhost (the user and password may go in AMQP_USER and AMQP_PASSWORD, taken literally)' }).optional(),
  /** RabbitMQ user and password taken literally (no URL encoding), instead of those in AMQP_URL. */
  AMQP_USER: z.string().min(1).optional(),
  AMQP_PASSWORD: z.string().min(1).optional(),
  MONGODB_URL: z.url({ protocol: /^mongodb(\+srv)?$/, error: 'expected mongodb://host:port/db' }).optional(),
  DATA_DIR: z.string().min(1).default('./data'),
  SMARTHOST: targetText.optional(),
  ADMIN_TOKEN: z.string().min(1).optional(),
  MAX_MESSAGE_SIZE: integer(1024, 2 ** 31).default(26_214_400),
  /** Message bytes held in memory across all SMTP sessions; a DATA that would exceed it: 452 4.3.1. */
  MEMORY_BUDGET: integer(1024, 2 ** 40).optional(),
  /** Refuse new mail (452 4.3.1) while DATA_DIR has less free space; unset: twice MAX_MESSAGE_SIZE, at least 16 MiB; 0: never. */
  DISK_HEADROOM: integer(0, 2 ** 50).optional(),
  MAX_RECIPIENTS: integer(1, 100_000).default(100),
  QUEUE_LIFETIME: duration.default(5 * 86_400_000),
  RETRY_SCHEDULE: durations.default([60_000, 300_000, 900_000, 1_800_000, 3_600_000]),
  PROBE_INTERVAL: duration.default(10_000),
  /**
   * Probe period while a target is down or not known yet: a primary that comes back is seen within
   * about this times PROBE_SUCCESSES. A probe of a primary that refuses connections costs one refused
   * SYN, so 250 ms is cheap, and the flush starts about a second sooner than with 1 s (the flush of a
   * backlog is timed from the moment the primary listens: bench/run.ts).
   */
  PROBE_INTERVAL_DOWN: duration.default(250),
  PROBE_TIMEOUT: duration.default(10_000),
  PROBE_FAILURES: integer(1, 1000).default(3),
  PROBE_SUCCESSES: integer(1, 1000).default(2),
  /** How long ingress waits for RabbitMQ's publisher confirm before answering 451. */
  PUBLISH_TIMEOUT: duration.default(5_000),
  /**
   * Pause before the 220 greeting; a client that talks first gets 421 (pregreet test). smtp-server's
   * own 100 ms caps a one-message-per-connection sender at 10 msg/s per session (`npm run bench --
   * --greeting-delay 100ms` shows it), so the default is 0, as Postfix's smtpd; postscreen-style detection
   * wants seconds, not 100 ms.
   */
  GREETING_DELAY: z.preprocess(
    (value) => (typeof value === 'string' ? (parseDuration(value) ?? value) : value),
    z.number({ error: 'expected a duration such as 0, 100ms or 1s' }).min(0),
  ).default(0),
  /**
   * A claim's lease, renewed every quarter of it while the attempt runs: how long a killed
   * deliverer's deliveries wait before another deliverer takes them.
   */
  DELIVERY_LEASE: duration.refine((ms) => ms >= 1000, 'expected at least 1s (renewed every quarter of it)').default(20_000),
  /**
   * Connections a deliverer opens to one next hop at once: 20, as Postfix's
   * default_destination_concurrency_limit. With 5 a flush of a backlog to a primary on the same
   * network waited on round trips, not on the primary or on us (issue 9).
   */
  DELIVERY_CONCURRENCY: integer(1, 100).default(20),
  /** Webhook URLs (comma separated) that get a JSON POST when a primary goes down or up and when mail waits too long. */
  ALERT_WEBHOOK: z.preprocess(list, z.array(z.url({ protocol: /^https?$/, error: 'expected http(s) URLs, comma separated' }))).default([]),
  /** Alert when the oldest queued message is older than this; unset: no queue-age alert. */
  ALERT_QUEUE_AGE: duration.optional(),
  /** Link from a message to its trace (admin API, CLI), e.g. http://localhost:16686/trace/{traceId}. */
  TRACE_URL: z.string().refine((text) => text.includes('{traceId}'), 'expected a URL containing {traceId}').optional(),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  // Inbound protection (ingress).
  /** Concurrent SMTP sessions in all, and from one client IP (IPv6: one /64); over: 421 4.7.0. */
  MAX_CONNECTIONS: integer(1, 100_000).default(500),
  MAX_CONNECTIONS_PER_IP: integer(1, 100_000).default(50),
  /** Messages and recipients one client IP may start per minute; over: 450 4.7.1. 0 = no limit. */
  MESSAGES_PER_IP_PER_MINUTE: integer(0, 10_000_000).default(0),
  RECIPIENTS_PER_IP_PER_MINUTE: integer(0, 10_000_000).default(0),
  /** Refused commands in one session before 421 4.7.0 (Postfix smtpd_hard_error_limit). */
  MAX_ERRORS: integer(1, 100_000).default(20),
  /** Idle limits while waiting for a command / for message data (RFC 5321 4.5.3.2). */
  COMMAND_TIMEOUT: duration.default(300_000),
  DATA_TIMEOUT: duration.default(300_000),
  /** Longest command line in bytes (RFC 5321 4.5.3.1.4: at least 512); longer: 500 5.5.2. */
  MAX_COMMAND_LENGTH: integer(512, 65_536).default(2048),
  /** Largest header section in bytes (Postfix header_size_limit); larger: 552 5.3.4. */
  MAX_HEADER_SIZE: integer(1024, 2 ** 31).default(102_400),
  /** false: answer 421 4.3.2 at connect while the health service says every primary is up. */
  ACCEPT_WHEN_PRIMARY_UP: boolean.default(true),
  /** Trusted load balancers (addresses, CIDR ranges): their connections must begin with a PROXY header (v1 or v2). */
  PROXY_FROM: cidrList.default([]),
  /** How long a trusted balancer has to send its whole PROXY header (Postfix smtpd_upstream_proxy_timeout). */
  PROXY_TIMEOUT: duration.default(5_000),
  /** PEM certificate (chain) and key for STARTTLS; re-read when they change. */
  TLS_CERT: readableFile.optional(),
  TLS_KEY: readableFile.optional(),
  /** Evaluate SPF, DKIM, DMARC and ARC and prepend Authentication-Results. */
  SENDER_AUTH: boolean.default(true),
  /** Refuse (550 5.7.1) mail that fails DMARC when the sender's policy is reject. */
  DMARC_REJECT: boolean.default(false),
  /** Limit for one DNS lookup (sender authentication, DNSBL). */
  DNS_TIMEOUT: duration.default(2000),
  /** DNS blocklist zones; a listed client gets 554 5.7.1. */
  DNSBL_ZONES: z.preprocess(list, z.array(domainName)).default([]),
  /** Recipient verification callouts: time limit, and how long answers are cached. */
  VERIFY_TIMEOUT: duration.default(4000),
  VERIFY_POSITIVE_TTL: duration.default(30 * 86_400_000),
  VERIFY_NEGATIVE_TTL: duration.default(3_600_000),
  // Delivery reports, MX routing, queue lifetime (issue 4).
  /** Other names and addresses that reach this host (NAT, load balancer): MX hosts naming them are us. */
  SELF_NAMES: z.preprocess(list, z.array(z.string().trim().min(1))).default([]),
  /** Send one "delayed" notice when a message has waited this long; unset or 0: none. */
  DELAY_WARNING: z.preprocess((value) => (value === 0 || value === '0' || value === 'off' ? undefined : value), duration.optional()),
  /** How long delivered and failed records are kept before the spool purges them. */
  RECORD_RETENTION: duration.default(7 * 86_400_000),
  /** How often the spool looks for expired mail, due delay notices and records to purge. */
  SWEEP_INTERVAL: duration.default(60_000),
  // TLS to the next hop (issue 12).
  /** may: STARTTLS when offered (unchecked); encrypt: required; verify: and the certificate authenticated. */
  PRIMARY_TLS: tlsLevel.default('may'),
  /** CA certificates (PEM) that primaries' certificates must chain to under verify, instead of the system's. */
  PRIMARY_TLS_CA: caFile.optional(),
  /** The primary's certificate must carry one of these pins (pin-sha256:..., cert-sha256:...). */
  PRIMARY_TLS_PIN: tlsPins.default([]),
  /** Apply MTA-STS (RFC 8461) policies on MX routes. */
  MTA_STS: boolean.default(true),
  // Web console and admin API walls (issue 10).
  /** false: no web console at / (the admin API stays). */
  CONSOLE: boolean.default(true),
  /** The address(es) people use for the console and API, e.g. https://backupmx.example.com: their names pass the Host check, their origins the Origin check; https makes session cookies Secure. */
  PUBLIC_URL: z.preprocess(list, z.array(z.url({ protocol: /^https?$/, error: 'expected http(s) URLs, comma separated, e.g. https://backupmx.example.com' }))).default([]),
  /** How long a console sign-in lasts. */
  CONSOLE_SESSION_LIFETIME: duration.default(8 * 3_600_000),
  domains: z.record(domainName, domainSettings).default({}),
}).superRefine((config, ctx) => {
  // Pins ask for TLS: under may (which goes on without it) they would be ignored.
  if (config.PRIMARY_TLS_PIN.length && config.PRIMARY_TLS === 'may') ctx.addIssue({ code: 'custom', path: ['PRIMARY_TLS_PIN'], message: 'needs PRIMARY_TLS encrypt or verify (may goes on without TLS)' });
  for (const [domain, settings] of Object.entries(config.domains)) {
    const pins = settings.PRIMARY_TLS_PIN ?? config.PRIMARY_TLS_PIN;
    if (pins.length && (settings.PRIMARY_TLS ?? config.PRIMARY_TLS) === 'may' && (settings.PRIMARY_TLS !== undefined || settings.PRIMARY_TLS_PIN !== undefined)) {
      ctx.addIssue({ code: 'custom', path: ['domains', domain, settings.PRIMARY_TLS_PIN ? 'PRIMARY_TLS_PIN' : 'PRIMARY_TLS'], message: 'PRIMARY_TLS_PIN needs PRIMARY_TLS encrypt or verify (may goes on without TLS)' });
    }
  }
  if (config.MEMORY_BUDGET !== undefined && config.MEMORY_BUDGET < config.MAX_MESSAGE_SIZE) ctx.addIssue({ code: 'custom', path: ['MEMORY_BUDGET'], message: `must be at least MAX_MESSAGE_SIZE (${config.MAX_MESSAGE_SIZE}), or no message of the largest size could ever be taken` });
  if (config.TLS_CERT && !config.TLS_KEY) ctx.addIssue({ code: 'custom', path: ['TLS_KEY'], message: 'required when TLS_CERT is set' });
  if (config.TLS_KEY && !config.TLS_CERT) ctx.addIssue({ code: 'custom', path: ['TLS_CERT'], message: 'required when TLS_KEY is set' });
  if (config.TLS_CERT && config.TLS_KEY) {
    // Checked here, not by building a TLS context: Deno's createSecureContext accepts a mismatched pair.
    const read = (path: string) => {
      try {
        return readFileSync(path);
      } catch {
        return null; // already reported: "cannot read file"
      }
    };
    const [cert, key] = [read(config.TLS_CERT), read(config.TLS_KEY)];
    const problem = cert && key ? tlsPairProblem(cert, key) : null;
    if (problem) ctx.addIssue({ code: 'custom', path: [problem.key], message: `${problem.key === 'TLS_CERT' ? config.TLS_CERT : config.TLS_KEY} ${problem.message}` });
  }
  for (const [domain, settings] of Object.entries(config.domains)) {
    const primary = settings.PRIMARY ?? config.PRIMARY;
    if (settings.VERIFY_RECIPIENTS && primary.length === 1 && primary[0]?.toLowerCase() === 'mx') {
      ctx.addIssue({ code: 'custom', path: ['domains', domain, 'VERIFY_RECIPIENTS'], message: 'needs a PRIMARY that names hosts (callouts to DNS MX hosts are not supported)' });
    }
  }
});

export type Config = z.infer<typeof configSchema>;

/** MEMORY_BUDGET in bytes: as set, or 100 MiB (a 512 MiB container), at least MAX_MESSAGE_SIZE. */
export function memoryBudget(config: Pick<Config, 'MEMORY_BUDGET' | 'MAX_MESSAGE_SIZE'>): number {
  return config.MEMORY_BUDGET ?? Math.max(104_857_600, config.MAX_MESSAGE_SIZE);
}

/**
 * DISK_HEADROOM in bytes: as set, or twice MAX_MESSAGE_SIZE (room for the queue's own writes and a
 * message in flight), and never less than 16 MiB by default (SQLite's WAL and its checkpoints).
 */
export function diskHeadroom(config: Pick<Config, 'DISK_HEADROOM' | 'MAX_MESSAGE_SIZE'>): number {
  return config.DISK_HEADROOM ?? Math.max(2 * config.MAX_MESSAGE_SIZE, 16 * 1024 * 1024);
}

/** Thrown for a bad configuration; the message is one line naming the key. */
export class ConfigError extends Error {
  constructor(message: string) {
    // Keys, file names and parser messages may hold line breaks; the message stays one line.
    super(message.replace(/\s*[\r\n]+\s*/g, ' '));
  }
}

/** A listener that cannot start, as a ConfigError naming the setting (`SMTP_PORT: 0.0.0.0:25 is already in use`). */
export function listenError(key: string, host: string, port: number, error: NodeJS.ErrnoException): Error {
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  if (error.code === 'EADDRINUSE') return new ConfigError(`${key}: ${where} is already in use`);
  if (error.code === 'EACCES') return new ConfigError(`${key}: no permission to listen on ${where} (ports below 1024 need privileges)`);
  if (error.code === 'EADDRNOTAVAIL') return new ConfigError(`${key}: ${host} is not an address of this host`);
  return error;
}

const KEYS = new Set(Object.keys(configSchema.shape));
const given = new WeakMap<Config, ReadonlySet<string>>();

/** The settings the environment or the config file gave (the others are defaults). */
export function givenSettings(config: Config): ReadonlySet<string> {
  return given.get(config) ?? new Set();
}

/**
 * Build the configuration from the file named by BACKUPMX_CONFIG (YAML or JSON, same keys) and the
 * environment (which wins). Throws ConfigError with one line naming the key on any bad value.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  let raw: Record<string, unknown> = {};
  const file = env.BACKUPMX_CONFIG;
  if (file) {
    let parsed: unknown;
    try {
      parsed = parseYaml(readFileSync(file, 'utf8'));
    } catch (error) {
      throw new ConfigError(`BACKUPMX_CONFIG: cannot read ${file}: ${(error as Error).message.split('\n')[0]}`);
    }
    if (parsed !== null && parsed !== undefined && (typeof parsed !== 'object' || Array.isArray(parsed))) {
      throw new ConfigError(`BACKUPMX_CONFIG: ${file} must hold a mapping of settings`);
    }
    raw = { ...(parsed as Record<string, unknown> | null) };
  }
  for (const key of KEYS) {
    const value = env[key];
    if (value !== undefined && value !== '') raw[key] = value;
  }
  const result = configSchema.safeParse(raw, { reportInput: true }); // issue.input tells missing from bad
  if (!result.success) {
    const issue = result.error.issues[0];
    const key = issue?.path.length ? issue.path.map(String).join('.') : '(config)';
    const message = issue?.code === 'invalid_type' && issue.input === undefined ? 'is required' : (issue?.message ?? 'is invalid');
    const unknown = issue?.code === 'unrecognized_keys' ? `unknown setting ${issue.keys.join(', ')}` : null;
    throw new ConfigError(unknown ?? `${key}: ${message}`);
  }
  given.set(result.data, new Set(Object.keys(raw)));
  return result.data;
}
