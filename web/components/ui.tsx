// The pieces every screen is made of: the page frame, labelled fields with their errors, alerts.
import Head from "next/head";
import Link from "next/link";
import { useRouter } from "next/router";
import { type ReactNode, useState } from "react";

import { message, sentence, transient } from "../lib/problem";
import type { FieldErrors } from "../lib/schemas";
import { signOut, useSession } from "../lib/session";

export function Page({ title, children }: { title: string; children: ReactNode }) {
  const session = useSession();
  const router = useRouter();
  const [error, setError] = useState<unknown>();
  const out = async () => {
    setError(undefined);
    try {
      await signOut();
      await router.replace("/login");
    } catch (e) {
      setError(`Could not sign out. ${message(e)}`);
    }
  };
  return (
    <>
      <Head>
        <title>{`${title} · Gatehouse Tasks`}</title>
      </Head>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="top">
        <div className="bar">
          <Link href="/" className="brand">
            Gatehouse Tasks
          </Link>
          {session.status === "signed-in" && (
            <div className="who">
              <span className="email" data-testid="user-email">
                <span className="sr-only">Signed in as </span>
                {session.user.email}
              </span>
              <button type="button" className="quiet" onClick={out}>
                Sign out
              </button>
            </div>
          )}
        </div>
        {error !== undefined && (
          <div className="bar">
            <Alert error={error} />
          </div>
        )}
      </header>
      <main id="main" tabIndex={-1}>
        {children}
      </main>
    </>
  );
}

type FieldProps = {
  id: string;
  label: string;
  error?: string;
  hint?: string;
  value: string;
  onChange: (v: string) => void;
  type?: string;
  multiline?: boolean;
  autoComplete?: string;
  min?: string;
  max?: string;
};

/** A label, the control, an optional hint and the error, wired for screen readers. */
export function Field({ id, label, error, hint, value, onChange, type = "text", multiline, ...rest }: FieldProps) {
  const described = [hint && `${id}-hint`, error && `${id}-error`].filter(Boolean).join(" ") || undefined;
  const common = {
    id,
    name: id,
    value,
    "aria-invalid": error ? true : undefined,
    "aria-describedby": described,
    ...rest,
  };
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      {hint && (
        <p id={`${id}-hint`} className="hint">
          {hint}
        </p>
      )}
      {multiline ? (
        <textarea {...common} rows={2} onChange={(e) => onChange(e.target.value)} />
      ) : (
        <input {...common} type={type} onChange={(e) => onChange(e.target.value)} />
      )}
      {error && (
        <p id={`${id}-error`} className="error">
          {sentence(error)}
        </p>
      )}
    </div>
  );
}

/**
 * What went wrong, outside any field: a message, or an error said in the user's words. The
 * live region is always there, so a new message is announced. "Wait and retry" (429, 503, no
 * connection) is shown as a warning, not as an error.
 */
export function Alert({ error }: { error?: unknown }) {
  const text = typeof error === "string" ? error : error === undefined ? "" : message(error);
  return (
    <div role="alert" aria-live="assertive">
      {text ? <p className={transient(error) ? "alert warn" : "alert"}>{text}</p> : null}
    </div>
  );
}

/** Moves focus to the first field with an error, in form order. */
export function focusFirst(errors: FieldErrors, order: string[], prefix = ""): void {
  const first = order.find((f) => errors[f]);
  if (first) document.getElementById(prefix + first)?.focus();
}

/**
 * The API's field errors (422 `errors`, 409 email_taken) keyed by the form's field names;
 * what no field of the form shows goes to `rest`.
 */
export function splitErrors(
  fieldErrors: { field: string; message: string }[],
  fields: string[],
): { fields: FieldErrors; rest: string[] } {
  const out: FieldErrors = {};
  const rest: string[] = [];
  for (const e of fieldErrors) {
    if (fields.includes(e.field)) out[e.field] ??= e.message;
    else rest.push(`${e.field}: ${e.message}`);
  }
  return { fields: out, rest };
}
