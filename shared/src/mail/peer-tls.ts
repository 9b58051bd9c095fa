/**
 * The TLS facts of a connection to a next hop (for rules/next-hop-tls.ts), and the trust anchors it
 * is checked against. Shared by the deliverer's SMTP client and the health probe, so both judge a
 * certificate the same way.
 */
import { Buffer } from 'node:buffer';
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import tls, { type PeerCertificate, type TLSSocket } from 'node:tls';
import { NOT_OFFERED, SYSTEM_TRUST, type TlsFacts } from '../rules/next-hop-tls.ts';

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/** The PEM certificates in a text (a CA file may hold several, and comments between them). */
export const pemCertificates = (text: string): string[] => text.match(PEM_CERTIFICATE) ?? [];

const files = new Map<string, { mtimeMs: number; size: number; pems: string[] }>();

/** A CA file's certificates, read again when it changes; when it cannot be read, what it held last (none if never read). */
function caFile(path: string): string[] {
  try {
    const { mtimeMs, size } = statSync(path);
    const known = files.get(path);
    if (known && known.mtimeMs === mtimeMs && known.size === size) return known.pems;
    const pems = pemCertificates(readFileSync(path, 'utf8'));
    files.set(path, { mtimeMs, size, pems });
    return pems;
  } catch {
    return files.get(path)?.pems ?? [];
  }
}

/** The CAs the runtime trusts by default (Node.js: its bundled Mozilla list plus NODE_EXTRA_CA_CERTS). */
function defaultCas(): string[] {
  const list = (tls as { getCACertificates?: (type: string) => string[] }).getCACertificates;
  return typeof list === 'function' ? list('default') : [...tls.rootCertificates];
}

/**
 * The `ca` option for a connection that checks against `trust` (SYSTEM_TRUST and/or CA files), or
 * undefined for the runtime's own default. `system` stands in for the system's CAs (tests).
 */
export function trustAnchors(trust: readonly string[], system?: readonly string[]): string[] | undefined {
  if (trust.every((source) => source === SYSTEM_TRUST) && system === undefined) return undefined;
  return trust.flatMap((source) => (source === SYSTEM_TRUST ? (system ?? defaultCas()) : caFile(source)));
}

/**
 * `pin-sha256:` (SHA-256 of the DER SubjectPublicKeyInfo; PeerCertificate.pubkey is only the key
 * itself for EC keys) and `cert-sha256:` (of the whole DER certificate), as PRIMARY_TLS_PIN takes them.
 */
export function certificatePins(raw: Uint8Array): string[] {
  const der = Buffer.from(raw);
  const spki = new X509Certificate(der).publicKey.export({ type: 'spki', format: 'der' });
  return [`pin-sha256:${createHash('sha256').update(spki).digest('base64')}`, `cert-sha256:${createHash('sha256').update(der).digest('hex')}`];
}

/** Node's own name check is off (the chain alone decides `authorized`); securedFacts checks the name it was given. */
export const chainOnly = { checkServerIdentity: (): undefined => undefined };

const distinguishedName = (name: PeerCertificate['subject'] | undefined): string | null => {
  if (!name || typeof name !== 'object') return null;
  const parts = Object.entries(name).map(([key, value]) => `${key}=${Array.isArray(value) ? value.join('+') : String(value)}`);
  return parts.length ? parts.join(', ') : null;
};

/**
 * What a completed handshake showed: `authorized` is Node's verdict on the chain against the `ca`
 * the connection was given; the name is checked here (RFC 6125, as Node's own check), against
 * `name`: the host we were told to reach (configured, or the MX host name), not the address.
 */
export function securedFacts(socket: TLSSocket, name: string): TlsFacts {
  const certificate = socket.getPeerCertificate(false) as PeerCertificate | Record<string, never>;
  // Node gives a Buffer, Deno a Uint8Array.
  const present = 'raw' in certificate && certificate.raw instanceof Uint8Array && certificate.raw.length > 0;
  const cipher = socket.getCipher?.();
  const identity = present ? tls.checkServerIdentity(name, certificate as PeerCertificate) : new Error('no certificate');
  const notAfter = present ? Date.parse((certificate as PeerCertificate).valid_to) : Number.NaN;
  return {
    offered: true,
    secured: true,
    refused: null,
    error: null,
    protocol: socket.getProtocol?.() ?? null,
    cipher: cipher?.name ?? null,
    trusted: socket.authorized === true,
    trustError: socket.authorized ? null : String(socket.authorizationError ?? 'not authorized'),
    nameError: identity ? identity.message : null,
    pins: present ? certificatePins((certificate as PeerCertificate).raw) : [],
    subject: present ? distinguishedName((certificate as PeerCertificate).subject) : null,
    issuer: present ? distinguishedName((certificate as PeerCertificate).issuer) : null,
    notAfter: Number.isFinite(notAfter) ? notAfter : null,
  };
}

/** STARTTLS offered, but the command was refused (`reply`) or the handshake failed (`error`). */
export function unsecuredFacts(failure: { refused: string } | { error: string }): TlsFacts {
  return { ...NOT_OFFERED, offered: true, refused: 'refused' in failure ? failure.refused : null, error: 'error' in failure ? failure.error : null };
}
