/**
 * CSRF: every form the console renders carries the session's token (`_csrf`); a state-changing
 * request must present exactly it. The sign-in form, before any session, pairs a cookie with the
 * field (double submit). Pure: tokens are made by the session module.
 */

/** Constant-time equality of two tokens (no early exit on the first difference). */
export function sameToken(given: unknown, expected: string | undefined): boolean {
  if (typeof given !== 'string' || expected === undefined || expected === '' || given.length !== expected.length) return false;
  let difference = 0;
  for (let index = 0; index < expected.length; index += 1) difference |= given.charCodeAt(index) ^ expected.charCodeAt(index);
  return difference === 0;
}
