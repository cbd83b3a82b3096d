/**
 * Channel patterns as surge understands them (NATS subjects): tokens
 * separated by dots; `*` as a whole token matches exactly one token; `>`
 * as the whole last token matches one or more tokens.
 */

/** Why `pattern` is not a valid channel, or `null` when it is. */
export function patternError(pattern: string): string | null {
  if (typeof pattern !== "string" || pattern.length === 0) return "a channel must be a non-empty string";
  if (new TextEncoder().encode(pattern).length > 256) return "a channel is at most 256 bytes";
  if (/\s/.test(pattern)) return "a channel has no whitespace";
  const tokens = pattern.split(".");
  if (tokens.length > 16) return "a channel has at most 16 tokens";
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i] as string;
    if (t.length === 0) return `empty token at position ${i + 1} (no leading, trailing or doubled dots)`;
    if (t !== "*" && t !== ">" && (t.includes("*") || t.includes(">"))) {
      return `wildcard inside the token ${JSON.stringify(t)}: '*' and '>' must be whole tokens`;
    }
    if (t === ">" && i !== tokens.length - 1) return "'>' may only be the last token";
  }
  return null;
}

/** Whether `subject` (a literal subject) matches `pattern`. */
export function matches(pattern: string, subject: string): boolean {
  if (pattern === subject) return true;
  const p = pattern.split(".");
  const s = subject.split(".");
  for (let i = 0; i < p.length; i++) {
    const t = p[i];
    if (t === ">") return s.length > i;
    if (i >= s.length) return false;
    if (t !== "*" && t !== s[i]) return false;
  }
  return p.length === s.length;
}
