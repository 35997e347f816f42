import Link from "next/link";
import { useRouter } from "next/router";
import { type FormEvent, useEffect, useState } from "react";

import { Alert, Field, Page, focusFirst, splitErrors } from "../components/ui";
import { schemas } from "../lib/api";
import { ApiError } from "../lib/problem";
import type { FieldErrors } from "../lib/schemas";
import { registeredEmail, signIn, useSession } from "../lib/session";

const FIELDS = ["email", "password"];

export default function Login() {
  const session = useSession();
  const router = useRouter();
  const [email, setEmail] = useState(registeredEmail ?? "");
  const [password, setPassword] = useState("");
  const [errors, setErrors] = useState<FieldErrors>({});
  const [alert, setAlert] = useState<unknown>();
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (session.status === "signed-in") void router.replace("/");
  }, [session.status, router]);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setAlert(undefined);
    const { validate, LoginRequest } = await schemas();
    const v = validate(LoginRequest, { email, password });
    if (!v.ok) {
      setErrors(v.errors);
      focusFirst(v.errors, FIELDS);
      return;
    }
    setErrors({});
    setBusy(true);
    try {
      await signIn(v.value);
    } catch (err) {
      const split = err instanceof ApiError ? splitErrors(err.errors, FIELDS) : { fields: {}, rest: [] };
      setErrors(split.fields);
      setAlert(Object.keys(split.fields).length ? split.rest.join(" ") || undefined : err);
      focusFirst(split.fields, FIELDS);
      setPassword("");
    } finally {
      setBusy(false);
    }
  }

  const notice = session.status === "signed-out" ? session.notice : undefined;
  return (
    <Page title="Sign in">
      <section className="card narrow" aria-labelledby="title">
        <h1 id="title">Sign in</h1>
        {registeredEmail && !alert && (
          <p className="notice" role="status">
            Account created. Sign in with your new password.
          </p>
        )}
        {notice && !alert && <p className="notice">{notice}</p>}
        <Alert error={alert} />
        <form onSubmit={submit} noValidate>
          <Field id="email" label="E-mail address" type="email" autoComplete="username" value={email} onChange={setEmail} error={errors.email} />
          <Field id="password" label="Password" type="password" autoComplete="current-password" value={password} onChange={setPassword} error={errors.password} />
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Signing in…" : "Sign in"}
          </button>
        </form>
        <p className="aside">
          New here? <Link href="/register">Create an account</Link>
        </p>
      </section>
    </Page>
  );
}
