// What went wrong with a request, in the API's words (RFC 9457 problem+json) and in the
// user's: `ApiError` carries the problem, `message` says it to a person.

export type FieldError = { field: string; message: string };

/** An answer of the API that is not a success, parsed from its problem+json body. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    readonly detail: string | undefined,
    readonly errors: FieldError[],
    /** Seconds, from Retry-After (429, 503). */
    readonly retryAfter: number | undefined,
    readonly requestId: string | undefined,
  ) {
    super(`${status} ${type}`);
  }
}

/** The request never got an answer the page may read: offline, DNS, TLS, or CORS refused. */
export class NetworkError extends Error {}

/** The session ended (refresh refused): the user has to sign in again. */
export class SignedOutError extends Error {}

/** Retry-After as seconds: delta-seconds or an HTTP-date (RFC 9110 §10.2.3). */
function retryAfter(res: Response): number | undefined {
  const v = res.headers.get("retry-after");
  if (!v) return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v.trim());
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(1, Math.ceil((at - Date.now()) / 1000));
}

/** The problem a failed response describes; a body that is not problem+json still gives one. */
export async function problemOf(res: Response): Promise<ApiError> {
  let body: { type?: unknown; detail?: unknown; errors?: unknown; request_id?: unknown } = {};
  if ((res.headers.get("content-type") ?? "").includes("json")) {
    body = await res.json().catch(() => ({}));
  }
  const errors = Array.isArray(body.errors)
    ? body.errors.filter(
        (e): e is FieldError => typeof e?.field === "string" && typeof e?.message === "string",
      )
    : [];
  return new ApiError(
    res.status,
    typeof body.type === "string" ? body.type : `http_${res.status}`,
    typeof body.detail === "string" ? body.detail : undefined,
    errors,
    retryAfter(res),
    typeof body.request_id === "string" ? body.request_id : (res.headers.get("x-request-id") ?? undefined),
  );
}

/** Failures that pass by themselves: wait and try again. */
export const transient = (e: unknown): boolean =>
  e instanceof NetworkError || (e instanceof ApiError && (e.status === 429 || e.status === 503));

const seconds = (n: number) => (n === 1 ? "1 second" : `${n} seconds`);

/** What to tell the user about a failure not tied to one field. */
export function message(e: unknown): string {
  if (e instanceof NetworkError) {
    return "Cannot reach the service. Check your connection and try again.";
  }
  if (e instanceof SignedOutError) return "Your session has ended. Please sign in again.";
  if (!(e instanceof ApiError)) return "Something went wrong in this page. Reload and try again.";
  switch (e.status) {
    case 429:
      return e.retryAfter
        ? `Too many attempts. Try again in ${seconds(e.retryAfter)}.`
        : "Too many attempts. Wait a moment and try again.";
    case 503:
      return e.retryAfter
        ? `The service is busy right now. Try again in ${seconds(e.retryAfter)}.`
        : "The service is busy right now. Try again in a moment.";
    case 401:
      if (e.type === "invalid_credentials") return "The e-mail address or password is incorrect.";
      return "Your session has ended. Please sign in again.";
    case 404:
      return "That task no longer exists.";
    case 409:
      return "This e-mail address is already registered.";
    case 413:
      return "That is too much text to send at once.";
    default:
      if (e.status >= 500) {
        return `Something went wrong on our side. Try again later${e.requestId ? ` (reference ${e.requestId})` : ""}.`;
      }
      return e.detail ?? "The request was refused.";
  }
}

/** "must not be empty" → "Must not be empty." */
export const sentence = (s: string): string =>
  s.charAt(0).toUpperCase() + s.slice(1) + (/[.!?]$/.test(s) ? "" : ".");
