import { createPrivateKey, X509Certificate } from 'node:crypto';
import type { Buffer } from 'node:buffer';

/** What is wrong with a certificate and key for a TLS server: the setting to blame and why. */
export interface TlsPairProblem {
  key: 'TLS_CERT' | 'TLS_KEY';
  message: string;
}

const firstLine = (error: unknown) => ((error as Error).message ?? String(error)).split('\n')[0];

/**
 * Check that `cert` is a PEM certificate and `key` a PEM private key that belongs to it, or say
 * which is wrong. `tls.createSecureContext` is no check: under Deno it accepts a mismatched pair
 * and text that is not PEM; X509Certificate.checkPrivateKey answers on Node and Deno alike.
 */
export function tlsPairProblem(cert: Buffer, key: Buffer): TlsPairProblem | null {
  if (!/-----BEGIN CERTIFICATE-----/.test(cert.toString('latin1'))) return { key: 'TLS_CERT', message: 'holds no PEM certificate' };
  let certificate: X509Certificate;
  try {
    certificate = new X509Certificate(cert);
  } catch (error) {
    return { key: 'TLS_CERT', message: `the certificate does not parse (${firstLine(error)})` };
  }
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key.toString('latin1'))) return { key: 'TLS_KEY', message: 'holds no PEM private key' };
  let privateKey: ReturnType<typeof createPrivateKey>;
  try {
    privateKey = createPrivateKey(key);
  } catch (error) {
    return { key: 'TLS_KEY', message: `the private key does not parse (${firstLine(error)})` };
  }
  let matches = false;
  try {
    matches = certificate.checkPrivateKey(privateKey);
  } catch {
    matches = false;
  }
  return matches ? null : { key: 'TLS_KEY', message: 'does not belong to the certificate in TLS_CERT' };
}
