// The signed-in session (docs/frontend.md): the access token, kept in this module's memory
// only; its refresh shortly before it expires and once more on a 401; sign-in and sign-out;
// and the coordination that keeps tabs from logging each other out.
//
// The API rotates refresh tokens and takes a spent one presented again for theft: it revokes
// the whole family (RFC 9700 §4.14.2). With the token in a cookie every tab of the site shares
// it, so two tabs refreshing at once would present the same token twice and sign the user
// out everywhere. Hence:
// - every request that presents or replaces the refresh cookie runs under one Web Lock
//   (W3C Web Locks API), across all tabs of the origin;
// - a tab that refreshed tells the others (BroadcastChannel); a tab that waited for the lock
//   finds the new access token already there and does not refresh at all.
import { useSyncExternalStore } from "react";

import { API_ORIGIN, REFRESH_TRANSPORT } from "./config";
import { NetworkError, SignedOutError, message, problemOf } from "./problem";
import type { LoginRequest, RefreshRequest } from "./schemas";

export type User = { id: string; email: string; created_at: string };

export type SessionState =
  | { status: "loading" }
  | { status: "signed-out"; notice?: string }
  | { status: "signed-in"; user: User };

type Access = { token: string; expiresAt: number; lifetime: number };
type TokenPair = {
  access_token: string;
  expires_in: number;
  refresh_token?: string;
};
type Message =
  | { type: "token"; token: string; remaining: number; lifetime: number; user: User }
  | { type: "signed-out" };

const COOKIE = REFRESH_TRANSPORT === "cookie";
const ENDED = "Your session has ended. Please sign in again.";
const LOADING: SessionState = { status: "loading" };

let state: SessionState = LOADING;
let access: Access | null = null;
/** Memory transport only; with cookie transport the page never sees the refresh token. */
let refreshToken: string | undefined;
let timer: ReturnType<typeof setTimeout> | undefined;
let inflight: Promise<boolean> | null = null;
let channel: BroadcastChannel | null = null;
const listeners = new Set<() => void>();

function set(next: SessionState) {
  state = next;
  for (const l of listeners) l();
}

/** The session, for React components. */
export function useSession(): SessionState {
  return useSyncExternalStore(
    (l) => {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    () => state,
    () => LOADING,
  );
}

/** fetch against the API; a request that gets no readable answer is a NetworkError. */
export async function apiFetch(path: string, init: RequestInit = {}): Promise<Response> {
  try {
    return await fetch(API_ORIGIN + path, { ...init, mode: "cors", cache: "no-store" });
  } catch (e) {
    throw new NetworkError(String(e));
  }
}

/**
 * A POST to /auth/login, /auth/refresh or /auth/logout. With cookie transport it carries the
 * header that makes the API use the cookie (which only a page the gateway's CORS policy allows
 * can send: the CSRF defence) and the browser's credentials, so the cookie goes and comes back.
 */
function authRequest(body: object): RequestInit {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (COOKIE) headers["refresh-token-transport"] = "cookie";
  return {
    method: "POST",
    headers,
    credentials: COOKIE ? "include" : "omit",
    body: JSON.stringify(body),
  };
}

/** The body of /auth/refresh and /auth/logout (RefreshRequest): `{}` with the cookie. */
const refreshBody = (): RefreshRequest => (COOKIE ? {} : { refresh_token: refreshToken });

/** Runs `fn` while no other tab of this site presents or replaces the refresh cookie. */
function exclusive<T>(fn: () => Promise<T>): Promise<T> {
  const locks = typeof navigator === "undefined" ? undefined : navigator.locks;
  return COOKIE && locks ? (locks.request("gatehouse-refresh", fn) as Promise<T>) : fn();
}

/** Refresh this long before expiry: a minute, or a quarter of a short lifetime. */
const margin = (a: Access) => Math.min(60_000, a.lifetime / 4);
const fresh = (a: Access): boolean => Date.now() < a.expiresAt - margin(a);

function adopt(token: string, remaining: number, lifetime: number, user: User) {
  // The expiry is counted on this machine's clock from expires_in, never from the token's
  // `exp`: a client clock that is off does not matter.
  access = { token, expiresAt: Date.now() + remaining, lifetime };
  clearTimeout(timer);
  timer = setTimeout(() => {
    refresh(token).catch(() => {
      // Unreachable for now: try again in a while; a request in between refreshes itself.
      timer = setTimeout(() => void refresh(token).catch(() => {}), 15_000);
    });
  }, Math.max(0, access.expiresAt - margin(access) - Date.now()));
  if (state.status !== "signed-in" || state.user.id !== user.id) {
    set({ status: "signed-in", user });
  }
}

function announce(user: User) {
  if (COOKIE && access) {
    channel?.postMessage({
      type: "token",
      token: access.token,
      remaining: access.expiresAt - Date.now(),
      lifetime: access.lifetime,
      user,
    } satisfies Message);
  }
}

function end(notice?: string) {
  clearTimeout(timer);
  access = null;
  refreshToken = undefined;
  set({ status: "signed-out", notice });
}

async function me(token: string): Promise<User> {
  const res = await apiFetch("/api/me", { headers: { authorization: `Bearer ${token}` } });
  if (!res.ok) throw await problemOf(res);
  return res.json();
}

/** A token pair answer: keeps the refresh token (memory transport), finds out who signed in. */
async function take(res: Response, known?: User): Promise<{ pair: TokenPair; user: User }> {
  const pair: TokenPair = await res.json();
  const user = known ?? (await me(pair.access_token));
  if (!COOKIE) refreshToken = pair.refresh_token;
  return { pair, user };
}

/**
 * A new access token, unless `stale` has already been replaced. Resolves true when there is a
 * usable token, false when the session is over (the API refused the refresh token); throws
 * NetworkError or ApiError when the API could not say.
 */
export function refresh(stale: string | null): Promise<boolean> {
  inflight ??= exclusive(async (): Promise<boolean> => {
    // Another tab may have refreshed while this one waited for the lock, and said so.
    if (access && fresh(access) && access.token !== stale) return true;
    if (!COOKIE && !refreshToken) {
      end();
      return false;
    }
    const res = await apiFetch("/auth/refresh", authRequest(refreshBody()));
    if (res.status === 401) {
      end(state.status === "signed-in" ? ENDED : undefined);
      return false;
    }
    if (!res.ok) throw await problemOf(res);
    const { pair, user } = await take(res, state.status === "signed-in" ? state.user : undefined);
    adopt(pair.access_token, pair.expires_in * 1000, pair.expires_in * 1000, user);
    announce(user);
    return true;
  }).finally(() => {
    inflight = null;
  });
  return inflight;
}

/** `credentials` as the sign-in form validated them (lib/schemas.ts LoginRequest). */
export async function signIn(credentials: LoginRequest): Promise<void> {
  await exclusive(async () => {
    const res = await apiFetch("/auth/login", authRequest(credentials));
    if (!res.ok) throw await problemOf(res);
    const { pair, user } = await take(res);
    adopt(pair.access_token, pair.expires_in * 1000, pair.expires_in * 1000, user);
    announce(user);
  });
}

/** Revokes the sign-in at the API, then here and in every other tab. */
export async function signOut(): Promise<void> {
  await exclusive(async () => {
    const res = await apiFetch("/auth/logout", authRequest(refreshBody()));
    if (!res.ok) throw await problemOf(res);
  });
  end();
  channel?.postMessage({ type: "signed-out" } satisfies Message);
}

/**
 * fetch with the access token. A token about to expire is refreshed first (timers of hidden
 * tabs run late); a 401 (expired, or a rotated signing key: RFC 6750 §3.1 invalid_token) gets
 * one refresh and one retry, which is safe: the request was refused before anything happened.
 */
export async function authorized(path: string, init: RequestInit = {}): Promise<Response> {
  if (access && !fresh(access)) await refresh(access.token);
  if (!access) throw new SignedOutError();
  const send = (token: string) =>
    apiFetch(path, { ...init, headers: { ...(init.headers as Record<string, string>), authorization: `Bearer ${token}` } });
  const used = access.token;
  let res = await send(used);
  if (res.status !== 401) return res;
  if (!(await refresh(used)) || !access) throw new SignedOutError();
  res = await send(access.token);
  if (res.status === 401) {
    end(ENDED);
    throw new SignedOutError();
  }
  return res;
}

let started = false;

/** Once per page load: listen to the other tabs and pick up the session (cookie transport). */
export function start(): void {
  if (started || typeof window === "undefined") return;
  started = true;
  if (typeof BroadcastChannel !== "undefined") {
    channel = new BroadcastChannel("gatehouse-session");
    channel.onmessage = (ev: MessageEvent<Message>) => {
      const m = ev.data;
      if (m?.type === "token" && COOKIE) {
        adopt(m.token, m.remaining, m.lifetime, m.user);
      } else if (m?.type === "signed-out" && state.status === "signed-in") {
        // Memory transport: this tab's own sign-in is revoked too, best effort.
        if (!COOKIE && refreshToken) void apiFetch("/auth/logout", authRequest({ refresh_token: refreshToken })).catch(() => {});
        end("You signed out in another tab.");
      }
    };
  }
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && access && !fresh(access)) {
      void refresh(access.token).catch(() => {});
    }
  });
  refresh(null).catch((e) => end(message(e)));
}

/** The e-mail address just registered, to fill in the sign-in form (memory only). */
export let registeredEmail: string | undefined;
export function rememberRegistration(email: string): void {
  registeredEmail = email;
}
