// One Zod schema per request body, the rules of core-api/openapi.json (and of the API's own
// parsers, core-api/src/domain.rs) exactly, with the API's own messages. Forms validate with
// them before sending; lib/api.ts parses every body with them again before it leaves.
// zod/mini: the tree-shakable build, a few KiB instead of twenty on the first page.
import * as z from "zod/mini";

/** Lengths are counted in Unicode code points, as JSON Schema and the API count them. */
export const chars = (s: string): number => [...s].length;

// Unicode White_Space, what Rust's str::trim removes (JS's \s differs: it has U+FEFF and
// lacks U+0085).
const WS = "\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const TRIM = new RegExp(`^[${WS}]+|[${WS}]+$`, "gu");
export const trim = (s: string): string => s.replace(TRIM, "");

/** Unicode Cc: C0, DEL and C1 (Rust's char::is_control). */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/u;
/** Cc other than tab, line feed and carriage return. */
const CONTROL_BUT_BREAKS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/u;

const rule = <T>(ok: (v: T) => boolean, message: string) => z.refine<T>(ok, { error: message });

export const TITLE_MAX = 200;
export const DESCRIPTION_MAX = 4000;
export const PASSWORD_MIN = 8;
export const PASSWORD_MAX = 256;

const title = z.string().check(
  rule((s: string) => chars(s) <= TITLE_MAX, "must be at most 200 characters"),
  rule((s: string) => trim(s) !== "", "must not be empty"),
  rule((s: string) => !CONTROL.test(s), "must not contain control characters"),
);

const description = z.nullable(
  z.string().check(
    rule((s: string) => chars(s) <= DESCRIPTION_MAX, "must be at most 4000 characters"),
    rule(
      (s: string) => !CONTROL_BUT_BREAKS.test(s),
      "must not contain control characters other than tab and line breaks",
    ),
  ),
);

// RFC 3339 §5.6 date-time with an offset; the API (the `time` crate) takes T or t and Z or z.
const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-](\d{2}):(\d{2}))$/;

/**
 * Whether `s` is a real RFC 3339 date-time (a 31 February or an hour 24 is not). Leap seconds
 * (:60) are left out: the form never writes one.
 */
export function isRfc3339(s: string): boolean {
  const m = RFC3339.exec(s);
  if (!m) return false;
  const [y, mo, d, h, mi, sec, oh, om] = m.slice(1).map((v) => Number(v ?? 0)) as number[] as [
    number, number, number, number, number, number, number, number,
  ];
  const leap = y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1] ?? 0;
  return d >= 1 && d <= days && h <= 23 && mi <= 59 && sec <= 59 && oh <= 23 && om <= 59;
}

const dueAt = z.nullable(
  z.string().check(
    rule(isRfc3339, "must be an RFC 3339 date-time like 2026-01-31T17:00:00Z"),
    rule((s: string) => {
      const y = Number(s.slice(0, 4));
      return !isRfc3339(s) || (y >= 1 && y <= 9998);
    }, "must be a date-time in the years 0001 to 9998"),
  ),
);

/** POST /api/users/{user_id}/tasks */
export const TaskCreate = z.strictObject({
  title,
  description: z.optional(description),
  due_at: z.optional(dueAt),
});
export type TaskCreate = z.infer<typeof TaskCreate>;

/** PATCH /api/users/{user_id}/tasks/{task_id}: the fields that change, at least one. */
export const TaskUpdate = z
  .strictObject({
    title: z.optional(title),
    description: z.optional(description),
    completed: z.optional(z.boolean()),
    due_at: z.optional(dueAt),
  })
  .check(rule((o: object) => Object.keys(o).length > 0, "must change at least one field"));
export type TaskUpdate = z.infer<typeof TaskUpdate>;

const utf8Bytes = (s: string): number => new TextEncoder().encode(s).length;

/**
 * The API checks addresses with the email_address crate (no display name, no domain literal)
 * and wants a dot in the domain. This is that shape: one @, a local part of at most 64
 * characters, domain labels of letters, digits and hyphens. The API has the last word: its
 * answer is shown next to the field if the two ever disagree.
 */
export function looksLikeEmail(s: string): boolean {
  const at = s.lastIndexOf("@");
  if (at < 1) return false;
  const local = s.slice(0, at);
  const domain = s.slice(at + 1);
  const atom = /^[^\s@".,:;<>()[\]\\]+$/u;
  const label = /^[\p{L}\p{N}](?:[\p{L}\p{N}-]{0,61}[\p{L}\p{N}])?$/u;
  return (
    chars(local) <= 64 &&
    local.split(".").every((a) => atom.test(a)) &&
    domain.includes(".") &&
    domain.split(".").every((l) => label.test(l))
  );
}

const email = z.string().check(
  rule((s: string) => trim(s) !== "", "must not be empty"),
  rule((s: string) => utf8Bytes(trim(s)) <= 254, "must be at most 254 characters"),
  rule(
    (s: string) => trim(s) === "" || looksLikeEmail(trim(s)),
    "must be an e-mail address like name@example.com",
  ),
);

const password = z.string().check(
  rule((s: string) => chars(s) >= PASSWORD_MIN, "must be at least 8 characters"),
  rule((s: string) => chars(s) <= PASSWORD_MAX, "must be at most 256 characters"),
);

/** POST /auth/register */
export const RegisterRequest = z.strictObject({ email, password });
export type RegisterRequest = z.infer<typeof RegisterRequest>;

/**
 * POST /auth/login. The API takes any strings (a wrong address is just a failed sign-in);
 * empty ones are not worth a request.
 */
export const LoginRequest = z.strictObject({
  email: z.string().check(rule((s: string) => trim(s) !== "", "must not be empty")),
  password: z.string().check(rule((s: string) => s !== "", "must not be empty")),
});
export type LoginRequest = z.infer<typeof LoginRequest>;

/** POST /auth/refresh and /auth/logout: the token, or `{}` with cookie transport. */
export const RefreshRequest = z.strictObject({ refresh_token: z.optional(z.string()) });
export type RefreshRequest = z.infer<typeof RefreshRequest>;

/** Field → first message, the shape forms show. */
export type FieldErrors = Partial<Record<string, string>>;

/** Validates `value` with `schema`: the parsed value, or the first message of each field. */
export function validate<T>(
  schema: z.ZodMiniType<T>,
  value: unknown,
): { ok: true; value: T } | { ok: false; errors: FieldErrors } {
  const r = schema.safeParse(value);
  if (r.success) return { ok: true, value: r.data };
  const errors: FieldErrors = {};
  for (const issue of r.error.issues) {
    const field = issue.path.length > 0 ? issue.path.join(".") : "body";
    errors[field] ??= issue.message;
  }
  return { ok: false, errors };
}
