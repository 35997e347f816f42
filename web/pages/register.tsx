import Link from "next/link";
import { useRouter } from "next/router";
import { type FormEvent, useState } from "react";

import { Alert, Field, Page, focusFirst, splitErrors } from "../components/ui";
import { register, schemas } from "../lib/api";
import { ApiError } from "../lib/problem";
import type { FieldErrors } from "../lib/schemas";
import { rememberRegistration } from "../lib/session";

const FIELDS = ["email", "password"];

export default function Register() {
  const router = useRouter();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [errors, setErrors] = useState<FieldErrors>({});
  const [alert, setAlert] = useState<unknown>();
  const [busy, setBusy] = useState(false);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setAlert(undefined);
    const { validate, RegisterRequest, trim } = await schemas();
    const v = validate(RegisterRequest, { email, password });
    if (!v.ok) {
      setErrors(v.errors);
      focusFirst(v.errors, FIELDS);
      return;
    }
    setErrors({});
    setBusy(true);
    try {
      await register(v.value);
      rememberRegistration(v.value.email.trim().toLowerCase());
      await router.push("/login");
    } catch (err) {
      let fields: FieldErrors = {};
      let rest: string[] = [];
      if (err instanceof ApiError && err.type === "email_taken") {
        fields = { email: "is already registered; sign in instead" };
      } else if (err instanceof ApiError) {
        ({ fields, rest } = splitErrors(err.errors, FIELDS));
      }
      setErrors(fields);
      setAlert(Object.keys(fields).length ? rest.join(" ") || undefined : err);
      focusFirst(fields, FIELDS);
    } finally {
      setBusy(false);
    }
  }

  return (
    <Page title="Create an account">
      <section className="card narrow" aria-labelledby="title">
        <h1 id="title">Create an account</h1>
        <Alert error={alert} />
        <form onSubmit={submit} noValidate>
          <Field id="email" label="E-mail address" type="email" autoComplete="username" value={email} onChange={setEmail} error={errors.email} />
          <Field
            id="password"
            label="Password"
            type="password"
            autoComplete="new-password"
            hint="8 to 256 characters. A few unrelated words make a good one."
            value={password}
            onChange={setPassword}
            error={errors.password}
          />
          <button type="submit" className="primary" disabled={busy}>
            {busy ? "Creating…" : "Create account"}
          </button>
        </form>
        <p className="aside">
          Already registered? <Link href="/login">Sign in</Link>
        </p>
      </section>
    </Page>
  );
}
