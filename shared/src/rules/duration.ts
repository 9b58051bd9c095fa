const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/**
 * Parse a duration like `500ms`, `10s`, `5m`, `1h`, `5d` (Postfix style: a bare number means seconds).
 * Returns milliseconds, or null when the text is not a duration.
 */
export function parseDuration(text: string): number | null {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$/i.exec(text);
  if (!match) return null;
  const unit = UNITS[(match[2] ?? 's').toLowerCase()];
  return unit === undefined ? null : Math.round(Number(match[1]) * unit);
}
