import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Files of a certificate made at test time (no keys are checked in), and its PEM texts. */
export interface Certificate {
  cert: string;
  key: string;
  certPem: string;
  keyPem: string;
}

const openssl = (args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function read(cert: string, key: string): Certificate {
  return { cert, key, certPem: readFileSync(cert, 'utf8'), keyPem: readFileSync(key, 'utf8') };
}

/** `subjectAltName` entries: IP addresses as `IP:`, names as `DNS:`. */
const altNames = (names: readonly string[]) => names.map((name) => (/^[\d.]+$|:/.test(name) ? `IP:${name}` : `DNS:${name}`)).join(',');

/** A self-signed certificate for `names` (the first is the CN), made with openssl. */
export function selfSigned(dir: string, file: string, names: readonly string[]): Certificate {
  const cert = join(dir, `${file}.crt`);
  const key = join(dir, `${file}.key`);
  openssl(['req', '-x509', ...EC_KEY, '-days', '2', '-subj', `/CN=${names[0]}`, '-addext', `subjectAltName=${altNames(names)}`, '-keyout', key, '-out', cert]);
  return read(cert, key);
}

/** A certificate authority (self-signed, CA:TRUE) made with openssl. */
export function makeCa(dir: string, file = 'ca', cn = 'backupmx test CA'): Certificate {
  const cert = join(dir, `${file}.crt`);
  const key = join(dir, `${file}.key`);
  openssl(['req', '-x509', ...EC_KEY, '-days', '2', '-subj', `/CN=${cn}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-keyout', key, '-out', cert]);
  return read(cert, key);
}

/** A server certificate for `names` signed by `ca`. */
export function issue(ca: Certificate, dir: string, file: string, names: readonly string[]): Certificate {
  const cert = join(dir, `${file}.crt`);
  const key = join(dir, `${file}.key`);
  const csr = join(dir, `${file}.csr`);
  const ext = join(dir, `${file}.ext`);
  writeFileSync(ext, `subjectAltName=${altNames(names)}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
  openssl(['req', '-new', ...EC_KEY, '-subj', `/CN=${names[0]}`, '-keyout', key, '-out', csr]);
  openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', cert]);
  return read(cert, key);
}

/**
 * The pins of a certificate as an operator gets them with openssl: `pin-sha256:` (base64 SHA-256
 * of the public key, as RFC 7469 shows how) and `cert-sha256:` (`openssl x509 -fingerprint -sha256`).
 */
export function opensslPins(certificate: Certificate): { spki: string; cert: string } {
  const publicKey = openssl(['x509', '-in', certificate.cert, '-pubkey', '-noout']);
  const der = execFileSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: publicKey });
  const digest = execFileSync('openssl', ['dgst', '-sha256', '-binary'], { input: der });
  const fingerprint = openssl(['x509', '-in', certificate.cert, '-noout', '-fingerprint', '-sha256']).toString().trim();
  return { spki: `pin-sha256:${digest.toString('base64')}`, cert: `cert-sha256:${fingerprint.slice(fingerprint.indexOf('=') + 1)}` };
}
