import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

/** A self-signed certificate made now with openssl (no keys are checked in). */
export function makeCertificate(dir: string, name: string, cn: string): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${cn}`, '-addext', `subjectAltName=DNS:${cn}`, '-keyout', key, '-out', cert], { stdio: 'ignore' });
  return { cert, key };
}
