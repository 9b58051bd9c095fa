/**
 * TLS to the next hop: what a delivery requires (PRIMARY_TLS, PRIMARY_TLS_CA, PRIMARY_TLS_PIN, an
 * MTA-STS policy) and what the TLS facts of one connection mean for it. Pure: the facts are gathered
 * by the SMTP client and the health probe (mail/peer-tls.ts); the replies follow Postfix's
 * (smtp_proto.c): 4.7.4 when TLS is missing, 4.7.5 when it cannot be started or authenticated.
 * Every refusal is a deferral: a TLS problem never bounces mail and never falls back to plain text.
 */

export const TLS_LEVELS = ['may', 'encrypt', 'verify'] as const;
/** may: STARTTLS when offered, nothing checked; encrypt: STARTTLS required; verify: and the certificate authenticated. */
export type TlsLevel = (typeof TLS_LEVELS)[number];

/** The trust anchor that stands for the CAs the runtime trusts (Node.js: its Mozilla list plus NODE_EXTRA_CA_CERTS). */
export const SYSTEM_TRUST = 'system';

export interface TlsRequirement {
  level: TlsLevel;
  /** What a certificate must chain to under `verify`: SYSTEM_TRUST and/or CA files (PRIMARY_TLS_CA). */
  trust: string[];
  /** The leaf certificate must have one of these pins (see parsePin); empty: no pinning. */
  pins: string[];
}

export const OPPORTUNISTIC: TlsRequirement = { level: 'may', trust: [SYSTEM_TRUST], pins: [] };

/** What one connection showed of its TLS (before any message was sent). */
export interface TlsFacts {
  /** The EHLO reply offered STARTTLS. */
  offered: boolean;
  /** The handshake completed. */
  secured: boolean;
  /** The hop's reply when it refused the STARTTLS command. */
  refused: string | null;
  /** Why the handshake failed. */
  error: string | null;
  protocol: string | null;
  cipher: string | null;
  /** The chain leads to the trust anchors the connection was given. */
  trusted: boolean;
  /** Why not (OpenSSL's reason, e.g. DEPTH_ZERO_SELF_SIGNED_CERT, CERT_HAS_EXPIRED). */
  trustError: string | null;
  /** The certificate does not name the host we connected to (null: it does, or nothing to check). */
  nameError: string | null;
  /** The leaf certificate's own pins: `pin-sha256:` (its public key) and `cert-sha256:` (the whole certificate). */
  pins: string[];
  subject: string | null;
  issuer: string | null;
  /** Epoch ms. */
  notAfter: number | null;
}

/** No TLS at all: STARTTLS not offered. */
export const NOT_OFFERED: TlsFacts = {
  offered: false,
  secured: false,
  refused: null,
  error: null,
  protocol: null,
  cipher: null,
  trusted: false,
  trustError: null,
  nameError: null,
  pins: [],
  subject: null,
  issuer: null,
  notAfter: null,
};

const LEVEL_RANK: Record<TlsLevel, number> = { may: 0, encrypt: 1, verify: 2 };

/**
 * A pin as PRIMARY_TLS_PIN takes it, normalised, or null when it is not one:
 * - `pin-sha256:<base64>`: SHA-256 of the certificate's SubjectPublicKeyInfo, base64 (RFC 7469's
 *   pin-sha256, DANE's TLSA 3 1 1 in base64). It survives renewals that keep the key;
 * - `cert-sha256:<hex>`: SHA-256 of the whole certificate (DER), as `openssl x509 -fingerprint
 *   -sha256` prints it (colons optional, any case); Postfix's smtp_tls_fingerprint_cert_match.
 */
export function parsePin(text: string): string | null {
  const trimmed = text.trim();
  const spki = /^pin-sha256:([A-Za-z0-9+/]{43}=)$/i.exec(trimmed);
  if (spki) return `pin-sha256:${spki[1]}`;
  const cert = /^cert-sha256:((?:[0-9a-f]{2}:?){31}[0-9a-f]{2})$/i.exec(trimmed);
  if (cert) return `cert-sha256:${(cert[1] ?? '').replace(/:/g, '').toLowerCase()}`;
  return null;
}

/** The TLS settings of the configuration, global and per domain. */
export interface TlsSettings {
  PRIMARY_TLS?: TlsLevel | undefined;
  PRIMARY_TLS_CA?: string | undefined;
  PRIMARY_TLS_PIN?: string[] | undefined;
}
export type TlsConfig = TlsSettings & { RELAY_DOMAINS: string[]; domains: Record<string, TlsSettings> };

/** What mail to `domain` requires: its own settings, else the global ones; a domain we do not back up: opportunistic. */
export function domainRequirement(config: TlsConfig, domain: string): TlsRequirement {
  const own = config.domains[domain];
  if (!own && !config.RELAY_DOMAINS.includes(domain)) return OPPORTUNISTIC;
  const ca = own?.PRIMARY_TLS_CA ?? config.PRIMARY_TLS_CA;
  return {
    level: own?.PRIMARY_TLS ?? config.PRIMARY_TLS ?? 'may',
    trust: ca ? [ca] : [SYSTEM_TRUST],
    pins: (own?.PRIMARY_TLS_PIN ?? config.PRIMARY_TLS_PIN ?? []).map((pin) => parsePin(pin) ?? pin),
  };
}

/**
 * One requirement that satisfies all of them (recipients of several domains in one transaction, a
 * target several domains share, MTA-STS on top of PRIMARY_TLS): the strictest level, the trust
 * anchors of those that verify (of all, when none does: what the logs and the probe check
 * against), every pin. The requirements concern one host, whose one certificate either carries a
 * listed pin or not.
 */
export function strictest(requirements: readonly TlsRequirement[]): TlsRequirement {
  let level: TlsLevel = 'may';
  for (const requirement of requirements) if (LEVEL_RANK[requirement.level] > LEVEL_RANK[level]) level = requirement.level;
  const verifying = requirements.filter((requirement) => requirement.level === 'verify');
  const trust = [...new Set((verifying.length ? verifying : requirements).flatMap((requirement) => requirement.trust))];
  const pins = [...new Set(requirements.flatMap((requirement) => requirement.pins))];
  return { level, trust: trust.length ? trust : [SYSTEM_TRUST], pins };
}

/** The domain of an address (after the last @), lower case. */
const domainOf = (address: string): string => address.slice(address.lastIndexOf('@') + 1).toLowerCase();

/** What a transaction to these recipients requires. */
export function recipientsRequirement(config: TlsConfig, recipients: readonly string[]): TlsRequirement {
  return strictest([...new Set(recipients.map(domainOf))].map((domain) => domainRequirement(config, domain)));
}

/** The requirement asks more than opportunistic STARTTLS. */
export const tlsRequired = (requirement: TlsRequirement): boolean => requirement.level !== 'may' || requirement.pins.length > 0;

/** The certificate is authenticated: a completed handshake, a trusted chain, the host's name. */
export const verified = (facts: TlsFacts): boolean => facts.secured && facts.trusted && facts.nameError === null;

/**
 * Whether a connection with these facts may carry mail under `requirement`: null when it may, else
 * the deferral to record (`host` names the hop in it). With pins and `encrypt`, a self-signed
 * certificate whose key is pinned passes (Postfix's "fingerprint" level); with `verify` the chain
 * and the name are checked as well.
 */
export function tlsRefusal(requirement: TlsRequirement, facts: TlsFacts, host: string): string | null {
  if (!tlsRequired(requirement)) return null;
  if (!facts.offered) return `4.7.4 TLS is required, but was not offered by host ${host}`;
  if (facts.refused !== null) return `4.7.4 TLS is required, but host ${host} refused to start TLS: ${facts.refused}`;
  if (!facts.secured) return `4.7.5 Cannot start TLS with host ${host}: handshake failure${facts.error ? ` (${facts.error})` : ''}`;
  if (requirement.level === 'verify') {
    if (!facts.trusted) return `4.7.5 Server certificate not trusted: host ${host} (${facts.trustError ?? 'no trusted chain'})`;
    if (facts.nameError !== null) return `4.7.5 Server certificate not verified: host ${host} (${facts.nameError})`;
  }
  if (requirement.pins.length > 0 && !facts.pins.some((pin) => requirement.pins.includes(pin))) {
    return `4.7.5 Server certificate not verified: host ${host} presents none of the pinned keys (it has ${facts.pins.join(', ') || 'no certificate'})`;
  }
  return null;
}

/** What an operator sees of a probed primary's TLS (health /status, the admin API's primaries). */
export interface TlsStatus {
  offered: boolean;
  /** Handshake done, certificate chains to the target's trust anchors and names the target. */
  verified: boolean;
  /** The leaf matches one of the target's pins; null when none are configured. */
  pinned: boolean | null;
  protocol: string | null;
  /** Why it is not verified (or not encrypted), in words. */
  problem: string | null;
  certificate: { subject: string | null; issuer: string | null; notAfter: number | null; pins: string[] } | null;
}

export function tlsStatus(facts: TlsFacts, requirement: TlsRequirement, host: string): TlsStatus {
  const strict = facts.offered ? tlsRefusal({ ...requirement, level: 'verify' }, facts, host) : `STARTTLS not offered by host ${host}`;
  return {
    offered: facts.offered,
    verified: verified(facts),
    pinned: requirement.pins.length ? facts.pins.some((pin) => requirement.pins.includes(pin)) : null,
    protocol: facts.protocol,
    problem: strict === null ? null : strict.replace(/^4\.7\.\d /, ''),
    certificate: facts.secured ? { subject: facts.subject, issuer: facts.issuer, notAfter: facts.notAfter, pins: facts.pins } : null,
  };
}
